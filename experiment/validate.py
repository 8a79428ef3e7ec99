"""Checks of config values that Hydra's schema cannot express, run before any work starts.

Every message names the key, the bad value and what is accepted.
"""
from __future__ import annotations

import math

from estimators import REGISTRY, ConfigError
from .config import plain

SPLIT_SIZES = {"mnist": {"train": 50000, "valid": 10000, "test": 10000}}
REFERENCES = ("auto", "exact")


def _int_at_least(key: str, value, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value} is invalid: it must be an integer >= {low}")


def _positive(key: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} is invalid: it must be a finite number > 0")


def validate(cfg) -> None:
    """Raise ConfigError for the first invalid value found."""
    est, model, train = cfg.estimator, cfg.model, cfg.train
    if est.name not in REGISTRY:
        raise ConfigError(f"estimator.name={est.name!r} is not a known estimator; accepted: "
                          f"{', '.join(sorted(REGISTRY))}")
    kind = plain(model.latent)
    kinds = REGISTRY[est.name].kinds
    if kind not in kinds:
        raise ConfigError(f"estimator '{est.name}' cannot train model '{model.name}' with {kind} "
                          f"latents: it supports {', '.join(kinds)} latents only")
    _int_at_least("estimator.samples", est.samples, 1)
    if "tau" in est:
        _positive("estimator.tau.init", est.tau.init)
        _positive("estimator.tau.min", est.tau.min)
        if not (math.isfinite(est.tau.rate) and est.tau.rate >= 0):
            raise ConfigError(f"estimator.tau.rate={est.tau.rate} is invalid: it must be a finite number >= 0")
        _int_at_least("estimator.tau.every", est.tau.every, 1)
    _int_at_least("train.steps", train.steps, 0)
    _int_at_least("train.batch_size", train.batch_size, 1)
    _positive("train.lr", train.lr)
    for key in ("log_every", "eval_every", "checkpoint_every"):
        _int_at_least(f"train.{key}", train[key], 1)
    _int_at_least("eval.samples", cfg.eval.samples, 1)
    _int_at_least("eval.final_samples", cfg.eval.final_samples, 0)
    if model.name == "vae":
        if model.latent_dim is not None:
            _int_at_least("model.latent_dim", model.latent_dim, 1)
        if kind == "categorical":
            _int_at_least("model.classes", model.classes, 2)
        for h in model.hidden:
            _int_at_least("model.hidden[i]", h, 1)
        sizes = SPLIT_SIZES.get(cfg.data.name)
        if sizes and train.batch_size > sizes["train"]:
            raise ConfigError(f"train.batch_size={train.batch_size} is larger than the training set "
                              f"of data={cfg.data.name} ({sizes['train']} examples)")
    if model.name == "toy":
        _int_at_least("model.dim", model.dim, 1)
        if kind == "categorical":
            _int_at_least("model.classes", model.classes, 2)
        if not math.isfinite(model.t):
            raise ConfigError(f"model.t={model.t} is invalid: it must be a finite number")
    d = cfg.diagnostics
    _int_at_least("diagnostics.every", d.every, 0)
    _int_at_least("diagnostics.samples", d.samples, 2)
    _int_at_least("diagnostics.batch_size", d.batch_size, 1)
    sizes = SPLIT_SIZES.get(cfg.data.name)
    if model.name != "toy" and sizes and d.batch_size > sizes["train"]:
        raise ConfigError(f"diagnostics.batch_size={d.batch_size} is larger than the training set "
                          f"of data={cfg.data.name} ({sizes['train']} examples)")
