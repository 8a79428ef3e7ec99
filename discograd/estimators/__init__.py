"""Gradient estimators for discrete latent variables, one module per family.

``build_estimator(cfg, kind, latent_shape)`` builds the estimator named ``cfg.name`` from the
registry; ``REGISTRY`` maps names to classes (with their declared kinds and unbiasedness).
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


__all__ = ["KINDS", "REGISTRY", "ConfigError", "Estimate", "Estimator", "TauSchedule", "build",
           "build_estimator", "config_schema", "hard_sample", "log_prob", "probs", "uniform"]
