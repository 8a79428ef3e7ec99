"""Build a run from its config, once: the device, the model (by registry), the estimator, the
data, and every check that needs the built objects together (README, "Config keys").

:func:`build` is the one place a run's model and estimator are made: seeded by ``seed`` (so the
initial parameters are the seed's) and checked together (the model/estimator pairing, compile and
CUDA-graph support, the probe's plan, replica support) before any data is loaded. The
command line's precheck of every sweep job (:func:`validate`) runs the same checks with the global
random stream left as it was.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from discograd.data import (CANVAS_DATASETS, CanvasData, MNISTData, load_canvas, load_fashion_mnist,
                            load_mnist)
from discograd.diagnostics import AUTO_M, probe_plan
from discograd.errors import ConfigError
from discograd.estimators import Estimator, build_estimator
from discograd.models import LatentModel
from discograd.models import build_model as build_registered
from .config import plain
from .graphs import check_cuda_graphs
from .shrink import SHRINK_DRAWS, shrink_steps
from .validate import check_keys


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but CUDA is not available; accepted here: auto, cpu")
    return torch.device(name)


def build_model(cfg) -> LatentModel:
    """The model of config groups ``model`` and ``data`` (the models' registry,
    discograd/models/registry.py)."""
    return build_registered(cfg.model, cfg.data)


def build_data(d, device: torch.device):
    """The data set of config group ``data`` as an MNISTData on ``device``."""
    if d.name == "fashion_mnist":
        return MNISTData(load_fashion_mnist(d.root, d.cache_dir), plain(d.binarize), device,
                         int(d.seed))
    splits = load_mnist(d.root, d.cache_dir)
    if d.name in CANVAS_DATASETS:
        canvases = load_canvas(splits, int(d.size), int(d.clutter), int(d.fragment),
                               int(d.canvas_seed), d.cache_dir)
        # data.resample: training digits placed afresh per draw (a config saved before the key
        # existed trained on the fixed canvases)
        digits = splits["train"][0] if bool(d.get("resample", False)) else None
        return CanvasData(canvases, digits, size=int(d.size), clutter=int(d.clutter),
                          fragment=int(d.fragment), binarize=plain(d.binarize), device=device,
                          seed=int(d.seed))
    return MNISTData(splits, plain(d.binarize), device, int(d.seed))


def selection_metric(model: LatentModel, cfg) -> str | None:
    """The validation metric that picks the best step (``eval.select``): ``auto`` is the model's
    own choice (VAE: the eval.samples-sample bound; attention: accuracy); None without a
    validation split (the toy) or with ``eval.select=none``."""
    choice = str(cfg.eval.select)
    if choice == "none" or not model.needs_data:
        return None
    if choice == "auto":
        return model.select_metric(int(cfg.eval.samples))
    return choice


def probe_draws() -> int:
    """The reinforce draws whose cost is ``diagnostics.reference=auto``'s budget (fewer in a
    DISCOGRAD_SHRINK smoke test)."""
    return AUTO_M if shrink_steps() is None else min(AUTO_M, SHRINK_DRAWS)


@dataclass
class Parts:
    """What :func:`build` makes: the model and estimator (on the CPU), and the probe's plan
    (the probed estimators and the reference; None with ``diagnostics.every=0``)."""
    model: LatentModel
    estimator: Estimator
    probe: tuple[list[str], object] | None


def build(cfg, device: torch.device | None = None) -> Parts:
    """The run's model and estimator, seeded by ``cfg.seed``, checked together (ConfigError
    names the value and what is accepted). ``device``: the run's (for the CUDA-graph check);
    None in a precheck, which knows no device yet."""
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg)
    estimator = build_estimator(cfg.estimator, model.kind, model.latent_shape)
    probe = check_together(cfg, model, estimator)
    if device is not None:
        check_cuda_graphs(cfg, device, model.sequential, model.name)
    return Parts(model, estimator, probe)


def validate(cfg) -> None:
    """Every check of a run before it starts (the values one by one, then :func:`build`'s), with
    the global random stream left as it was: ConfigError names the first bad value and what is
    accepted. The precheck of each job of a command."""
    check_keys(cfg)
    with torch.random.fork_rng(devices=[]):
        build(cfg)


def check_together(cfg, model: LatentModel, estimator: Estimator):
    """What the model, the estimator and the features asked for can do together; returns the
    probe's plan (or None)."""
    why = model.estimator_support(estimator)
    if why is not None:
        raise ConfigError(f"estimator '{estimator.name}' cannot train model '{model.name}' with "
                          f"sequential latents: {why}")
    if bool(cfg.train.compile) and model.sequential:
        raise ConfigError(f"train.compile=true cannot compile model '{model.name}': its latents are "
                          "sequential (the model drives the rollout step by step); accepted: "
                          "train.compile=false")
    if bool(cfg.train.compile) and estimator.not_compilable:
        raise ConfigError(f"train.compile=true cannot compile estimator '{estimator.name}': "
                          f"{estimator.not_compilable}; accepted: train.compile=false")
    dg, plan = cfg.diagnostics, None
    if int(dg.every) > 0:
        if model.sequential:
            raise ConfigError(
                f"diagnostics.every={dg.every} is not supported for model '{model.name}' with "
                "sequential latents: the probe differentiates estimator(logits, f) with all logits "
                "known in advance, which a model that drives its own rollout does not provide; "
                "accepted: diagnostics.every=0 (or a non-sequential model)")
        plan = probe_plan(dg, estimator.name, model, probe_draws())
    check_replicas(cfg, model, estimator)
    select = str(cfg.eval.select)
    names = model.metric_names(int(cfg.eval.samples))
    if select not in ("auto", "none") and (select not in names or not model.needs_data):
        accepted = "auto, none" + (", " + ", ".join(names) if model.needs_data else "")
        raise ConfigError(f"eval.select={select} is invalid for model '{model.name}'"
                          + ("" if model.needs_data else " (it has no validation split)")
                          + f"; accepted: {accepted}")
    return plan


def check_replicas(cfg, model: LatentModel, estimator: Estimator) -> None:
    """Refuse what a replica group (``train.replicas=N``, experiment/replicas.py) cannot train."""
    n = int(cfg.train.replicas)
    if n == 1:
        return
    key = f"train.replicas={n}"
    if bool(cfg.train.compile):
        raise ConfigError(f"{key} cannot be combined with train.compile=true (the group's step is "
                          "vmapped; torch.compile of it is not supported); accepted: "
                          "train.compile=false, or train.replicas=1")
    if plain(cfg.train.on_nan) == "skip":
        raise ConfigError(f"{key} cannot be combined with train.on_nan=skip: a skipped step is "
                          "decided per run, but the replicas share one optimizer step; accepted: "
                          "train.on_nan=stop, or train.replicas=1")
    if model.sequential:
        raise ConfigError(f"{key} cannot vectorise model '{model.name}': its latents are "
                          "sequential (the model drives its rollout step by step); accepted: "
                          "train.replicas=1, or a model with all latents at once (toy, or vae with "
                          "model.layers=1)")
    owned = ", ".join(n for n, p in estimator.named_parameters() if p.requires_grad)
    if owned:
        raise ConfigError(
            f"{key} does not support estimator '{estimator.name}' with these settings: it trains "
            f"parameters of its own ({owned}), which a replica group does not stack (REBAR and "
            "RELAX also differentiate inside their forward pass with torch.autograd.grad, which "
            "torch.func.vmap cannot batch); accepted: train.replicas=1 (separate runs, e.g. a "
            "joblib sweep over seeds), or an estimator without trainable parameters")
