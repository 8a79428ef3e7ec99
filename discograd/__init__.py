"""discograd: gradient estimators for discrete latent variables, measured.

As a library (docs/api.md): ``discograd.make(name, logits, **settings)`` builds any estimator
(every class is also in :mod:`discograd.estimators`); ``est(logits, f).surrogate.backward()``
gives its gradient; :func:`probe` measures estimators' variance, bias and SNR on your own model;
:func:`certify` z-tests any estimator's mean against exact gradients. The command line (the
runner) is :mod:`discograd.cli` (``python run.py`` in a checkout, ``discograd`` once installed);
the design and contracts are in docs/design.md.

The names below are imported on first use: the command line imports this package before torch,
to set its threads first (discograd/threads.py).
"""
from __future__ import annotations

import importlib

__version__ = "0.3.0"

_PUBLIC = {
    "make": "discograd.estimators", "Estimator": "discograd.estimators",
    "Estimate": "discograd.estimators", "TauSchedule": "discograd.estimators",
    "REGISTRY": "discograd.estimators", "ConfigError": "discograd.errors",
    "probe": "discograd.diagnostics", "Problem": "discograd.diagnostics",
    "Probe": "discograd.diagnostics", "certify": "discograd.diagnostics",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'discograd' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
