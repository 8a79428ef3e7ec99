"""Testbeds: the toy problem with a known gradient, the discrete VAE on MNIST (one or several
stochastic layers), the sigmoid belief net for structured output prediction and the
hard-attention classifier.

``build_model(model_cfg, data_cfg)`` builds the model named ``model_cfg.name`` and
``check_model_config(model_cfg, data_cfg)`` checks its config; ``MODELS`` maps names to the
registered classes (models/registry.py). Every module of this package is imported here and every
registered class is importable by its class name (``discograd.models.VAE``), so a new model is one
module here and one YAML in configs/model/ (README, "Adding a model").
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import LatentModel
from .config import Latent
from .layered import LayeredVAE
from .registry import MODELS, build_model, check_model_config, model_class, register


def _import_the_rest() -> None:
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{m.name}")


_import_the_rest()
globals().update({cls.__name__: cls for cls in MODELS.values()})

__all__ = ["Latent", "LatentModel", "LayeredVAE", "MODELS", "build_model", "check_model_config",
           "model_class", "register", *sorted(cls.__name__ for cls in MODELS.values())]
