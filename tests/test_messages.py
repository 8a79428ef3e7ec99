"""Messages a user acts on: every command is checked before Hydra makes a folder or starts a job
(discograd/experiment/launch.py); a refusal is one line naming what was typed and what is accepted;
a sweep with an invalid job is refused whole, or runs its valid jobs with ``sweep.invalid=run_valid``;
a job that fails at run time is listed in the sweep's report; exit codes as the README's table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from discograd.errors import EXIT_INVALID, EXIT_SWEEP_INCOMPLETE, ConfigError
from discograd.experiment.launch import check_job, precheck

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DISCOGRAD_SHRINK": "4"}

MESSAGES = [
    # (the command's overrides, what the one line must say)
    (["train.step=100"], ["train.step is not a config key; did you mean train.steps?",
                          "keys of train: steps, batch_size"]),
    (["estimator=gumbell"], ["estimator=gumbell is not an option of estimator; did you mean gumbel?",
                             "accepted: annealed_st, arm"]),
    (["model=quick_va"], ["model=quick_va is not an option of model; accepted: attention, sbn, toy, vae"]),
    (["estimator=reinforce", "estimator.baseline=emma"],
     ["estimator.baseline=emma is invalid; did you mean ema? accepted: none, ema, learned"]),
    (["train.lr=abc"], ["train.lr=abc is invalid: it must be of type float"]),
    (["+train.step=3"], ["+train.step=3 adds a key that discograd does not read; did you mean "
                         "train.steps?"]),
    (["+experiment=jang2016_bernoulli", "estimator=rloo"],
     ["estimator.samples=1 is invalid for rloo",
      "the value estimator.samples=1 comes from +experiment=jang2016_bernoulli"]),
    (["estimator=vimco", "model=toy"], ["estimator 'vimco' estimates the gradient of the S-sample bound",
                                        "model 'toy' minimises E[f]"]),
    (["model=vae", "model.layers=2", "model.kl=analytic"],
     ["model.kl=analytic is invalid with model.layers=2", "accepted: model.kl=sampled"]),
    # the attention model took a batch larger than its training split as the whole split
    (["model=attention", "estimator=reinforce", "train.batch_size=60000"],
     ["train.batch_size=60000 is larger than the training set of data=mnist (50000 examples)"]),
]


@pytest.mark.parametrize("overrides,says", MESSAGES, ids=[" ".join(o) for o, _ in MESSAGES])
def test_a_refusal_names_the_value_and_what_is_accepted(overrides, says, tmp_path, monkeypatch,
                                                        capsys):
    with pytest.raises(ConfigError) as e:
        check_job(overrides, device=False)
    message = str(e.value)
    for part in says:
        assert part in message, message
    assert "Config'" not in message and "object_type" not in message   # no schema class names
    # the command line: one line on stderr, exit code 2, no run folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        precheck(overrides)
    assert exit_.value.code == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.count("discograd: invalid configuration:") == 1 and says[0] in err
    assert not list(tmp_path.iterdir())


def test_a_preset_value_the_command_overrides_is_not_blamed_on_the_preset():
    with pytest.raises(ConfigError) as e:
        check_job(["+experiment=jang2016_bernoulli", "estimator=rloo", "estimator.samples=0"],
                  device=False)
    assert "comes from +experiment" not in str(e.value)


def test_a_plus_key_is_refused_only_where_the_schema_is_fixed():
    """``+preset.published.NAME=...`` adds to a free-form node (a published number): accepted."""
    cfg = check_job(["+experiment=tucker_toy_045", "estimator=st", "+preset.published.st=0.2"],
                    device=False)
    assert cfg.preset.published.st == 0.2
    with pytest.raises(ConfigError, match=r"\+estimator.foo=1 adds a key that discograd does not"):
        check_job(["estimator=st", "+estimator.foo=1"], device=False)


def test_the_defaults_of_the_two_layer_vae_run_as_they_are():
    cfg = check_job(["model=vae", "model.layers=2"], device=False)
    assert str(cfg.model.kl.value) == "sampled" and int(cfg.diagnostics.every) == 0
    cfg = check_job(["model=vae"], device=False)
    assert str(cfg.model.kl.value) == "analytic" and int(cfg.diagnostics.every) > 0


SWEEP = ["-m", "+experiment=quick_toy", "model.latent=categorical", "estimator=st,arm,gumbel"]


def test_a_sweep_with_an_invalid_job_is_refused_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        precheck(SWEEP)
    assert e.value.code == EXIT_INVALID
    err = capsys.readouterr().err
    assert "1 of 3 job(s) of this sweep are invalid; no job was started" in err
    assert "job 1 (estimator=arm): estimator 'arm' cannot train model 'toy' with categorical " \
           "latents" in err
    assert "sweep.invalid=run_valid" in err
    assert not list(tmp_path.iterdir())


def test_a_valid_sweep_passes_the_check(capsys):
    precheck(["-m", "+experiment=quick_toy", "estimator=st,gumbel", "seed=0,1"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_run_valid_runs_the_rest_and_the_report_lists_the_refused_job(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), *SWEEP, "sweep.invalid=run_valid",
                        f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_SWEEP_INCOMPLETE, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "1: refused: estimator 'arm' cannot train model 'toy'" in r.stderr
    status = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")}
    assert status == {"0": "completed", "1": "refused", "2": "completed"}
    report = (sweep / "analysis" / "report.md").read_text()
    assert "refused" in report and "cannot train model 'toy' with categorical latents" in report


def test_a_job_that_fails_at_run_time_is_listed_with_its_reason(tmp_path):
    """The data of job 1 cannot be read (a data.root without MNIST): only found when it loads."""
    sweep, empty = tmp_path / "sweep", tmp_path / "no-mnist-here"
    empty.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "model=vae",
                        "model.latent_dim=8", "estimator=st", f"data.root=null,{empty}",
                        f"hydra.sweep.dir={sweep}"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_SWEEP_INCOMPLETE, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "1: failed:" in r.stderr and str(empty) in r.stderr
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"
    assert "Traceback" in (sweep / "1" / "run.log").read_text()     # the detail is kept
    report = (sweep / "analysis" / "report.md").read_text()
    assert "failed" in report and str(empty) in report


def test_a_sweep_prints_the_config_of_every_job(capsys):
    """``-m ... --cfg``: Hydra alone refuses it; every job composed with its launcher settings."""
    with pytest.raises(SystemExit) as e:
        precheck(["-m", "model=toy", "estimator=st,gumbel", "hydra/launcher=submitit_slurm",
                  "hydra.launcher.partition=gpu", "--cfg", "all"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "# job 0: model=toy estimator=st" in out and "# job 1: model=toy estimator=gumbel" in out
    assert out.count("partition: gpu") == 2 and out.count("name: gumbel") == 1
    with pytest.raises(SystemExit) as e:
        precheck(["-m", "model=toy", "estimator=st,gumbel", "hydra/launcher=submitit_slurm",
                  "hydra.launcher.partitio=gpu", "--cfg", "job"])
    assert e.value.code == EXIT_INVALID
    assert "did you mean hydra.launcher.partition?" in capsys.readouterr().err


# --- failures at run time: one message, its exit code, nothing half-written (issue: disk full,
# read-only cache, data errors, stale temp files) --------------------------------------------
def run_py(*args, cwd, env=None):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env or ENV)


def test_a_full_disk_is_a_message_and_the_rerun_resumes(tmp_path):
    """The run folder on a 300 KiB tmpfs (a private mount namespace: ``unshare -m`` as root,
    ``unshare -rm`` otherwise): the first checkpoint does not fit. One line names the folder,
    says nothing half-written remains and the space a checkpoint takes; exit 74; no temp file is
    left. With room made (remount at 20 MiB) the same command completes."""
    from discograd.errors import EXIT_IO
    mnt = tmp_path / "small"
    mnt.mkdir()
    cmd = [sys.executable, str(ROOT / "run.py"), "model=vae", "train.steps=8", "train.log_every=4",
           "train.eval_every=4", "train.checkpoint_every=4", "diagnostics.every=0", "report.run=false",
           f"hydra.run.dir={mnt}/run"]
    import shlex
    line = shlex.join(cmd)
    script = (f"mount -t tmpfs -o size=300k tmpfs {mnt} || exit 90\n"
              f"{line} > {tmp_path}/out1 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1\n"
              f"ls -a {mnt}/run > {tmp_path}/files1\n"
              f"mount -o remount,size=20m {mnt}\n"
              f"{line} > {tmp_path}/out2 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2\n"
              f"cp {mnt}/run/summary.json {tmp_path}/summary2.json\n")
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    r = subprocess.run([*unshare, "sh", "-c", script], cwd=tmp_path, env=ENV,   # shrunk: 4 steps,
                       capture_output=True, text=True, timeout=600)                # a checkpoint at 2
    assert r.returncode == 0, r.stderr
    err = (tmp_path / "err1").read_text()
    assert int((tmp_path / "rc1").read_text()) == EXIT_IO, err
    assert f"no space left on the device holding {mnt}/run" in err and "rerun the same command" in err
    assert "a checkpoint takes" in err and "Traceback" not in err, err
    assert not [f for f in (tmp_path / "files1").read_text().split() if f.endswith(".tmp")]
    assert int((tmp_path / "rc2").read_text()) == 0, (tmp_path / "err2").read_text()[-2000:]
    assert json.loads((tmp_path / "summary2.json").read_text())["status"] == "completed"


def test_a_data_error_is_a_message_not_a_traceback(tmp_path):
    """Fashion-MNIST asked for from a folder without its files: one line naming the folder and
    the ways out, exit 66 (EX_NOINPUT)."""
    from discograd.errors import EXIT_DATA
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_py("model=vae", "data=fashion_mnist", f"data.root={empty}", "diagnostics.every=0",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == EXIT_DATA, r.stderr[-3000:]
    assert "discograd: the data could not be read:" in r.stderr and str(empty) in r.stderr
    assert "Traceback" not in r.stderr


def test_a_read_only_cache_without_data_names_the_ways_out(tmp_path):
    """data.cache_dir on a folder the run cannot write, holding no cache: the message names the
    folder and DISCOGRAD_DATA / data.cache_dir / data.root, exit 66; a read-only folder that
    holds a valid cache is used as it is."""
    from discograd.errors import EXIT_DATA
    from discograd.data import DataError, fetch_mnist
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):          # root ignores the mode bits: a read-only bind mount
            script = (f"mount --bind -o ro {ro} {ro} || exit 90\n"
                      f"{sys.executable} {ROOT / 'run.py'} model=vae diagnostics.every=0 "
                      f"data.cache_dir={ro} hydra.run.dir={tmp_path / 'run'} 2> {tmp_path}/err; "
                      f"echo $? > {tmp_path}/rc\n")
            r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=ENV,
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr
            rc, err = int((tmp_path / "rc").read_text()), (tmp_path / "err").read_text()
        else:
            r = run_py("model=vae", "diagnostics.every=0", f"data.cache_dir={ro}",
                       f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
            rc, err = r.returncode, r.stderr
    finally:
        ro.chmod(0o755)
    assert rc == EXIT_DATA, err[-3000:]
    assert f"the data cache {ro} is not writable" in err and "Traceback" not in err
    for way in ("DISCOGRAD_DATA", "data.cache_dir", "data.root"):
        assert way in err
    # a valid cache in a folder that cannot be written is read as it is (lock-free fast path)
    fetch_mnist()                                  # the default cache exists (or is made now)
    from discograd.data import default_cache_dir
    assert fetch_mnist(default_cache_dir())["train"][0].shape == (50000, 784)
    assert DataError


def test_stale_temp_files_of_a_killed_writer_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    args = ["model=toy", "train.steps=20", "diagnostics.every=0", "report.run=false",
            f"hydra.run.dir={run}"]
    assert run_py(*args, cwd=tmp_path).returncode == 0
    stale = [run / ".checkpoint.pt.99999999.0badf00d.tmp", run / ".lock.json.99999998.deadbeef.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    r = run_py(*args, cwd=tmp_path)                  # the same command: a completed run
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(p.exists() for p in stale)
    assert "removed 2 temp file(s) a killed writer left" in (run / "run.log").read_text()


@pytest.mark.parametrize("log_every", [100, 1])
def test_the_divergence_step_is_the_first_bad_step(log_every, tmp_path):
    """lr = 1e300 overflows the toy's logit at step 1, but its loss stays finite (the sigmoid
    saturates): the old check reported the next log step (100). Now the steps since the last
    good state are replayed with a check after each, so step 1 is reported whatever log_every."""
    from discograd.errors import EXIT_DIVERGED
    run = tmp_path / "run"
    r = run_py("model=toy", "estimator=reinforce", "train.lr=1e300", "diagnostics.every=0",
               f"train.log_every={log_every}", "report.run=false", f"hydra.run.dir={run}",
               cwd=tmp_path, env={**ENV, "DISCOGRAD_SHRINK": ""})
    assert r.returncode == EXIT_DIVERGED, r.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["error"]["step"] == 1, summary["error"]
    assert "non-finite parameter (after this step's update) at step 1" in summary["error"]["message"]


def test_replay_finds_the_same_step_as_a_check_after_every_step():
    """In process, on the toy: a parameter set to NaN by hand after step 37 (as a bad update
    would) is found at step 37 by a check at step 50 that replays from its last good state,
    the same step a check after every step finds."""
    import tempfile

    import torch
    from discograd.experiment.config import compose_config
    from discograd.experiment.lifecycle import Diverged
    from discograd.experiment.train import Trainer
    cfg = compose_config(["model=toy", "diagnostics.every=0", "report.run=false"])
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(cfg, Path(d))
        adam_step = t.opt.step

        def poisoned_step(*a, **k):      # the update of step 37, on any pass, writes a NaN
            out = adam_step(*a, **k)
            if t.step + 1 == 37:
                with torch.no_grad():
                    t.model.phi.fill_(float("nan"))
            return out
        t.opt.step = poisoned_step
        t._remember()
        for _ in range(50):
            t.account(*t.train_step(t.next_batch()))
        with pytest.raises(Diverged) as e:
            t.check_finite()
        assert e.value.step == 37 and "parameter" in str(e.value)
        t.close()


def test_a_refusal_writes_nothing_into_a_run_folder(tmp_path):
    """A command refused for a folder that holds a run (here train.resume=never) adds nothing to
    that run's run.log or .hydra/ (it used to append its error to the run's log); a command
    refused because another process holds the folder adds nothing to the holder's log."""
    import time
    run = tmp_path / "run"
    args = ["model=toy", "train.steps=20", "diagnostics.every=0", "report.run=false", f"hydra.run.dir={run}"]
    assert run_py(*args, cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in [run / "run.log", *(run / ".hydra").iterdir()]}
    r = run_py(*args, "train.resume=never", cwd=tmp_path)
    assert r.returncode == EXIT_INVALID and "train.resume=never" in r.stderr
    after = {p.name: p.read_bytes() for p in [run / "run.log", *(run / ".hydra").iterdir()]}
    assert after == before
    # a holder running: the refused process leaves its log alone
    held = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "model=toy", "train.steps=100000000",
                               "diagnostics.every=0", "report.run=false", "train.log_every=1000000",
                               f"hydra.run.dir={held}"], cwd=tmp_path, env={**ENV, "DISCOGRAD_SHRINK": ""},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (held / ".lock.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        r = run_py("model=toy", "train.steps=100000000", "diagnostics.every=0", "report.run=false",
                   "train.log_every=1000000", f"hydra.run.dir={held}", cwd=tmp_path,
                   env={**ENV, "DISCOGRAD_SHRINK": ""})
        assert r.returncode == 75 and "run folder in use" in r.stderr
        assert "in use" not in (held / "run.log").read_text()
    finally:
        holder.terminate()
        holder.wait(timeout=60)


