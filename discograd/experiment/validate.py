"""Checks of config values that Hydra's schema cannot express, one value at a time, run before
any work starts (experiment/build.py then checks the built objects together).

Every message names the key, the bad value and what is accepted.
"""
from __future__ import annotations

import math

from discograd.estimators import REGISTRY, ConfigError
from discograd.images import CANVAS_DATASETS, DIGIT
from discograd.models import check_model_config, model_class
from .config import plain

SPLIT_SIZES = {"mnist": {"train": 50000, "valid": 10000, "test": 10000}}
SPLIT_SIZES["translated_mnist"] = SPLIT_SIZES["cluttered_mnist"] = SPLIT_SIZES["mnist"]
SPLIT_SIZES["fashion_mnist"] = SPLIT_SIZES["mnist"]
REFERENCES = ("auto", "exact")


def _int_at_least(key: str, value, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value} is invalid: it must be an integer >= {low}")


def _positive(key: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} is invalid: it must be a finite number > 0")


def check_keys(cfg) -> None:
    """Raise ConfigError for the first invalid value found (the values one by one; what needs the
    built model and estimator is checked by experiment.build)."""
    if cfg.logger.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as e:
            raise ConfigError("logger.tensorboard=true needs the tensorboard package: "
                              "pip install -e '.[tensorboard]' (or set logger.tensorboard=false)") from e
    est, model, train = cfg.estimator, cfg.model, cfg.train
    if est.name not in REGISTRY:
        raise ConfigError(f"estimator.name={est.name!r} is not a known estimator; accepted: "
                          f"{', '.join(sorted(REGISTRY))}")
    kind = plain(model.latent)
    kinds = REGISTRY[est.name].kinds
    if kind not in kinds:
        raise ConfigError(f"estimator '{est.name}' cannot train model '{model.name}' with {kind} "
                          f"latents: it supports {', '.join(kinds)} latents only")
    _validate_objective_pairing(cfg)
    _int_at_least("train.steps", train.steps, 0)
    _int_at_least("train.batch_size", train.batch_size, 1)
    _int_at_least("train.replicas", train.replicas, 1)
    _positive("train.lr", train.lr)
    for key in ("log_every", "eval_every", "checkpoint_every"):
        _int_at_least(f"train.{key}", train[key], 1)
    _int_at_least("eval.samples", cfg.eval.samples, 1)
    _int_at_least("eval.final_samples", cfg.eval.final_samples, 0)
    _validate_canvas(cfg.data)
    check_model_config(model, cfg.data)       # the model's own checks (its class's check_config)
    model_cls = model_class(model)
    sizes = SPLIT_SIZES.get(cfg.data.name)
    if model_cls.needs_data and model_cls.checks_batch_size and sizes \
            and train.batch_size > sizes["train"]:
        raise ConfigError(f"train.batch_size={train.batch_size} is larger than the training set "
                          f"of data={cfg.data.name} ({sizes['train']} examples)")
    d = cfg.diagnostics
    _int_at_least("diagnostics.every", d.every, 0)
    _int_at_least("diagnostics.samples", d.samples, 2)
    if d.batch_size is not None:
        _int_at_least("diagnostics.batch_size", d.batch_size, 1)
    _int_at_least("diagnostics.fit_steps", d.fit_steps, 0)
    if d.fit_lr is not None and not (isinstance(d.fit_lr, (int, float)) and math.isfinite(d.fit_lr)
                                     and d.fit_lr > 0):
        raise ConfigError(f"diagnostics.fit_lr={d.fit_lr} is invalid: it must be a finite number > 0 "
                          "(or null: train.lr)")
    if model_cls.needs_data and sizes and d.batch_size is not None and d.batch_size > sizes["train"]:
        raise ConfigError(f"diagnostics.batch_size={d.batch_size} is larger than the training set "
                          f"of data={cfg.data.name} ({sizes['train']} examples)")


def _validate_canvas(data) -> None:
    """The 60x60 canvases (data=translated_mnist|cluttered_mnist); checked before the model's own
    checks, which may read the image side."""
    if data.name in CANVAS_DATASETS:
        _int_at_least("data.size", data.size, DIGIT)
        _int_at_least("data.clutter", data.clutter, 0)
        if not isinstance(data.fragment, int) or not 1 <= data.fragment <= DIGIT:
            raise ConfigError(f"data.fragment={data.fragment} is invalid: it must be an integer in "
                              f"1..{DIGIT}")
        _int_at_least("data.canvas_seed", data.canvas_seed, 0)


def _validate_objective_pairing(cfg) -> None:
    """The pairing of the model's training objective with the estimator's target (E_q[f] or the
    S-sample bound: the model's check_objective), and of diagnostics with that target."""
    est, model = cfg.estimator, cfg.model
    multisample = REGISTRY[est.name].objective == "multisample"
    model_class(model).check_objective(model, REGISTRY[est.name])
    d = cfg.diagnostics
    if multisample and d.every > 0 and (d.estimators is None or d.estimators == "trained"):
        raise ConfigError(
            f"diagnostics.estimators={d.estimators if d.estimators is not None else 'null'} probes "
            "only the trained estimator, but "
            f"'{est.name}' estimates the gradient of the S-sample bound, not of E_q[f] (what the "
            "diagnostics measure against their reference); use diagnostics.estimators=basic (the "
            "estimators of E_q[f] at the states it trains through) or diagnostics.every=0")
