"""What the probe measures and against what: the probed estimators (``diagnostics.estimators``),
the comparators built from the trained estimator's settings, and the reference gradient
(``diagnostics.reference``).

Reference:
- ``exact``: the model's closed form (toy) or enumeration of all latent configurations, when there
  are at most ``MAX_CONFIGS`` of them (e.g. <= 16 Bernoulli latents): E_q[f] = sum_z q(z|x) f(z),
  differentiated by autograd, in chunks of configurations.
- ``mc:NAME:M``: the mean of M draws of the unbiased estimator NAME (``reinforce`` is used with
  the leave-one-out baseline over ``REFERENCE_LOO`` samples per draw), with its own variance / M
  removed from bias2.
- ``auto``: exact when feasible, else the most precise sampled reference for a budget of
  ``AUTO_EVALS`` f-evaluations per example (AUTO_M draws of reinforce with REFERENCE_LOO
  samples): at each probe every candidate (:func:`reference_candidates`: e.g. disarm, arm, rloo,
  muprop, reinforce on Bernoulli latents) is measured on ``PILOT_DRAWS`` draws, and the one with
  the smallest variance x evals is drawn budget / evals times (the ``reference`` column names it).

Comparators (every probed estimator but the trained one) are built with the trained estimator's
shared settings (:func:`build_comparator`) and, when they have state of their own, fitted before
they are measured (diagnostics/probe.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from discograd.estimators import REGISTRY, ConfigError, Estimator, build_estimator, config_schema
from discograd.estimators.base import MAX_CONFIGS, n_configs

AUTO_M = 100
REFERENCE_LOO = 10
AUTO_EVALS = AUTO_M * REFERENCE_LOO   # f-evaluations per example that ``auto`` spends on its reference
PILOT_DRAWS = 16                # draws per candidate when ``auto`` measures the candidates' precision


def _buildable(name: str, kind: str, latent_shape, sequential: bool) -> str | None:
    """None if estimator ``name`` (default settings) can be probed on this model, else why not."""
    cls = REGISTRY[name]
    if kind not in cls.kinds:
        return f"does not support {kind} latents"
    if cls.objective != "mean":
        return "estimates the gradient of another objective (the multi-sample bound), not of E[f]"
    try:
        with torch.random.fork_rng(devices=[]):      # a trial build draws no training randomness
            est = build_estimator(estimator_defaults(name), kind, tuple(latent_shape))
    except ConfigError as e:
        return str(e)
    if sequential and est.multi_eval:
        return "evaluates f several times, which a sequential model cannot do"
    return None


BASIC = ("st", "reinforce", "gumbel", "st_gumbel")


def estimator_defaults(name: str):
    """The settings of estimator ``name`` as ``estimator=NAME`` composes them: its schema's
    defaults (estimators.base.config_schema; configs/estimator/NAME.yaml sets only the name,
    which tests/test_config.py checks)."""
    return OmegaConf.structured(config_schema(REGISTRY[name]))


def probe_plan(dg, estimator_name: str, model, draws: int = AUTO_M) -> tuple[list[str], object]:
    """(the probed estimators, the reference) that the ``diagnostics`` config ``dg`` asks for on
    ``model`` trained with ``estimator_name``; ConfigError names a value that cannot work."""
    spec = dg.estimators
    if spec is not None and not isinstance(spec, str):
        spec = list(spec)
    names = resolve_estimators(spec, estimator_name, model.kind, model.sequential,
                               model.latent_shape)
    return names, parse_reference(dg.reference, model, draws)


def resolve_estimators(spec, trained: str, kind: str, sequential: bool,
                       latent_shape=None) -> list[str]:
    """Names for ``diagnostics.estimators``: None/'trained' = the trained one; 'basic' (the
    default) = the trained one and st, reinforce, gumbel, st_gumbel (those that can run); 'all' =
    every registered estimator that can run on this model (e.g. ``exact`` only when the latent
    space is small enough to enumerate; not ``vimco``, whose target is another objective); a list
    or a comma-separated string of names (each must be able to run)."""
    if spec is None or spec == "trained":
        return [trained]
    if spec in ("all", "basic"):
        pool = sorted(REGISTRY) if spec == "all" else BASIC
        # a trained estimator of another objective (vimco) is not probed: the others are, at
        # the states it trains through
        first = [trained] if _objective(REGISTRY[trained]) == "mean" else []
        if latent_shape is None:
            return list(dict.fromkeys([*first, *(n for n in pool if kind in REGISTRY[n].kinds)]))
        return list(dict.fromkeys([*first, *(n for n in pool if (n == trained and first) or
                                             _buildable(n, kind, latent_shape, sequential) is None)]))
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
    if not names:
        raise ConfigError("diagnostics.estimators=[] is empty; accepted: null (the trained "
                          f"estimator), basic, all, or names among {', '.join(sorted(REGISTRY))}")
    for n in names:
        if n not in REGISTRY:
            raise ConfigError(f"diagnostics.estimators contains unknown estimator {n!r}; accepted: "
                              f"basic, all, or names among {', '.join(sorted(REGISTRY))}")
        if kind not in REGISTRY[n].kinds:
            raise ConfigError(f"diagnostics.estimators contains {n!r}, which does not support "
                              f"{kind} latents (it supports {', '.join(REGISTRY[n].kinds)})")
        why = None if latent_shape is None or n == trained else _buildable(n, kind, latent_shape, sequential)
        if why:
            raise ConfigError(f"diagnostics.estimators contains {n!r}, which cannot run on this "
                              f"model: {why}")
    return list(dict.fromkeys(names))


def _objective(cls) -> str:
    """What an estimator class estimates the gradient of: "mean" (E_q[f]) or another objective
    (vimco: "multisample", the S-sample bound)."""
    return cls.objective


def _reference_capable(name: str, kind: str) -> bool:
    cls = REGISTRY[name]
    return cls.unbiased and _objective(cls) == "mean" and kind in cls.kinds


def build_comparator(name: str, kind: str, latent_shape, trained_cfg=None,
                     overrides: dict | None = None) -> Estimator:
    """Estimator ``name`` as ``estimator=NAME`` would build it, taking the trained estimator's
    settings where the two share a key (``samples``, ``baseline``, ``tau``, ``tau_init``, ...):
    a comparator is measured in the configuration the user trains. Where a shared value is
    invalid for it (e.g. rloo needs samples >= 2), its own defaults are kept."""
    base = estimator_defaults(name)
    if overrides:
        base = OmegaConf.merge(base, overrides)
    if trained_cfg is not None:
        shared = {k: trained_cfg[k] for k in trained_cfg if k != "name" and k in base}
        try:
            return build_estimator(OmegaConf.merge(base, shared), kind, tuple(latent_shape))
        except ConfigError:
            pass
    return build_estimator(base, kind, tuple(latent_shape))


@dataclass(frozen=True)
class Reference:
    mode: str                 # "exact", "mc", or "pick" (auto without enumeration)
    estimator: str = ""
    draws: int = 0            # mc: draws M; pick: the budget in f-evaluations per example

    def __str__(self) -> str:
        if self.mode == "pick":
            return f"mc:most-precise:{self.draws}-evals"
        return "exact" if self.mode == "exact" else f"mc:{self.estimator}:{self.draws}"


def parse_reference(spec: str, model, draws: int = AUTO_M) -> Reference:
    """The :class:`Reference` of ``diagnostics.reference=SPEC`` on ``model``; ``draws``: the
    draws of reinforce (REFERENCE_LOO samples each) whose cost in f-evaluations is ``auto``'s
    budget (AUTO_M; a smoke test spends less)."""
    feasible = hasattr(model, "exact_objective") or n_configs(model.kind, model.latent_shape) <= MAX_CONFIGS
    spec = str(spec)
    if spec == "auto":
        return Reference("exact") if feasible else Reference("pick", "", draws * REFERENCE_LOO)
    if spec == "exact":
        if not feasible:
            raise ConfigError(
                f"diagnostics.reference=exact is not feasible for model '{model.name}' with "
                f"{model.kind} latents of shape {tuple(model.latent_shape)} (more than {MAX_CONFIGS} "
                "configurations); use auto or mc:NAME:M")
        return Reference("exact")
    parts = spec.split(":")
    if len(parts) == 3 and parts[0] == "mc":
        name, m = parts[1], parts[2]
        ok = [n for n in sorted(REGISTRY) if _reference_capable(n, model.kind)]
        if name not in REGISTRY or not _reference_capable(name, model.kind):
            why = ("it estimates the gradient of another objective (the multi-sample bound), not "
                   "of E[f]" if name in REGISTRY and _objective(REGISTRY[name]) != "mean"
                   else f"it is not an unbiased estimator of the gradient of E[f] for {model.kind} "
                   "latents")
            raise ConfigError(f"diagnostics.reference={spec}: {name!r} cannot be the reference: "
                              f"{why}; accepted: exact, auto, or mc:NAME:M with NAME among "
                              f"{', '.join(ok)}")
        if not m.isdigit() or int(m) < 2:
            raise ConfigError(f"diagnostics.reference={spec}: M={m} must be an integer >= 2")
        return Reference("mc", name, int(m))
    raise ConfigError(f"diagnostics.reference={spec!r} is invalid; accepted: auto, exact, mc:NAME:M")


def reference_estimator(name: str, model) -> Estimator:
    """A reference estimator as ``mc:NAME:M`` builds it: its defaults, except that ``reinforce``
    takes the leave-one-out baseline over ``REFERENCE_LOO`` samples per draw."""
    extra = {"samples": REFERENCE_LOO} if name == "reinforce" else None
    return build_comparator(name, model.kind, model.latent_shape, overrides=extra)


def reference_candidates(model) -> dict[str, Estimator]:
    """What ``auto`` chooses among when it cannot enumerate: every unbiased estimator of the
    gradient of E[f] for the model's latents that has no state of its own to fit (a REBAR or
    RELAX reference would have to be trained first) and can run on the model, built as
    :func:`reference_estimator` builds it; reinforce (leave-one-out over REFERENCE_LOO samples)
    always."""
    out = {}
    for name in sorted(REGISTRY):
        if name == "exact" or not _reference_capable(name, model.kind):
            continue
        if name != "reinforce" and _buildable(name, model.kind, model.latent_shape,
                                              model.sequential) is not None:
            continue
        est = reference_estimator(name, model)
        if est.adaptive and name != "reinforce":
            continue
        out[name] = est
    return out
