"""Defaults compose: every model with every estimator, and every preset, runs from its defaults.

Each pair is checked the way ``python run.py model=M estimator=E`` checks it before any work
(composed, shrunk by ``DISCOGRAD_SHRINK``, validated), then trained for a few steps on real data
through the real Trainer. A pair may only be refused for a reason that is about the pair itself
(the estimator does not support the latent kind, the latents are too many to enumerate, the
objective is not the one the estimator estimates, a multi-evaluation estimator on sequential
latents), never because a default of the config does not fit the model (the two-layer VAE's KL
and diagnostics defaults used to refuse it).
"""
from __future__ import annotations

import math
import re

import pytest

from discograd.errors import ConfigError
from discograd.estimators import REGISTRY

MODELS = {
    "toy": ("model=toy",),
    "toy categorical": ("model=toy", "model.latent=categorical"),
    "vae": ("model=vae",),
    "vae categorical": ("model=vae", "model.latent=categorical"),
    "vae two layers": ("model=vae", "model.layers=2"),
    "sbn": ("model=sbn",),
    "sbn categorical": ("model=sbn", "model.latent=categorical"),
    "attention": ("model=attention", "data=mnist_grey"),
    "attention recurrent": ("model=attention", "data=mnist_grey", "model.recurrent=true"),
}
# the only reasons a pair may be refused (each names the estimator and what it cannot do)
PAIR_REASONS = {
    "kind": r"estimator '\w+' cannot train model '\w+' with \w+ latents: it supports \w+ latents only",
    "enumeration": r"estimator 'exact' cannot enumerate .* configurations is more than the limit",
    "objective": r"estimator 'vimco' estimates the gradient of the S-sample bound",
    "sequential": r"estimator '\w+' cannot train model 'attention' with sequential latents: it "
                  r"evaluates f",
}
STEPS = 4
_DATA: dict = {}


def _check(overrides, monkeypatch):
    from discograd.experiment.launch import check_job
    monkeypatch.setenv("DISCOGRAD_SHRINK", str(STEPS))
    return check_job(list(overrides), device=True)


def _pairs():
    return [pytest.param(m, e, id=f"{m}-{e}") for m in MODELS for e in sorted(REGISTRY)]


EVAL_IMAGES = 1000     # validation and test images: the evaluations' code paths, at a tenth of the cost


def _data(d):
    """Real MNIST as ``build_data`` makes it for data config ``d``, with the first EVAL_IMAGES
    validation and test images (every one of the 50,000 training images)."""
    from discograd.data import MNISTData, load_mnist
    from discograd.experiment.config import plain
    assert d.name in ("mnist", "mnist_grey"), d.name
    splits = load_mnist(d.root, d.cache_dir)
    small = {k: v if k == "train" else (v[0][:EVAL_IMAGES], v[1][:EVAL_IMAGES])
             for k, v in splits.items()}
    return MNISTData(small, plain(d.binarize), "cpu", int(d.seed))


def _train(cfg, out):
    """A few steps of the real Trainer; MNIST is loaded once per data config and shared."""
    from discograd.experiment.train import Trainer
    key = str(cfg.data)
    model_needs_data = cfg.model.name != "toy"
    if model_needs_data and key not in _DATA:
        _DATA[key] = _data(cfg.data)
    t = Trainer(cfg, out, data=_DATA.get(key))
    try:
        return t.fit()
    finally:
        t.close()


@pytest.mark.parametrize("model,estimator", _pairs())
def test_every_model_runs_every_estimator_it_supports_from_its_defaults(model, estimator, tmp_path,
                                                                         monkeypatch):
    overrides = (*MODELS[model], f"estimator={estimator}", "device=cpu")
    try:
        cfg = _check(overrides, monkeypatch)
    except ConfigError as e:
        assert any(re.search(p, str(e)) for p in PAIR_REASONS.values()), \
            f"{overrides} refused for a reason that is not about the pair: {e}"
        return
    summary = _train(cfg, tmp_path / "run")
    assert summary["status"] == "completed", summary.get("error")
    assert summary["step"] == STEPS
    finals = [v for v in summary["final"].values() if isinstance(v, float)]
    assert finals and all(math.isfinite(v) for v in finals), summary["final"]


def test_the_pairs_refused_are_exactly_the_documented_ones(monkeypatch):
    """The refusals as a table, so that a new one (or one that disappears) is seen in review."""
    refused = {}
    for model in MODELS:
        for estimator in sorted(REGISTRY):
            try:
                _check((*MODELS[model], f"estimator={estimator}", "device=cpu"), monkeypatch)
            except ConfigError as e:
                refused[(model, estimator)] = next(
                    (k for k, p in PAIR_REASONS.items() if re.search(p, str(e))), str(e))
    kinds = {(m, e) for m in MODELS for e in REGISTRY
             if ("categorical" in m or m.startswith("attention")) != ("categorical" in REGISTRY[e].kinds)
             and len(REGISTRY[e].kinds) == 1}
    assert {k for k, v in refused.items() if v == "kind"} == kinds
    assert {k for k, v in refused.items() if v == "objective"} == {
        ("toy", "vimco"), ("toy categorical", "vimco"), ("vae", "vimco"),
        ("vae categorical", "vimco"), ("vae two layers", "vimco")}     # vae: model.objective=iwae
    assert {m for (m, e), v in refused.items() if v == "enumeration"} == {
        m for m in MODELS if not m.startswith("toy")}                  # 2^200, 10^20, 49^4
    assert {e for (m, e), v in refused.items() if v == "sequential"} == {
        "rloo", "arsm", "muprop", "rebar", "relax"}                    # arm/disarm/exact: kind first
    assert set(refused.values()) <= set(PAIR_REASONS), refused


def _presets():
    from discograd.experiment.config import CONFIG_DIR
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", _presets())
def test_every_preset_runs_from_its_defaults(preset, tmp_path, monkeypatch):
    cfg = _check((f"+experiment={preset}", "device=cpu"), monkeypatch)
    summary = _train(cfg, tmp_path / "run")
    assert summary["status"] == "completed", summary.get("error")
