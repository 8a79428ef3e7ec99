"""The models by name (``model=NAME``), and the one way to check and build one from a config.

A model is a :class:`LatentModel` subclass decorated with :func:`register`. The class declares its
config schema (``schema``: the dataclass of the keys, types and defaults of ``model=NAME``, stored
by experiment/config.py as ``/schema/model/NAME``), checks its config values
(``check_config``, ``check_objective``) and builds itself (``from_config``). Nothing outside
discograd/models needs to know a model's name.
"""
from __future__ import annotations

import dataclasses

from discograd.errors import ConfigError
from .base import LatentModel

MODELS: dict[str, type[LatentModel]] = {}   # name -> class, in the order the modules register


def register(cls: type[LatentModel]) -> type[LatentModel]:
    """Class decorator: adds ``cls`` to :data:`MODELS` under ``cls.name``. Refuses (at import) a
    missing or duplicate name, a schema that is not a dataclass with a field ``name`` defaulting
    to ``cls.name`` and a field ``latent`` (the harness checks the estimator's latent kinds
    against ``model.latent``), and a class without its own ``from_config``."""
    if not cls.name or cls.name in MODELS:
        raise RuntimeError(f"bad or duplicate model name {cls.name!r}")
    fields = {f.name: f for f in dataclasses.fields(cls.schema)} \
        if dataclasses.is_dataclass(cls.schema) else {}
    if "name" not in fields or fields["name"].default != cls.name or "latent" not in fields:
        raise TypeError(f"{cls.__name__}.schema must be a dataclass with the fields 'name' "
                        f"(default {cls.name!r}) and 'latent'")
    if cls.from_config.__func__ is LatentModel.from_config.__func__:
        raise TypeError(f"{cls.__name__} must define the classmethod from_config")
    MODELS[cls.name] = cls
    return cls


def model_class(model_cfg) -> type[LatentModel]:
    """The registered class of config node ``model`` (by ``model.name``)."""
    name = str(model_cfg.name)
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not a known model; accepted: "
                          f"{', '.join(sorted(MODELS))}")
    return MODELS[name]


def check_model_config(model_cfg, data_cfg) -> None:
    """Raise ConfigError for the first value of config node ``model`` (or of its pairing with
    ``data``) that Hydra's schema cannot refuse; builds nothing, draws no random number."""
    model_class(model_cfg).check_config(model_cfg, data_cfg)


def build_model(model_cfg, data_cfg) -> LatentModel:
    """The model of config nodes ``model`` and ``data`` (a composed config that passed
    :func:`check_model_config`): its parameters drawn from the global torch random stream."""
    return model_class(model_cfg).from_config(model_cfg, data_cfg)
