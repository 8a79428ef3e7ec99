"""The two-phase protocol (issue 28): train with eval.final_samples=0, then ``python -m
analysis.final_bound`` adds the K-sample test bound, exactly as the run would have computed it."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

SMALL = ["model=vae", "model.latent_dim=8", "estimator=st", "train.steps=40", "train.batch_size=20",
         "train.eval_every=10", "train.log_every=10", "eval.samples=3", "diagnostics.every=0",
         "report.run=false", "train.lr=0.01"]


def _train(cfg, folder):
    from discograd.experiment.folder import write_hydra_files
    from discograd.experiment.train import Trainer
    t = Trainer(cfg, folder, hydra_files={"config.yaml": OmegaConf.to_yaml(cfg, resolve=True)})
    try:
        return t.fit()
    finally:
        t.close()


def test_deferred_bound_equals_the_runs_own(tmp_path, cfg_of):
    from discograd.analysis.final_bound import main
    direct = _train(cfg_of(*SMALL, "eval.final_samples=20"), tmp_path / "direct")
    deferred = _train(cfg_of(*SMALL, "eval.final_samples=0"), tmp_path / "deferred")
    assert "test/bound_20" not in deferred["final"]
    assert main([str(tmp_path / "deferred"), "--samples", "20"]) == 0
    after = json.loads((tmp_path / "deferred" / "summary.json").read_text())
    assert after["final"]["test/bound_20"] == direct["final"]["test/bound_20"]
    assert after["best"]["test/bound_20"] == direct["best"]["test/bound_20"]
    assert after["best"]["step"] == direct["best"]["step"]
    rows = (tmp_path / "deferred" / "metrics.csv").read_text().splitlines()
    assert sum(",test,bound_20," in r for r in rows) == 1 and rows[-1].startswith("40,")
    # a rerun has nothing to do and changes nothing
    before = (tmp_path / "deferred" / "summary.json").read_text()
    assert main([str(tmp_path / "deferred"), "--samples", "20"]) == 0
    assert (tmp_path / "deferred" / "summary.json").read_text() == before


def test_selected_runs_are_the_grid_points_the_validation_keeps(tmp_path, cfg_of):
    """Two learning rates of one estimator, the preset grid over train.lr: --selected bounds the
    runs of the point with the better validation bound, and only those."""
    from discograd.analysis.final_bound import main
    from discograd.analysis.runs import read_summary
    for lr in ("0.01", "1e-06"):
        cfg = cfg_of(*[o for o in SMALL if not o.startswith("train.lr")], "eval.final_samples=0",
                     f"train.lr={lr}")
        cfg = OmegaConf.merge(cfg, {"preset": {"name": "t", "grid": {"train": {"lr": [0.01, 1e-6]}}}})
        _train(cfg, tmp_path / f"lr={lr}")
    assert main([str(tmp_path), "--samples", "5", "--selected"]) == 0
    assert "test/bound_5" in read_summary(tmp_path / "lr=0.01")["final"]
    assert "test/bound_5" not in read_summary(tmp_path / "lr=1e-06")["final"]


def test_bad_arguments_are_refused(tmp_path, capsys):
    from discograd.analysis.final_bound import main
    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(tmp_path), "--samples", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
