"""Statistics over seeds for the results tables.

- :func:`t_interval`: mean and the half-width of its two-sided confidence interval from Student's t
  distribution with n - 1 degrees of freedom (the seeds are treated as i.i.d. draws of the run's
  outcome; n = 1 gives an infinite interval, never a zero one).
- :func:`paired_t`: the paired t-test of two estimators over the seeds they share. Runs with the same
  seed share the model's initialisation and the data order (docs/design.md, "Seeds"), so the
  difference removes that part of the seed-to-seed spread.
- :func:`holm`: Holm's (1979) step-down adjustment of m p-values; it controls the family-wise error
  rate at any dependence between the tests, which the comparisons with one common "best" have.
- :func:`compare_with_best`: the table's significance marks: every estimator is compared with the
  one with the best mean, and those whose Holm-adjusted p-value is >= alpha are marked as not
  distinguishable from it.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as _st


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width, n) of the ``level`` t confidence interval for the mean of ``values``
    (NaNs dropped): half-width = t_{(1+level)/2, n-1} * s / sqrt(n); inf for n = 1, NaN for n = 0."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.inf, 1
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


def paired_t(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[int, float, float]:
    """Two-sided paired t-test of ``a`` against ``b`` (seed -> value) over their common seeds:
    (n pairs, mean of a - b, p-value). p is NaN below 2 pairs; 0 when every difference is the same
    non-zero value (zero spread), 1 when all are zero."""
    seeds = sorted(set(a) & set(b))
    d = np.asarray([a[s] - b[s] for s in seeds], dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    if n < 2:
        return n, float(d.mean()) if n else math.nan, math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return n, mean, 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return n, mean, float(2 * _st.t.sf(abs(t), n - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given; NaN stays NaN and does not count in m):
    sorted ascending, p_(i) * (m - i + 1), made monotone, capped at 1."""
    p = list(pvalues)
    idx = [i for i, x in enumerate(p) if x is not None and not math.isnan(x)]
    idx.sort(key=lambda i: p[i])
    m, out, running = len(idx), [math.nan] * len(p), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def compare_with_best(per_seed: Mapping[str, Mapping[int, float]], higher_is_better: bool,
                      alpha: float = 0.05) -> dict[str, dict]:
    """For each entry (estimator label -> {seed: metric}): its paired comparison with the entry of
    best mean, Holm-adjusted over all the comparisons. Returns label -> {"best": bool, "n_pairs",
    "diff" (this - best), "p" (raw), "p_holm", "tie": not distinguishable from the best at alpha
    (the best itself is a tie; an entry with fewer than 2 common seeds is not marked either way:
    tie None)}."""
    means = {k: np.nanmean(list(v.values())) for k, v in per_seed.items() if len(v)}
    if not means:
        return {}
    best = (max if higher_is_better else min)(means, key=lambda k: means[k])
    out, labels, raw = {}, [], []
    for k in per_seed:
        if k == best:
            out[k] = {"best": True, "n_pairs": len(per_seed[k]), "diff": 0.0, "p": math.nan,
                      "p_holm": math.nan, "tie": True}
            continue
        n, diff, p = paired_t(per_seed[k], per_seed[best])
        out[k] = {"best": False, "n_pairs": n, "diff": diff, "p": p}
        labels.append(k)
        raw.append(p)
    for k, ph in zip(labels, holm(raw)):
        out[k]["p_holm"] = ph
        out[k]["tie"] = None if math.isnan(ph) else bool(ph >= alpha)
    return out
