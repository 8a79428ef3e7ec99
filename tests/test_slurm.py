"""Sweeps on a real SLURM cluster (issue 30): the machine's own, or the one-node cluster that
scripts/local-slurm.sh starts (the ``slurm_cluster`` fixture, tests/conftest.py). Marked ``slurm``:
``python -m pytest -m slurm`` (.ci/run runs them after the suite; the README's test command
leaves them out, since they need root or sudo to start a cluster).

Every job runs the toy problem with one thread (``DISCOGRAD_THREADS=1``, exported to the jobs by
sbatch), so that a job resumed after a requeue can be compared bit for bit with one that was not
interrupted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DISCOGRAD_THREADS": "1", "PYTHONPATH": ""}
LONG_TOY = ["+experiment=quick_toy", "estimator=st", "train.eval_every=1000", "train.log_every=500",
            "train.checkpoint_every=5000", "diagnostics.every=0"]
TIMING = {"steps_per_s", "training_s"}       # what a resumed run cannot reproduce: wall-clock time


def run_py(*args, background=False, timeout=600):
    cmd = [sys.executable, str(ROOT / "run.py"), *map(str, args)]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def wait_for(what, check, limit=300.0):
    t0 = time.time()
    while time.time() - t0 < limit:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {limit:.0f} s for {what}")


def slurm_jobs(sweep: Path) -> list[tuple[str, str]]:
    """(job id, state) of the sweep's jobs still in the queue (their submitit folder names them)."""
    ids = {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.is_dir()}
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.split()[0].split("_")[0] in ids]