def test_a_second_sweep_into_a_busy_folder_says_which_jobs_run_elsewhere(tmp_path):
    """Sweep A holds job 0's folder (frozen there; 20000 steps, so that it cannot finish job 0
    before it is frozen, even on a loaded machine); sweep B into the same hydra.sweep.dir runs
    job 1, says job 0 is in use in one line (no traceback), and exits 75: nothing failed, the
    other sweep is running it (it used to print a FolderInUse traceback per job and exit 1)."""
    import signal
    import time
    from discograd.errors import EXIT_BUSY
    sweep = tmp_path / "sweep"
    args = [sys.executable, str(ROOT / "run.py"), "-m", "model=toy", "seed=0,1", "train.steps=20000",
            "diagnostics.every=0", "report.sweep=false", f"hydra.sweep.dir={sweep}"]
    env = {**ENV, "DISCOGRAD_SHRINK": ""}
    a = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (sweep / "0" / ".lock.json").exists():
            assert time.time() < deadline and a.poll() is None
            time.sleep(0.1)
        a.send_signal(signal.SIGSTOP)
        b = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert b.returncode == EXIT_BUSY, b.stderr[-3000:]
        assert "Traceback" not in b.stderr
        assert b.stderr.count("run folder in use") == 1
        assert "1 job(s) of the sweep" in b.stderr and f"0: pid {a.pid}" in b.stderr
        assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
    finally:
        a.send_signal(signal.SIGCONT)
        a.terminate()
        a.wait(timeout=60)
