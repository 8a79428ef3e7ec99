"""``DISCOGRAD_SHRINK=N``: a smoke test of a command, not a result. The environment variable caps
the steps, periods and sample counts of every run (the README test runs every documented command
that way); nothing else changes: the same model, estimator, data and code paths run, only
shorter."""
from __future__ import annotations

import os

from discograd.errors import ConfigError

SHRINK_ENV = "DISCOGRAD_SHRINK"
SHRINK_DRAWS = 10      # estimates per probe, and Monte Carlo reference draws, when shrinking


def shrink_steps() -> int | None:
    """N from ``DISCOGRAD_SHRINK=N`` (None when unset or empty)."""
    value = os.environ.get(SHRINK_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{SHRINK_ENV}={value} is invalid: it must be an integer >= 1 (the "
                          "number of training steps every run is cut to), or unset")
    return int(value)


def shrink(cfg) -> list[str]:
    """Cap ``cfg`` in place when ``DISCOGRAD_SHRINK=N`` is set: N training steps, periods of at
    most N/2 steps, 2 periodic and 4 final importance samples, probes at the start and the end of
    10 estimates with 2 fitting steps against a reference of at most 10 draws (``auto``'s
    Monte Carlo reference too: :func:`discograd.diagnostics.parse_reference`). Returns the changes as ``key: old -> new`` (empty when not shrinking). Nothing
    else changes: the same model, estimator, data and code paths run, only shorter."""
    n = shrink_steps()
    if n is None:
        return []
    half = max(1, n // 2)
    changes = []

    def cap(node, key: str, limit: int, dotted: str) -> None:
        old = int(node[key])
        if old > limit:
            node[key] = limit
            changes.append(f"{dotted}: {old} -> {limit}")

    tr, ev, dg = cfg.train, cfg.eval, cfg.diagnostics
    cap(tr, "steps", n, "train.steps")
    for key in ("log_every", "eval_every", "checkpoint_every"):
        cap(tr, key, half, f"train.{key}")
    if str(ev.select) in ("auto", "none"):      # a named metric (bound_100) keeps its samples
        cap(ev, "samples", 2, "eval.samples")
    cap(ev, "final_samples", 4, "eval.final_samples")
    if int(dg.every) > 0:
        cap(dg, "every", n, "diagnostics.every")          # probes at the start and the end
    cap(dg, "samples", SHRINK_DRAWS, "diagnostics.samples")
    cap(dg, "fit_steps", 2, "diagnostics.fit_steps")
    ref = str(dg.reference).split(":")
    if len(ref) == 3 and ref[0] == "mc" and ref[2].isdigit() and int(ref[2]) > SHRINK_DRAWS:
        dg.reference = f"mc:{ref[1]}:{SHRINK_DRAWS}"
        changes.append(f"diagnostics.reference: {':'.join(ref)} -> {dg.reference}")
    return changes
