"""Reliability: kill and resume, signals, divergence, bad input, completed runs, on real run.py
processes (no mocks)."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# a small VAE on real MNIST whose state has every kind of randomness and state: dynamic
# binarization, data order, a learned baseline (estimator parameters and EMA), diagnostics
RUN = ["model=vae", "model.latent_dim=16", "estimator=reinforce", "estimator.baseline=learned",
       "train.steps=400", "train.batch_size=20", "train.log_every=25", "train.eval_every=100",
       "train.checkpoint_every=50", "eval.samples=4", "eval.final_samples=0",
       "diagnostics.every=100", "diagnostics.samples=10", "diagnostics.batch_size=10",
       "diagnostics.reference=mc:reinforce:10"]


def cmd(*args):
    return [sys.executable, str(ROOT / "run.py"), *args]


CLOCKS = ("steps_per_s", "training_s")     # clock readings: differ between any two runs


def rows(path: Path, drop=("wall_time",)) -> list[tuple]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        out = []
        for r in csv.DictReader(fh):
            if r.get("metric") in CLOCKS or "seconds_per_estimate" in r:
                r.pop("seconds_per_estimate", None)
                if r.get("metric") in CLOCKS:
                    continue
            out.append(tuple((k, v) for k, v in r.items() if k not in drop))
        return out


def last_step(path: Path) -> int:
    r = rows(path)
    return max((int(dict(x)["step"]) for x in r), default=-1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = subprocess.run(cmd(*RUN, f"hydra.run.dir={out}"), env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def wait_then(proc, out: Path, at_step: int, timeout=300):
    t0 = time.time()
    while last_step(out / "metrics.csv") < at_step:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def same_run(a: Path, b: Path):
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sb["status"] == "completed" and sb["step"] == sa["step"]
    assert sb["final"] == sa["final"]                      # bit-for-bit on CPU
    assert sb["best"] == sa["best"] and sb["best"]["step"] is not None   # model selection too
    ra, rb = rows(a / "metrics.csv"), rows(b / "metrics.csv")
    assert len(rb) == len(set(rb)), "duplicated rows"
    assert rb == ra                                        # nothing missing, nothing extra
    assert rows(b / "grad_stats.csv") == rows(a / "grad_stats.csv")


def test_sigkill_at_a_random_step_then_rerun_matches_an_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    at = random.Random(0).randrange(80, 330)
    p = subprocess.Popen(cmd(*RUN, f"hydra.run.dir={out}"), env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_then(p, out, at)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not (out / "summary.json").exists()
    assert (out / "checkpoint.pt").exists()
    r = subprocess.run(cmd(*RUN, f"hydra.run.dir={out}"), env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr + r.stdout
    same_run(reference, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_and_exits_then_resumes(reference, tmp_path, sig):
    out = tmp_path / "run"
    p = subprocess.Popen(cmd(*RUN, f"hydra.run.dir={out}"), env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_then(p, out, 130)
    p.send_signal(sig)
    assert p.wait(timeout=60) == 128 + int(sig)
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["error"]["signal"] == signal.Signals(sig).name
    import torch
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == s["step"] >= 130            # written at the signal, not only periodically
    r = subprocess.run(cmd(*RUN, f"hydra.run.dir={out}"), env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    same_run(reference, out)


def test_a_completed_run_is_not_overwritten(reference):
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    r = subprocess.run(cmd(*RUN, f"hydra.run.dir={reference}"), env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0
    assert "already holds a completed run" in r.stderr + r.stdout
    after = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file() and p.name in before}
    for name in ("metrics.csv", "summary.json", "checkpoint.pt", "grad_stats.csv"):
        assert after[name] == before[name], name


def test_resume_never_refuses_a_used_folder(reference):
    r = subprocess.run(cmd(*RUN, "train.resume=never", "train.steps=500", f"hydra.run.dir={reference}"),
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "train.resume=never" in r.stderr


DIVERGE = ["model=vae", "model.latent_dim=8", "estimator=st", "train.lr=1e36", "train.steps=60",
           "train.log_every=10", "train.eval_every=1000", "eval.samples=2", "eval.final_samples=0"]


def test_divergence_stops_cleanly_with_step_and_quantity(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(cmd(*DIVERGE, f"hydra.run.dir={out}"), env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged"
    assert s["error"]["quantity"] in ("training loss", "gradient") and 1 <= s["error"]["step"] <= 60
    assert rows(out / "metrics.csv")                    # the log is kept
    import torch
    if (out / "checkpoint.pt").exists():                # never a checkpoint of NaN parameters
        ck = torch.load(out / "checkpoint.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_in_a_sweep_the_other_jobs_go_on_and_analysis_lists_the_diverged_run(tmp_path):
    sweep = tmp_path / "sweep"
    r = subprocess.run(cmd("-m", *DIVERGE, "train.lr=1e36,1e-3", f"hydra.sweep.dir={sweep}"),
                       env=ENV, capture_output=True, text=True, timeout=300)
    # every job ran; the sweep exits 4 and lists the diverged job with its reason
    assert r.returncode == 4, r.stderr[-2000:]
    assert "0: diverged: non-finite training loss" in r.stderr and "Traceback" not in r.stderr
    assert (sweep / "analysis" / "report.md").exists()
    from discograd.analysis.runs import collect
    runs = collect(sweep).runs.sort_values("train.lr")
    assert list(runs.status) == ["completed", "diverged"]
    from discograd.analysis.report import make_report
    report = make_report(sweep, tmp_path / "report").read_text()
    assert "diverged" in report


def test_on_nan_skip_skips_and_counts(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(cmd(*DIVERGE, "train.on_nan=skip", "train.steps=30", f"hydra.run.dir={out}"),
                       env=ENV, capture_output=True, text=True, timeout=300)
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped_steps"] > 0
    skipped = [float(dict(x)["value"]) for x in rows(out / "metrics.csv") if dict(x)["metric"] == "skipped_steps"]
    assert skipped and skipped[-1] == s["skipped_steps"]
    assert r.returncode in (0, 3)     # completes, unless the parameters blew up before any skip


BAD = [
    (["train.lr=-0.001"], "train.lr=-0.001"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["train.batch_size=50001"], "train.batch_size=50001"),
    (["estimator.tau.init=0"], "estimator.tau.init=0"),
    (["estimator=reinforce", "estimator.samples=0"], "estimator.samples=0"),
    (["diagnostics.every=10", "diagnostics.samples=1"], "diagnostics.samples=1"),
    (["diagnostics.every=10", "diagnostics.reference=sometimes"], "diagnostics.reference"),
    (["diagnostics.every=10", "diagnostics.estimators=[st,nope]"], "nope"),
    (["estimator=arm", "model.latent=categorical"], "arm"),
    (["estimator=reinmax", "model.latent=categorical", "estimator.tau.init=0.5"], "0.5"),
    (["device=cuda"], "device=cuda"),
]


@pytest.mark.parametrize("args, needle", BAD, ids=[b[1] for b in BAD])
def test_bad_input_fails_before_training_with_a_clear_message(tmp_path, args, needle):
    if args == ["device=cuda"]:
        import torch
        if torch.cuda.is_available():
            args, needle = ["device=tpu"], "tpu"
    out = tmp_path / "run"
    r = subprocess.run(cmd("model=vae", *args, f"hydra.run.dir={out}"), env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr[-2000:]
    assert not (out / "metrics.csv").exists()          # before any work
