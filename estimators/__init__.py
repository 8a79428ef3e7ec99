"""Gradient estimators for discrete latent variables, one module per family.

``build_estimator(cfg, kind, latent_shape)`` builds the estimator named ``cfg.name`` from the
registry; ``REGISTRY`` maps names to classes (with their declared kinds and unbiasedness).
"""
from __future__ import annotations

from .base import (KINDS, REGISTRY, ConfigError, Estimate, Estimator, hard_sample, log_prob,
                   probs, uniform)
from . import straight_through, reinforce, relaxed  # noqa: F401  (registration)
from . import arm, exact, gst, gumbel_rao, muprop, reinmax, rloo  # noqa: F401  (registration)
from .relaxed import TauSchedule
from . import rebar, relax, vimco  # noqa: F401,E402  (registration: REBAR, RELAX, VIMCO)


def build_estimator(cfg, kind: str, latent_shape) -> Estimator:
    name = str(cfg.name)
    if name not in REGISTRY:
        raise ConfigError(f"unknown estimator {name!r}; accepted: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    if hasattr(cls, "from_config"):
        return cls.from_config(cfg, kind, tuple(latent_shape))
    return cls(kind, tuple(latent_shape), samples=cfg.samples)


__all__ = ["KINDS", "REGISTRY", "ConfigError", "Estimate", "Estimator", "TauSchedule",
           "build_estimator", "hard_sample", "log_prob", "probs", "uniform"]
