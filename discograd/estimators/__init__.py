"""Gradient estimators for discrete latent variables, one module per family (docs/api.md).

``make(name, logits, **settings)`` builds an estimator by name for latents shaped like
``logits``; every estimator class is importable here by its class name (``DisARM``, ``Relax``,
...). ``REGISTRY`` maps names to classes (with their declared kinds and unbiasedness);
``build_estimator(cfg, kind, latent_shape)`` builds from a config node (the runner's path: its
errors name config keys, ``estimator.samples=...``).
"""
from __future__ import annotations

from .base import (KINDS, REGISTRY, ConfigError, Estimate, Estimator, build, config_schema,
                   hard_sample, log_prob, probs, uniform)
# registration order = the order of tables and plot colours: these first, then every other module
# of this package (a new estimator is one module here and one YAML in configs/estimator/)
from . import straight_through, reinforce, relaxed, arm, rloo, vimco  # noqa: F401,E402
from . import muprop, rebar, relax, reinmax, gst, gumbel_rao, exact  # noqa: F401,E402


def _import_the_rest() -> None:
    import importlib
    import pkgutil
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name != "base":
            importlib.import_module(f"{__name__}.{m.name}")


_import_the_rest()
from .relaxed import TauSchedule  # noqa: E402
from .estimate import scale_grad  # noqa: E402
from .base import settings as _settings  # noqa: E402
from .arm import ARM, DisARM  # noqa: E402
from .annealed_st import AnnealedST  # noqa: E402
from .arsm import ARSM  # noqa: E402
from .exact import Exact  # noqa: E402
from .gst import GST  # noqa: E402
from .gumbel_rao import GumbelRao  # noqa: E402
from .muprop import MuProp  # noqa: E402
from .rebar import Rebar  # noqa: E402
from .reinforce import Reinforce  # noqa: E402
from .reinmax import ReinMax  # noqa: E402
from .relax import Relax  # noqa: E402
from .relaxed import GumbelSoftmax, STGumbelSoftmax  # noqa: E402
from .rloo import RLOO  # noqa: E402
from .straight_through import StraightThrough  # noqa: E402
from .vimco import Vimco  # noqa: E402

def latents_of(logits) -> tuple[str, tuple[int, ...]]:
    """(kind, latent shape) of a batch of logits: ``[B, n]`` are n Bernoulli latents, ``[B, n, K]``
    n categorical latents of K classes."""
    if logits.dim() == 2:
        return "bernoulli", tuple(logits.shape[1:])
    if logits.dim() == 3:
        return "categorical", tuple(logits.shape[1:])
    raise ConfigError(f"logits of shape {tuple(logits.shape)} are neither [B, n] (Bernoulli) nor "
                      "[B, n, K] (categorical); pass kind= and latent_shape= explicitly")


def make(name: str, logits=None, *, kind: str | None = None, latent_shape=None,
         **settings) -> Estimator:
    """Estimator ``name`` (``REGISTRY``) with keyword ``settings`` (its constructor's: e.g.
    ``samples=4``, ``baseline="ema"``, ``tau=TauSchedule(...)``), for latents shaped like
    ``logits`` (one batch is enough: ``[B, n]`` Bernoulli, ``[B, n, K]`` categorical), or of
    ``kind`` and ``latent_shape`` given explicitly. Raises ConfigError naming a bad value and
    what is accepted."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown estimator {name!r}; accepted: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    if logits is not None:
        found, shape = latents_of(logits)
        if kind is not None and kind != found:
            raise ConfigError(f"kind={kind!r} does not match logits of shape "
                              f"{tuple(logits.shape)}, which are {found} latents")
        kind, latent_shape = found, shape if latent_shape is None else tuple(latent_shape)
    if kind is None or latent_shape is None:
        raise ConfigError(f"make({name!r}) needs logits (a batch) or kind= and latent_shape=")
    unknown = sorted(set(settings) - set(_settings(cls)))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for estimator {name!r}; "
                          f"accepted: {', '.join(_settings(cls)) or 'none'}")
    return build(cls, dict(settings), kind, latent_shape, key_prefix="")


def build_estimator(cfg, kind: str, latent_shape) -> Estimator:
    """The estimator of config node ``cfg`` (``estimator``: name and settings, a DictConfig or a
    dict) for latents of ``kind`` and ``latent_shape``."""
    from omegaconf import DictConfig, OmegaConf
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) \
        if isinstance(cfg, DictConfig) else dict(cfg)
    name = str(config.get("name"))
    if name not in REGISTRY:
        raise ConfigError(f"unknown estimator {name!r}; accepted: {', '.join(REGISTRY)}")
    return build(REGISTRY[name], config, kind, latent_shape)


__all__ = [
    # making and describing estimators
    "make", "REGISTRY", "Estimator", "Estimate", "scale_grad", "TauSchedule", "ConfigError", "KINDS", "latents_of",
    "build_estimator",
    # every estimator by class name
    "ARM", "ARSM", "AnnealedST", "DisARM", "Exact", "GST", "GumbelRao", "GumbelSoftmax", "MuProp",
    "RLOO", "Rebar", "ReinMax", "Reinforce", "Relax", "STGumbelSoftmax", "StraightThrough", "Vimco",
    # latent helpers
    "hard_sample", "log_prob", "probs", "uniform",
]
