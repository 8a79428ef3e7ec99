"""End-to-end runs of run.py through Hydra, in subprocesses, on real files (and real MNIST)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METRICS_HEADER = "step,epoch,wall_time,split,metric,value"


def run(*args, cwd, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"run.py {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def read_metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def metric(rows, split, name):
    return [(int(r["step"]), float(r["value"])) for r in rows if r["split"] == split and r["metric"] == name]


def check_run_folder(folder: Path):
    assert (folder / ".hydra" / "config.yaml").exists() and (folder / ".hydra" / "overrides.yaml").exists()
    assert (folder / "metrics.csv").read_text().splitlines()[0] == METRICS_HEADER
    assert (folder / "checkpoint.pt").exists()
    s = summary(folder)
    assert s["status"] == "completed"
    assert {"timings", "estimator", "versions", "final", "model"} <= set(s)
    rows = read_metrics(folder)
    keys = [(r["step"], r["split"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated metric rows"
    return rows, s


@pytest.mark.parametrize("estimator", ["st", "reinforce", "gumbel", "st_gumbel"])
def test_toy_run_writes_the_contract_files_and_learns(tmp_path, estimator):
    out = tmp_path / "run"
    report = estimator == "gumbel"       # one of the four also writes its report (seconds)
    run(f"estimator={estimator}", "model=toy", "model.dim=4", "model.t=0.2", "train.steps=600", "train.lr=0.1",
        "train.batch_size=8", f"report.run={str(report).lower()}", f"hydra.run.dir={out}", cwd=tmp_path)
    rows, s = check_run_folder(out)
    # the common curve: the toy's hard_loss is its exact E[f], logged at log steps
    assert [st for st, _ in metric(rows, "train", "hard_loss")] == list(range(100, 601, 100))
    # diagnostics on by default: the trained estimator and the basic ones, probed every 100 steps
    with open(out / "grad_stats.csv", newline="") as fh:
        g = list(csv.DictReader(fh))
    assert {r["estimator"] for r in g} == {"st", "reinforce", "gumbel", "st_gumbel"}
    assert {r["batch_size"] for r in g} == {"8"}
    assert {r["aux"] for r in g if r["estimator"] == estimator} == {"trained"}
    assert (out / "analysis" / "report.md").exists() == report
    if report:
        text = (out / "analysis" / "report.md").read_text()
        assert "Gradient diagnostics at the last probe" in text and "gumbel: f at relaxed" not in text
        for stem in ("curves_step_toy", "gradients_toy", "bias_variance_toy"):
            assert (out / "analysis" / f"{stem}.png").stat().st_size > 5000
    exact = metric(rows, "test", "exact_loss")
    assert exact[0][0] == 0 and exact[-1][0] == 600
    # every estimator lowers the exact expected loss (0.34 at the start; ST's fixed point s = t
    # gives 0.16, the optimum s = 0 gives 0.04)
    assert exact[-1][1] < exact[0][1] - 0.1, exact
    assert s["final"]["test/exact_loss"] == pytest.approx(exact[-1][1])
    assert {v for _, v in metric(rows, "train", "evals")} == {1.0}
    if estimator in ("gumbel", "st_gumbel"):
        assert metric(rows, "train", "tau")
    assert s["estimator"]["name"] == estimator


def test_two_runs_started_together_get_their_own_folders(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), "model=toy", "estimator=st", "train.steps=5"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    folders = sorted(p.parent for p in (tmp_path / "outputs").rglob("summary.json"))
    assert len(folders) == 2 and folders[0] != folders[1]


def test_multirun_sweep_in_a_subprocess(tmp_path):
    sweep = tmp_path / "sweep"
    run("-m", "estimator=st,reinforce,gumbel", "model=toy", "seed=0,1", "train.steps=50",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(jobs) == 6
    seen = set()
    for job in jobs:
        _, s = check_run_folder(job)
        seen.add((s["estimator"]["name"], s["seed"]))
    assert seen == {(e, k) for e in ("st", "reinforce", "gumbel") for k in (0, 1)}
    # one report for the sweep, written by the Hydra callback when the last job ended; none per job
    report = (sweep / "analysis" / "report.md").read_text()
    assert "6 runs: 6 completed" in report
    assert not any((job / "analysis").exists() for job in jobs)
    # the analysis reader finds the same six runs and joins their config to their metrics
    from discograd.analysis import find_runs, read_run
    assert find_runs(sweep) == jobs
    df, s = read_run(jobs[0])
    assert s["status"] == "completed"
    assert {"step", "split", "metric", "value", "estimator.name", "seed", "model.name"} <= set(df.columns)
    assert (df["model.name"] == "toy").all()


def test_rerun_in_the_same_folder_resumes_without_duplicate_rows(tmp_path):
    out = tmp_path / "run"
    common = ["model=toy", "estimator=reinforce", "estimator.baseline=ema", "train.log_every=10",
              "train.eval_every=20", "train.checkpoint_every=50", f"hydra.run.dir={out}"]
    run(*common, "train.steps=100", cwd=tmp_path)
    r = run(*common, "train.steps=160", cwd=tmp_path)
    assert "resumed" in r.stderr + r.stdout
    rows, s = check_run_folder(out)
    assert s["step"] == 160
    steps = [st for st, _ in metric(rows, "train", "loss")]
    assert steps == list(range(10, 161, 10))


@pytest.mark.slow
def test_vae_on_real_mnist_trains(tmp_path):
    """A few hundred steps of the default VAE on real MNIST: the test ELBO improves."""
    out = tmp_path / "run"
    run("estimator=gumbel", "model=vae", "train.steps=400", "train.eval_every=200",
        "eval.samples=5", "eval.final_samples=20", f"hydra.run.dir={out}", cwd=tmp_path)
    rows, s = check_run_folder(out)
    start = metric(rows, "valid", "elbo")[0]
    assert start[0] == 0
    end = s["final"]["test/elbo"]
    assert end > start[1] + 25, (start, end)   # from about -211 nats (data-mean decoder) to about -173
    assert s["final"]["test/bound_20"] >= end - 1.0   # the 20-sample bound is tighter (up to noise)
    assert {"train", "valid", "test"} <= {r["split"] for r in rows}
    # README command 1's promise: gradient diagnostics (the trained estimator and the basic ones,
    # on the training batch) and a report with figures in the run folder
    with open(out / "grad_stats.csv", newline="") as fh:
        g = list(csv.DictReader(fh))
    assert {r["estimator"] for r in g} == {"gumbel", "st", "reinforce", "st_gumbel"}
    assert {r["batch_size"] for r in g} == {"50"} and {r["step"] for r in g} == {"0"}
    assert "Gradient diagnostics" in (out / "analysis" / "report.md").read_text()
    for stem in ("curves_step_vae", "gradients_vae", "bias_variance_vae"):
        assert (out / "analysis" / f"{stem}.png").exists()
