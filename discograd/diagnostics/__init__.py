"""Gradient diagnostics: how far an estimator's gradients are from the true gradient, and how
noisy they are, measured at a frozen model state (README, "Gradient diagnostics").

- :mod:`.probe`: :class:`Probe`, K estimates per probed estimator at one state, rows of
  grad_stats.csv;
- :mod:`.reference`: which estimators are probed, the comparators, the reference gradient;
- :mod:`.stats`: the statistics and their standard errors (the definitions are a contract);
- :mod:`.api`: :func:`probe`, the probe on a user's own model, as a pandas table;
- :mod:`.certify`: :func:`certify`, z-tests of any estimator's mean against exact gradients.
"""
from __future__ import annotations

from .api import Problem, probe
from .certify import certify
from .probe import Probe
from .reference import (AUTO_EVALS, AUTO_M, BASIC, PILOT_DRAWS, REFERENCE_LOO, Reference,
                        build_comparator, parse_reference, probe_plan, reference_candidates,
                        resolve_estimators)
from .stats import (COSINE_HALF_WIDTH, GRAD_STATS_HEADER, GROUPS, JACKKNIFE_GROUPS, grad_stats_row,
                    group_stats)

# public (docs/api.md); the other names above are the runner's, importable but not promised
__all__ = ["GRAD_STATS_HEADER", "Probe", "Problem", "Reference", "certify", "probe"]