def comparable(folder: Path) -> pd.DataFrame:
    """metrics.csv without the wall-clock columns and rows."""
    m = pd.read_csv(folder / "metrics.csv")
    return m[~m.metric.isin(TIMING)].drop(columns=["wall_time"]).reset_index(drop=True)


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm_cpu"])
def test_a_sweep_runs_on_slurm_and_is_reported(slurm_cluster, tmp_path, launcher):
    """Hydra's own submitit_slurm launcher and our slurm_cpu preset (hydra/launcher=slurm, 2 CPUs
    per job): every job completes in its folder, the sweep report covers them, and polling is
    quiet (no sacct warning: the cluster keeps accounting)."""
    sweep = tmp_path / "sweep"
    r = run_py("-m", "+experiment=quick_toy", "estimator=st,reinforce", "train.steps=300",
               f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}")
    print(r.stdout[-2000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sacct" not in r.stdout + r.stderr
    assert {summary(sweep / j)["status"] for j in ("0", "1")} == {"completed"}
    assert {summary(sweep / j)["estimator"]["name"] for j in ("0", "1")} == {"st", "reinforce"}
    assert list((sweep / ".submitit").iterdir())                 # it went through SLURM
    table = pd.read_csv(sweep / "analysis" / "table.csv")
    assert set(table.estimator) == {"st", "reinforce"} and set(table.n) == {1}
    assert "2 runs: 2 completed" in (sweep / "analysis" / "report.md").read_text()


def test_a_requeued_job_resumes_and_equals_an_uninterrupted_run(slurm_cluster, tmp_path):
    """``scontrol requeue`` of a running job: SLURM sends SIGTERM, the run writes its checkpoint at
    the next step and exits; SLURM starts the job again, it resumes from the checkpoint and ends
    with the same metrics.csv, row for row, as the same run without interruption."""
    steps = "train.steps=60000"
    sweep = tmp_path / "sweep"
    proc = run_py("-m", *LONG_TOY, steps, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
                  background=True)
    job = sweep / "0"
    wait_for("the first checkpoint", lambda: (job / "checkpoint.pt").exists())
    (jid, state), = slurm_jobs(sweep)
    assert state == "RUNNING"
    subprocess.run(["scontrol", "requeue", jid], check=True, capture_output=True)
    out, err = proc.communicate(timeout=600)
    print(out[-2000:], err[-3000:])
    assert proc.returncode == 0, err[-3000:]
    log = (job / "run.log").read_text()
    assert "interrupted by SIGTERM" in log and "resumed from" in log, log[-3000:]
    assert summary(job)["status"] == "completed" and summary(job)["step"] == 60000
    plain = tmp_path / "plain"
    r = run_py(*LONG_TOY, steps, f"hydra.run.dir={plain}", "report.run=false")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = comparable(job), comparable(plain)
    assert len(a) == len(b) > 400
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert summary(job)["final"] == summary(plain)["final"]


@pytest.mark.xfail(strict=False, reason=(
    "on this machine's SLURM (Debian 22.05.8-4+deb12u3, local-slurm.sh) the requeued job is "
    "restarted by the backfill scheduler ~30 s after the requeue and receives SIGUSR2 0.4 s after "
    "launch, before submitit installs its handler (slurmd: 'task 0 died by signal: 12'), so it "
    "exits 140 and is not requeued again; it fails the same on the last landed commit (5850330). "
    "Kept running so that a pass shows as XPASS; open issue: make the requeue path robust"))
def test_a_job_at_its_time_limit_is_checkpointed_requeued_and_completes(slurm_cluster, tmp_path):
    """``timeout_min=1`` on a run that needs longer: submitit's timeout signal (SIGUSR2,
    ``signal_delay_s`` before the limit) makes the run write its checkpoint; submitit requeues the
    job (hydra/launcher=slurm allows ``max_num_timeout`` requeues; 10 here, so a slow machine
    still finishes), and the job resumes until it completes."""
    sweep = tmp_path / "sweep"
    r = run_py("-m", *LONG_TOY, "train.steps=200000", "hydra/launcher=slurm",
               "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30",
               "hydra.launcher.max_num_timeout=10", f"hydra.sweep.dir={sweep}", timeout=1200)
    print(r.stdout[-2000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-3000:]
    job = sweep / "0"
    log = (job / "run.log").read_text()
    stops = log.count("interrupted by SIGUSR2")
    assert stops >= 1 and log.count("resumed from") == stops, log[-3000:]
    assert "this job is timed-out" in log                         # submitit's own reading of it
    assert summary(job)["status"] == "completed" and summary(job)["step"] == 200000
    m = comparable(job)
    steps = m[(m.split == "train") & (m.metric == "loss")].step
    assert steps.is_monotonic_increasing and steps.is_unique     # nothing logged twice or lost
    assert list(steps) == list(range(500, 200001, 500))


def test_a_cancelled_job_is_listed_as_interrupted_and_nothing_is_half_written(slurm_cluster, tmp_path):
    """``scancel`` of one job of a sweep: the run catches SIGTERM, writes its checkpoint and
    summary (interrupted, at its step); the other job completes; the sweep still ends with its
    report, which lists the cancelled job as interrupted, and exits 4."""
    sweep = tmp_path / "sweep"
    proc = run_py("-m", *LONG_TOY, "train.steps=2000000,300", "hydra/launcher=slurm",
                  f"hydra.sweep.dir={sweep}", background=True)
    job = sweep / "0"
    wait_for("the first checkpoint", lambda: (job / "checkpoint.pt").exists())
    jid = next(j for j, _ in slurm_jobs(sweep) if j.endswith("_0"))
    subprocess.run(["scancel", jid], check=True, capture_output=True)
    out, err = proc.communicate(timeout=600)
    print(out[-2000:], err[-3000:])
    assert proc.returncode == 4, err[-3000:]
    assert "ended without a result: SLURM state CANCELLED" in out + err
    assert "0: interrupted" in err and "Traceback" not in err
    s = summary(job)
    assert s["status"] == "interrupted" and s["error"]["signal"] == "SIGTERM"
    assert summary(sweep / "1")["status"] == "completed"
    # nothing half-written: no temporary file, the checkpoint loads and is the summary's step,
    # every metrics row is whole and none is after that step
    assert not [p for p in job.rglob("*") if p.name.endswith(".tmp")]
    ckpt = torch.load(job / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == s["step"] > 0
    m = pd.read_csv(job / "metrics.csv")
    assert m.notna().all().all() and m.step.max() <= s["step"]
    report = (sweep / "analysis" / "report.md").read_text()
    assert "2 runs: 1 completed, 1 interrupted" in report
    assert f"| `{job}` | interrupted |" in report
