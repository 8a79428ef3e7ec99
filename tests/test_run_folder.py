"""A run folder holds one run (issue 13): the config fingerprint on resume, one writer per folder,
damaged checkpoints, one file mode. Real run.py processes on the toy problem (no data, seconds)."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TOY = ["model=toy", "estimator=st", "train.steps=1000", "train.checkpoint_every=200"]
# a few seconds of training: two processes started at once overlap
LONG = ["model=toy", "estimator=st", "train.steps=8000", "train.log_every=200",
        "train.eval_every=2000", "train.checkpoint_every=1000"]


def cmd(*args):
    return [sys.executable, str(ROOT / "run.py"), *args]


def run(*args, timeout=300, **kw):
    return subprocess.run(cmd(*args), env=ENV, capture_output=True, text=True, timeout=timeout, **kw)


def start(*args, **kw):
    return subprocess.Popen(cmd(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def rows(path: Path) -> list[tuple]:
    """metrics.csv rows without the wall clock (wall_time, steps_per_s, training_s)."""
    with open(path, newline="") as fh:
        return [(r["step"], r["epoch"], r["split"], r["metric"], r["value"])
                for r in csv.DictReader(fh) if r["metric"] not in ("steps_per_s", "training_s")]


def last_step(path: Path) -> int:
    try:
        return max((int(r[0]) for r in rows(path)), default=-1)
    except (OSError, KeyError, ValueError):
        return -1


def no_duplicates(folder: Path) -> list[tuple]:
    r = rows(folder / "metrics.csv")
    keys = [(step, split, metric) for step, _, split, metric, _ in r]
    assert len(keys) == len(set(keys)), "duplicated rows in metrics.csv"
    return r


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the folder but the ones every command touches (run.log, the lock)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("run.log", ".lock")}


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def wait_for_step(proc, folder: Path, step: int, timeout=120):
    t0 = time.time()
    while last_step(folder / "metrics.csv") < step:
        assert proc.poll() is None, "the run ended too early"
        assert time.time() - t0 < timeout
        time.sleep(0.02)


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run(*LONG, f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# --- the config fingerprint -------------------------------------------------------------------
@pytest.mark.parametrize("first", ["st", "reinforce"])
def test_a_different_config_is_refused_and_the_folder_is_left_as_it_was(tmp_path, first):
    out = tmp_path / "run"
    r = run("model=toy", f"estimator={first}", "train.steps=1000", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    before = snapshot(out)
    r = run("model=toy", "train.steps=2000", "estimator=gumbel", "train.lr=0.5", f"hydra.run.dir={out}")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    err = r.stderr
    assert err.startswith("discograd: invalid configuration: the run folder")
    assert f'estimator.name: "{first}" -> "gumbel"' in err and "train.lr: 0.01 -> 0.5" in err
    assert "train.steps" not in err.split("Keys that may change")[0]   # resumable: not a difference
    assert "hydra.run.dir=" in err and "train.resume=never" in err       # the two ways out
    assert snapshot(out) == before        # .hydra/overrides.yaml, metrics.csv, summary.json, ...
    assert "train.steps=2000" not in (out / ".hydra" / "overrides.yaml").read_text()


def test_more_steps_extend_a_completed_run_and_say_so(tmp_path):
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert run(*TOY, f"hydra.run.dir={out}").returncode == 0
    first = summary(out)
    r = run(*TOY, "train.steps=2000", "train.log_every=50", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "extending the completed run of 1000 steps to train.steps=2000" in r.stdout
    assert len(first["config_fingerprint"]) == 64 and "train" in first["fingerprinted_config"]
    s = summary(out)
    assert s["status"] == "completed" and s["step"] == 2000
    assert s["config_fingerprint"] == first["config_fingerprint"]
    assert "train.steps=2000" in (out / ".hydra" / "overrides.yaml").read_text()
    r = run(*TOY, "train.steps=2000", "train.log_every=50", f"hydra.run.dir={straight}")
    assert r.returncode == 0
    # the same training as one run of 2000 steps: the rows logged after step 1000 are equal
    got = [x for x in no_duplicates(out) if int(x[0]) > 1000]
    assert got == [x for x in rows(straight / "metrics.csv") if int(x[0]) > 1000]


def test_a_checkpoint_without_a_fingerprint_is_compared_through_its_config(tmp_path):
    import torch
    out = tmp_path / "run"
    assert run(*TOY, f"hydra.run.dir={out}").returncode == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    for key in ("config_fingerprint", "fingerprinted_config", "device"):   # as main wrote them
        del ck[key]
    torch.save(ck, out / "checkpoint.pt")
    s = summary(out)
    del s["config_fingerprint"], s["fingerprinted_config"]
    (out / "summary.json").write_text(json.dumps(s))
    r = run(*TOY, "train.lr=0.02", "train.steps=1200", f"hydra.run.dir={out}")
    assert r.returncode == 2 and "train.lr: 0.01 -> 0.02" in r.stderr, r.stderr[-3000:]
    r = run(*TOY, "train.steps=1200", f"hydra.run.dir={out}")
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]


# --- one writer per folder --------------------------------------------------------------------
def test_two_processes_started_at_once_into_one_folder_one_trains(tmp_path, long_reference):
    out = tmp_path / "run"
    procs = [start(*LONG, f"hydra.run.dir={out}") for _ in range(2)]
    res = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in res)
    assert codes in ([0, 75], [0, 0]), [e[-2000:] for _, _, e in res]
    if codes == [0, 75]:
        (winner,) = [p for p, _, _ in res if p.returncode == 0]
        (err,) = [e for p, _, e in res if p.returncode == 75]
        assert f"in use by pid {winner.pid} on host {socket.gethostname()}" in err
        assert err.startswith("discograd: run folder in use:") and "train.wait=true" in err
    else:          # the second came after the first had finished: a completed run, nothing to do
        assert sum("nothing to do" in o for _, o, _ in res) == 1
    assert no_duplicates(out) == rows(long_reference / "metrics.csv")


def test_a_second_process_is_refused_or_waits_while_the_first_trains(tmp_path):
    out = tmp_path / "run"
    holder = start(*LONG, f"hydra.run.dir={out}")
    wait_for_step(holder, out, 400)
    holder.send_signal(signal.SIGSTOP)        # frozen mid-run, holding the folder
    try:
        info = json.loads((out / ".lock.json").read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        r = run(*LONG, f"hydra.run.dir={out}")
        assert r.returncode == 75, r.stdout[-2000:] + r.stderr[-2000:]
        assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in r.stderr
        assert "Traceback" not in r.stderr and "train.wait=true" in r.stderr
        waiter = start(*LONG, "train.wait=true", f"hydra.run.dir={out}")
        seen: list[str] = []          # the waiter's console, read as it comes
        reader = threading.Thread(target=lambda: seen.extend(iter(waiter.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        t0 = time.time()
        while not any("waiting for it to end" in ln for ln in seen):
            assert waiter.poll() is None and time.time() - t0 < 120
            time.sleep(0.05)
        # the holder's run.log is the holder's: nothing of the waiter's while it waits
        assert "waiting for it to end" not in (out / "run.log").read_text()
    finally:
        holder.send_signal(signal.SIGCONT)
    assert holder.wait(timeout=300) == 0
    waiter.wait(timeout=300)
    reader.join(timeout=60)                  # it read the console to its end
    w_out, w_err = "".join(seen), waiter.stderr.read()
    assert waiter.returncode == 0, w_err[-2000:]
    assert f"in use by pid {holder.pid}" in w_out and "waiting for it to end" in w_out
    assert "nothing to do" in w_out                     # it found the run completed
    assert not (out / ".lock.json").exists()            # removed by the last holder
    no_duplicates(out)


def test_a_lock_left_by_a_killed_process_does_not_block_a_rerun(tmp_path, long_reference):
    out = tmp_path / "run"
    p = start(*LONG, f"hydra.run.dir={out}")
    wait_for_step(p, out, 2000)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    stale = json.loads((out / ".lock.json").read_text())
    assert stale["pid"] == p.pid                        # its record stays, its flock is gone
    r = run(*LONG, f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "in use" not in r.stdout + r.stderr
    assert no_duplicates(out) == rows(long_reference / "metrics.csv")


@pytest.mark.parametrize("wait", [False, True], ids=["refuse", "wait"])
def test_a_requeue_racing_a_rerun_trains_once(tmp_path, long_reference, wait):
    """A preempted job (killed) is requeued while someone reruns it by hand: both start at once
    into its folder; one resumes, the other refuses (or waits, then finds the run completed)."""
    out = tmp_path / "run"
    p = start(*LONG, f"hydra.run.dir={out}")
    wait_for_step(p, out, 1600)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    extra = ["train.wait=true"] if wait else []
    procs = [start(*LONG, *extra, f"hydra.run.dir={out}") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    res = [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]
    codes = sorted(c for c, _, _ in res)
    assert codes in ([0, 0], [0, 75]) and (wait is False or codes == [0, 0]), \
        [e[-2000:] for _, _, e in res]
    assert sum("resumed from" in o for _, o, _ in res) == 1     # exactly one trained
    assert no_duplicates(out) == rows(long_reference / "metrics.csv")   # bit-identical
    assert summary(out)["status"] == "completed"


# --- damaged checkpoints ----------------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(b"\0" * 4096 + data[4096:])


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert run(*TOY, f"hydra.run.dir={out}").returncode == 0
    assert (out / "checkpoint.prev.pt").exists()        # kept when the final one was written
    damage(out / "checkpoint.pt", "truncated")
    r = run(*TOY, "train.steps=1400", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "checkpoint.pt cannot be read" in r.stdout
    assert "resuming from checkpoint.prev.pt at step 800: steps 801..1000 will be recomputed" in r.stdout
    assert (out / "checkpoint.damaged.pt").exists()
    assert run(*TOY, "train.steps=1400", f"hydra.run.dir={straight}").returncode == 0
    assert no_duplicates(out) == rows(straight / "metrics.csv")       # bit-identical


def test_no_readable_checkpoint_is_refused_with_a_clear_message(tmp_path):
    out = tmp_path / "run"
    assert run(*TOY, f"hydra.run.dir={out}").returncode == 0
    damage(out / "checkpoint.pt", "truncated")
    damage(out / "checkpoint.prev.pt", "zeroed")
    before = snapshot(out)
    r = run(*TOY, "train.steps=1400", f"hydra.run.dir={out}")
    assert r.returncode == 2, r.stdout[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("discograd: invalid configuration: cannot resume the run in")
    assert "checkpoint.pt cannot be read" in r.stderr and "checkpoint.prev.pt cannot be read" in r.stderr
    assert "hydra.run.dir=" in r.stderr and "delete its checkpoint" in r.stderr
    assert snapshot(out) == before


def test_a_checkpoint_that_does_not_read_back_is_not_installed(tmp_path, monkeypatch):
    import torch
    from discograd import files
    path = tmp_path / "checkpoint.pt"
    files.save_checkpoint(path, {"step": 1})
    files.save_checkpoint(path, {"step": 2})
    assert torch.load(tmp_path / "checkpoint.prev.pt")["step"] == 1
    monkeypatch.setattr(torch, "save", lambda obj, fh: fh.write(b"PK\x03\x04 not a zip"))
    with pytest.raises(OSError, match="does not read back"):
        files.save_checkpoint(path, {"step": 3})
    assert torch.load(path)["step"] == 2 and torch.load(tmp_path / "checkpoint.prev.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_flipped_bytes_inside_a_checkpoint_are_caught(tmp_path):
    import torch
    from discograd import files
    path = tmp_path / "checkpoint.pt"
    files.save_checkpoint(path, {"step": 5, "w": torch.randn(1000)})
    assert files.read_checkpoint(path)[0]["step"] == 5
    data = bytearray(path.read_bytes())
    i = data.find(b"data/0") + 200
    data[i:i + 50] = b"\xff" * 50
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)             # torch.load alone does not notice
    state, why = files.read_checkpoint(path)
    assert state is None and "CRC" in why
    path.write_bytes(bytes(data[:100]))
    state, why = files.read_checkpoint(path)
    assert state is None and "truncated" in why


# --- one file mode ----------------------------------------------------------------------------
def test_every_file_a_run_writes_has_one_mode(tmp_path):
    out, umask = tmp_path / "run", 0o007      # 0o007: group members may write (a lab's sweep)
    r = run(*TOY, f"hydra.run.dir={out}", preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stderr[-3000:]
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode))
             for p in out.rglob("*") if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    assert {"summary.json", "checkpoint.pt", "checkpoint.prev.pt", "metrics.csv", "run.log",
            ".hydra/config.yaml", ".hydra/overrides.yaml", ".lock"} <= set(modes)


def test_the_data_cache_is_written_with_the_same_mode(tmp_path):
    import numpy as np
    from discograd.data import mnist as data
    old = os.umask(0o027)
    try:
        data._write_cache(tmp_path, {s: (np.zeros((2, 784), np.uint8), np.zeros(2, np.int64))
                                     for s in data.SPLITS})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {data.CACHE_NAME: 0o640, data.CACHE_SUM_NAME: 0o640}
