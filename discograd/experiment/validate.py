"""Checks of config values that Hydra's schema cannot express, one value at a time, run before
any work starts (experiment/build.py then checks the built objects together).

Every message names the key, the bad value and what is accepted.
"""
from __future__ import annotations

import math

from discograd.estimators import REGISTRY, ConfigError
from discograd.data.canvas import CANVAS_DATASETS, DIGIT, image_side
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
    if model.name in ("vae", "sbn"):
        _int_at_least("model.layers", model.layers, 1)
        if model.latent_dim is not None:
            _int_at_least("model.latent_dim", model.latent_dim, 1)
        if kind == "categorical":
            _int_at_least("model.classes", model.classes, 2)
        for h in model.get("hidden", []):
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
        if not (math.isfinite(model.power) and model.power >= 1):
            raise ConfigError(f"model.power={model.power} is invalid: it must be a finite number "
                              ">= 1 (f = mean |z - t|^power; 1 <= power keeps f convex in z)")
        if not (math.isfinite(model.init) and model.init >= 0):
            raise ConfigError(f"model.init={model.init} is invalid: it must be a finite number >= 0")
    _validate_attention_and_canvas(cfg)
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
    sizes = SPLIT_SIZES.get(cfg.data.name)
    if model.name != "toy" and sizes and d.batch_size is not None and d.batch_size > sizes["train"]:
        raise ConfigError(f"diagnostics.batch_size={d.batch_size} is larger than the training set "
                          f"of data={cfg.data.name} ({sizes['train']} examples)")


def _validate_attention_and_canvas(cfg) -> None:
    """The hard-attention classifier (model=attention) and the 60x60 canvases (data=
    translated_mnist|cluttered_mnist)."""
    model, data = cfg.model, cfg.data
    if data.name in CANVAS_DATASETS:
        _int_at_least("data.size", data.size, DIGIT)
        _int_at_least("data.clutter", data.clutter, 0)
        if not isinstance(data.fragment, int) or not 1 <= data.fragment <= DIGIT:
            raise ConfigError(f"data.fragment={data.fragment} is invalid: it must be an integer in "
                              f"1..{DIGIT}")
        _int_at_least("data.canvas_seed", data.canvas_seed, 0)
        if model.name in ("vae", "sbn"):
            raise ConfigError(f"model '{model.name}' reads 28x28 images, but data={data.name} has "
                              f"{data.size}x{data.size} canvases; accepted: data=mnist, mnist_grey "
                              "or fashion_mnist")
    if model.name != "attention":
        return
    if plain(model.latent) != "categorical":
        raise ConfigError(f"model.latent={plain(model.latent)} is invalid for model 'attention': "
                          "glimpse locations are categorical; accepted: categorical")
    side = image_side(data)
    _int_at_least("model.glimpses", model.glimpses, 1)
    _int_at_least("model.grid", model.grid, 1)
    if model.grid > side or side % model.grid:
        divisors = [k for k in range(2, side + 1) if side % k == 0]
        raise ConfigError(f"model.grid={model.grid} does not divide the {side}x{side} images of "
                          f"data={data.name}; accepted: a divisor of {side} "
                          f"({', '.join(map(str, divisors))})")
    _int_at_least("model.patch", model.patch, 1)
    _int_at_least("model.scales", model.scales, 1)
    largest = model.patch * 2 ** (model.scales - 1)
    if largest > 2 * side:
        raise ConfigError(f"model.patch={model.patch} with model.scales={model.scales} gives "
                          f"{largest}-pixel glimpses on {side}x{side} images; accepted: "
                          f"patch * 2^(scales-1) <= {2 * side}")
    if not isinstance(model.context, int) or not 1 <= model.context <= side:
        raise ConfigError(f"model.context={model.context} is invalid: it must be an integer in "
                          f"1..{side} (the side of the coarse view of the {side}x{side} image)")
    _int_at_least("model.hidden", model.hidden, 1)


def _validate_objective_pairing(cfg) -> None:
    """The pairing of the VAE's training objective (model.objective: elbo | iwae) with the
    estimator's target (E_q[f] or the S-sample bound), and of diagnostics with that target."""
    est, model = cfg.estimator, cfg.model
    multisample = REGISTRY[est.name].objective == "multisample"
    if multisample and model.name == "toy":
        raise ConfigError(
            f"estimator '{est.name}' estimates the gradient of the S-sample bound "
            "log 1/S sum_s exp(-f(z_s)), but model 'toy' minimises E[f] (f is not a negative "
            "log-likelihood, so that bound is not its objective and its exact_loss would not be "
            "comparable); accepted with the toy: any estimator of E[f] (e.g. rloo, reinforce "
            "estimator.samples=S); vimco trains model=vae model.objective=iwae, model=sbn or "
            "model=attention")
    if model.name == "vae" and "objective" in model:
        objective = plain(model.objective)
        if objective == "iwae" and not multisample:
            raise ConfigError(
                f"model.objective=iwae trains the S-sample bound, but estimator '{est.name}' estimates "
                "the gradient of the single-sample objective E_q[f] (the ELBO), not of that bound; "
                "use estimator=vimco, or model.objective=elbo")
        if objective == "elbo" and multisample:
            raise ConfigError(
                f"estimator '{est.name}' estimates the gradient of the S-sample bound "
                "log 1/S sum_s exp(-f(z_s)), which needs f = -log w: set model.objective=iwae "
                "(model.objective=elbo gives f = -log p(x|z) plus an analytic KL)")
    d = cfg.diagnostics
    if multisample and d.every > 0 and (d.estimators is None or d.estimators == "trained"):
        raise ConfigError(
            f"diagnostics.estimators={d.estimators if d.estimators is not None else 'null'} probes "
            "only the trained estimator, but "
            f"'{est.name}' estimates the gradient of the S-sample bound, not of E_q[f] (what the "
            "diagnostics measure against their reference); use diagnostics.estimators=basic (the "
            "estimators of E_q[f] at the states it trains through) or diagnostics.every=0")
