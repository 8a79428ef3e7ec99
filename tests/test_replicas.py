"""train.replicas=N (experiment/replicas.py): N seeds in one process, each replica's numbers those of
its separate run, its own complete run folder; resume, signals, divergence of one replica, and the
refusals. Real MNIST, real run folders, real run.py processes."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from discograd.errors import ConfigError
from discograd.experiment.replicas import ReplicaGroup, member_folder
from discograd.experiment.train import Trainer

from test_reliability import ENV, cmd, rows, same_run, wait_then

VAE = ["model=vae", "model.latent_dim=16"]
SMALL = ["train.batch_size=20", "train.steps=60",
         "train.log_every=10", "train.eval_every=30", "train.checkpoint_every=30", "eval.samples=4",
         "eval.final_samples=0", "diagnostics.every=0", "report.run=false"]


def train_rows(folder: Path) -> list[tuple[int, str, float]]:
    with open(folder / "metrics.csv", newline="") as fh:
        return [(int(r["step"]), r["metric"], float(r["value"])) for r in csv.DictReader(fh)
                if r["split"] == "train" and r["metric"] in ("loss", "hard_loss")]


def small(*overrides: str) -> list[str]:
    """SMALL plus overrides, on the small VAE unless they choose the model."""
    model = [] if any(o.startswith("model=") for o in overrides) else VAE
    return [*model, *SMALL, *overrides]


def group(cfg_of, out: Path, *overrides: str) -> list[dict]:
    g = ReplicaGroup(cfg_of(*small(*overrides)), out)
    try:
        return g.fit()
    finally:
        g.close()


def separate(cfg_of, out: Path, *overrides: str) -> dict:
    t = Trainer(cfg_of(*small(*overrides)), out)
    try:
        return t.fit()
    finally:
        t.close()


CASES = {
    "gumbel": ["estimator=gumbel"],
    # an EMA baseline: a persistent buffer updated in place inside the vmapped step
    "reinforce_ema": ["estimator=reinforce", "estimator.baseline=ema"],
    "disarm": ["estimator=disarm"],                            # two evaluations of f
    "categorical_rloo": ["model.latent=categorical", "model.latent_dim=4", "estimator=rloo",
                         "estimator.samples=3"],
    "nonlinear_st_diagnostics": ["model.hidden=[32]", "estimator=st", "diagnostics.every=30",
                                 "diagnostics.samples=8", "diagnostics.batch_size=8",
                                 "diagnostics.estimators=[st,disarm]",
                                 "diagnostics.reference=mc:disarm:8"],
    "toy": ["model=toy", "estimator=arm"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_replica_matches_its_separate_run(cfg_of, tmp_path, case):
    """Replica i of a group (seeds 5, 6, 7) against the separate run of seed 5 + i: the training
    curve at every log step, the final metrics, the parameters and the Adam state, to float
    rounding; and the replicas differ from one another (each draws its own streams)."""
    ov = CASES[case]
    summaries = group(cfg_of, tmp_path / "group", *ov, "seed=5", "train.replicas=3")
    assert [s["status"] for s in summaries] == ["completed"] * 3
    curves = {}
    for i, seed in ((0, 5), (2, 7)):          # the first and the last replica
        mine = member_folder(tmp_path / "group", seed)
        alone = separate(cfg_of, tmp_path / f"alone{seed}", *ov, f"seed={seed}")
        a, b = train_rows(mine), train_rows(tmp_path / f"alone{seed}")
        assert [r[:2] for r in a] == [r[:2] for r in b] and len(a) >= 12
        assert torch.allclose(torch.tensor([r[2] for r in a]), torch.tensor([r[2] for r in b]),
                              rtol=1e-4, atol=1e-4), (a, b)
        s = summaries[i]
        assert s["seed"] == seed and s["replica"]["index"] == i and s["replica"]["of"] == 3
        for k, v in alone["final"].items():
            assert s["final"][k] == pytest.approx(v, rel=1e-4, abs=1e-4), k
        ca = torch.load(mine / "checkpoint.pt", weights_only=True)
        cb = torch.load(tmp_path / f"alone{seed}" / "checkpoint.pt", weights_only=True)
        for k, v in cb["model"].items():
            assert ca["model"][k].shape == v.shape and ca["model"][k].is_contiguous()
            torch.testing.assert_close(ca["model"][k], v, rtol=1e-4, atol=1e-5)
        for k, v in cb["optimizer"]["state"].items():
            for name in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(ca["optimizer"]["state"][k][name], v[name],
                                           rtol=1e-3, atol=1e-6)
            assert float(ca["optimizer"]["state"][k]["step"]) == float(v["step"])
        # the checkpoint holds this replica's tensors only, not the group's stacked storage
        assert ca["model"][next(iter(cb["model"]))].untyped_storage().nbytes() == \
            cb["model"][next(iter(cb["model"]))].untyped_storage().nbytes()
        if "diagnostics" in case:
            ga, gb = rows(mine / "grad_stats.csv"), rows(tmp_path / f"alone{seed}" / "grad_stats.csv")
            assert len(ga) == len(gb) > 0
        curves[i] = [r[2] for r in a]
    assert curves[0] != curves[2]
    assert [r[2] for r in train_rows(member_folder(tmp_path / "group", 6))] not in (curves[0], curves[2])


def test_replica_folders_are_ordinary_run_folders(cfg_of, tmp_path):
    """Each member's .hydra/config.yaml is its separate run's (seed, train.replicas=1), so the
    analysis lists N runs and a separate run of that config resumes the folder."""
    out = tmp_path / "group"
    r = subprocess.run(cmd(*small("estimator=st", "seed=3", "train.replicas=2"),
                           f"hydra.run.dir={out}"), env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[seed 4] step 60/60" in r.stderr + r.stdout        # the log tells the replicas apart
    from discograd.analysis.runs import collect
    runs = collect(out).runs
    assert sorted(runs["seed"]) == [3, 4] and set(runs["train.replicas"]) == {1}
    assert set(runs["status"]) == {"completed"}
    assert json.loads((out / "replicas.json").read_text())["seeds"] == [3, 4]
    # a separate run extends replica seed=4 from its checkpoint (same run, train.steps is resumable)
    t = Trainer(cfg_of(*small("estimator=st", "seed=4", "train.steps=80")), member_folder(out, 4))
    try:
        assert t.resume() and t.step == 60
    finally:
        t.close()


class _Poisoned(ReplicaGroup):
    """A group whose replica 1 gets a NaN parameter after step 25 (fault injection)."""

    def step(self, active, live):
        out = super().step(active, live)
        if active[1].step == 25:
            with torch.no_grad():
                next(active[1].model.parameters()).view(-1)[0] = float("nan")
        return out


def test_a_diverged_replica_ends_alone(cfg_of, tmp_path):
    out = tmp_path / "group"
    g = _Poisoned(cfg_of(*small("estimator=gumbel", "seed=0", "train.replicas=3")), out)
    try:
        summaries = g.fit()
    finally:
        g.close()
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    bad = json.loads((member_folder(out, 1) / "summary.json").read_text())
    assert bad["status"] == "diverged" and 25 <= bad["error"]["step"] <= 30
    # the others are untouched: replica 2 is still its separate run
    alone = separate(cfg_of, tmp_path / "alone", "estimator=gumbel", "seed=2")
    for k, v in alone["final"].items():
        assert summaries[2]["final"][k] == pytest.approx(v, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("overrides, needle", [
    (["estimator=rebar"], "estimator 'rebar'"),
    (["estimator=reinforce", "estimator.baseline=learned"], "estimator 'reinforce'"),
    (["model=attention", "model.recurrent=true", "estimator=reinforce"], "model 'attention'"),
    (["train.on_nan=skip"], "train.on_nan=skip"),
    (["train.compile=true"], "train.compile=true"),
    (["train.cuda_graphs=true", "device=cpu"], "train.cuda_graphs=true needs a CUDA device"),
])
def test_what_replicas_cannot_train_is_refused_before_any_work(cfg_of, tmp_path, overrides, needle):
    out = tmp_path / "group"
    with pytest.raises(ConfigError, match="accepted") as e:
        ReplicaGroup(cfg_of(*small(*overrides, "train.replicas=2")), out)
    assert needle in str(e.value)
    assert not any(out.glob("seed=*/metrics.csv"))


def test_replicas_must_be_a_positive_integer(tmp_path):
    r = subprocess.run(cmd("model=toy", "train.replicas=0", f"hydra.run.dir={tmp_path / 'x'}"),
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "train.replicas=0 is invalid" in r.stderr


RUN = [*VAE, *SMALL, "estimator=reinforce", "estimator.baseline=ema", "train.steps=300",
       "train.checkpoint_every=40", "seed=1", "train.replicas=3"]


@pytest.fixture(scope="module")
def reference_group(tmp_path_factory):
    out = tmp_path_factory.mktemp("refgroup") / "group"
    rerun(out)
    return out


def rerun(out: Path) -> str:
    """Run (or resume) the RUN group in ``out`` to the end; its output."""
    r = subprocess.run(cmd(*RUN, f"hydra.run.dir={out}"), env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr + r.stdout


def stop_group(out: Path, sig: int, seed: int, at_step: int) -> int:
    """Start the RUN group in ``out``, send ``sig`` once replica ``seed`` has logged ``at_step``;
    the exit code."""
    p = subprocess.Popen(cmd(*RUN, f"hydra.run.dir={out}"), env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_then(p, member_folder(out, seed), at_step)
    p.send_signal(sig)
    return p.wait(timeout=60)


def test_sigkill_of_a_group_then_rerun_matches_an_uninterrupted_group(reference_group, tmp_path):
    out = tmp_path / "group"
    stop_group(out, signal.SIGKILL, seed=3, at_step=130)
    assert "resumed from" in rerun(out)
    for seed in (1, 2, 3):
        a, b = member_folder(reference_group, seed), member_folder(out, seed)
        sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
        assert sb["final"] == sa["final"] and sb["best"] == sa["best"]      # bit for bit
        assert rows(b / "metrics.csv") == rows(a / "metrics.csv")


def test_sigterm_interrupts_every_replica_then_rerun_finishes(reference_group, tmp_path):
    out = tmp_path / "group"
    assert stop_group(out, signal.SIGTERM, seed=1, at_step=90) == 128 + int(signal.SIGTERM)
    steps = set()
    for seed in (1, 2, 3):
        s = json.loads((member_folder(out, seed) / "summary.json").read_text())
        assert s["status"] == "interrupted" and s["error"]["signal"] == "SIGTERM"
        steps.add(s["step"])
    assert len(steps) == 1                          # the replicas stop together
    rerun(out)
    for seed in (1, 2, 3):
        same_run(member_folder(reference_group, seed), member_folder(out, seed))
