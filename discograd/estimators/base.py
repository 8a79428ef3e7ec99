"""The interface every gradient estimator implements, and the registry that names them.

docs/design.md, "One training step": an estimator receives the distribution parameters ``logits`` and
the objective ``f`` and returns an :class:`Estimate` whose ``surrogate`` is a scalar whose gradient,
with respect to everything upstream of ``logits`` and every parameter inside ``f``, is the
estimator's gradient of ``mean_b E_{z ~ q(z | logits_b)}[f_b(z)]``. The estimator never sees the
model and the model never sees the estimator.

Latent kinds and shapes
-----------------------
- ``bernoulli``: ``logits`` is ``[B, n]``; samples are ``[S, B, n]`` in {0, 1} (or (0, 1) relaxed).
- ``categorical``: ``logits`` is ``[B, n, K]``; samples are one-hot ``[S, B, n, K]`` (or points of
  the simplex when relaxed).

``f`` maps ``[S, B, ...]`` samples to per-example losses ``[S, B]``.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import math
import re
import typing
from dataclasses import field
from typing import ClassVar

import torch
from torch import Tensor, nn

from discograd.errors import ConfigError
from . import layered
from .estimate import Estimate, Objective
# the latent-variable helpers live in discograd.latents (models use them too); estimators import
# them from here as well
from discograd.latents import (KINDS, MAX_CONFIGS, all_configs, entropy, gumbel_noise,  # noqa: F401
                               hard_sample, log_prob, logistic_noise, n_configs, one_hot, probs,
                               step_log_prob, uniform)

# --------------------------------------------------------------------------------------------
# Estimator base class and registry.
# --------------------------------------------------------------------------------------------

class Estimator(nn.Module):
    """Base class. Subclasses set the class attributes and implement :meth:`estimate`.

    Class attributes (declared properties, logged in summary.json):
      name: registry name used on the command line (``estimator=NAME``).
      kinds: latent kinds supported.
      unbiased: whether E[gradient] equals the true gradient of E[f].
      relaxed: whether ``f`` is evaluated at continuous relaxed samples during training.
    Instance properties:
      evals: evaluations of ``f`` per example per step (its cost).
      multi_eval: True when ``f`` must be evaluated more than once per example, which cannot work
        inside a sequential model whose later latents depend on earlier ones.
    """

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = KINDS
    unbiased: ClassVar[bool] = False
    relaxed: ClassVar[bool] = False
    # None, or why torch.compile cannot compile this estimator's forward pass (train.compile)
    not_compilable: ClassVar[str | None] = None
    # what Estimate.loss (the logged train/loss) measures: not the same quantity for every
    # estimator, so the analysis labels each curve with it
    loss_quantity: ClassVar[str] = "f at exact samples"
    # what the estimator is a gradient of: "mean" = E_q[f]; "multisample" = the S-sample bound
    # log 1/S sum_s exp(-f(z_s)) (vimco; it needs model.objective=iwae and is not probed)
    objective: ClassVar[str] = "mean"

    def __init__(self, kind: str, latent_shape: tuple[int, ...], samples: int = 1):
        super().__init__()
        if kind not in self.kinds:
            raise ConfigError(
                f"estimator '{self.name}' does not support {kind} latents; it supports: "
                f"{', '.join(self.kinds)}")
        if int(samples) < 1:
            raise ConfigError(f"samples={samples} is invalid: it must be an integer >= 1")
        self.kind = kind
        self.latent_shape = tuple(latent_shape)
        self.samples = int(samples)
        self.step = 0

    @property
    def evals(self) -> int:
        return self.samples

    @property
    def multi_eval(self) -> bool:
        return self.evals > 1

    @property
    def adaptive(self) -> bool:
        """True when the estimator adapts state of its own as it trains (parameters fitted with
        their own objective, e.g. REBAR's eta and temperature, or running statistics such as an
        EMA baseline): an untrained copy of it is not the estimator a user would measure."""
        return any(p.requires_grad for p in self.parameters())

    def properties(self) -> dict:
        return {"name": self.name, "kinds": list(self.kinds), "unbiased": self.unbiased,
                "relaxed": self.relaxed, "evals": self.evals, "multi_eval": self.multi_eval,
                "loss_quantity": self.loss_quantity}

    def set_step(self, step: int) -> None:
        """Called by the training loop before each step (temperature schedules)."""
        self.step = step

    def scalars(self) -> dict[str, float]:
        """Python-side values to log at log steps (e.g. the temperature)."""
        return {}

    def noise_shape(self, logits_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the uniforms one estimate consumes: ``(N, *logits_shape)``. The first
        ``samples`` slices must be the ones that draw the discrete samples, so that estimators
        given the same uniforms share their samples (common random numbers in diagnostics);
        estimators that need more noise (e.g. conditional Gumbels) use N > samples."""
        return (self.samples, *logits_shape)

    def draw_uniforms(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return uniform(self.noise_shape(tuple(logits.shape)), logits, generator=generator)

    def forward(self, logits: Tensor, f: Objective, u: Tensor | None = None,
                generator: torch.Generator | None = None) -> Estimate:
        """Estimate the gradient of mean_b E[f_b(z)] (docs/api.md has the whole contract).

        ``u``: optional uniforms of shape ``noise_shape(logits.shape)`` (common random numbers);
        if None they are drawn from ``generator`` (default: torch's global generator of the
        logits' device).
        """
        if u is None:
            u = self.draw_uniforms(logits, generator)
        return self.estimate(logits, f, u)

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:  # pragma: no cover
        raise NotImplementedError

    # --- sequential latents ---------------------------------------------------------------------
    # A sequential model (``model.sequential``; e.g. the recurrent attention classifier) draws
    # latent t from logits that depend on z_<t, so it cannot hand over all logits at once. It drives
    # the rollout itself instead: for t = 1..T it calls ``sample_step(logits_t, u_t)``, evaluates f
    # once at the rolled-out z and calls ``finish``. Only estimators that evaluate f once and
    # implement ``sample_step`` can do this (see ``sequential_support``).

    def sequential_support(self, parallel_rollouts: bool = False) -> str | None:
        """None when this estimator can run inside a sequential model, else why it cannot.
        ``parallel_rollouts``: the model can roll out several samples at once (then the
        score-function estimators with S independent samples, ``joint_rollouts``, can run)."""
        if self.multi_eval and not (self.joint_rollouts and parallel_rollouts):
            how = ("; this model rolls out one sample at a time" if self.joint_rollouts else "")
            return (f"it evaluates f {self.evals} times per example, but in a sequential model the "
                    f"later latents depend on the earlier samples of a single rollout{how}")
        def owner(attr):    # the class whose definition of attr this estimator uses
            return next(c for c in type(self).__mro__ if attr in c.__dict__)
        # a subclass that changes estimate() must also provide its own sample_step
        if owner("sample_step") is Estimator or owner("sample_step") is not owner("estimate"):
            return ("it does not implement the per-step sampling hook (sample_step) that "
                    "sequential models drive")
        return None

    def sample_step(self, logits_t: Tensor, u_t: Tensor) -> tuple[Tensor, Tensor]:
        """One step of a rollout. ``logits_t``: ``[B, K]`` (one categorical) or ``[B, n]``
        (Bernoulli), possibly depending on earlier samples; ``u_t``: this step's uniforms
        ``[N, B, ...]`` (the step's slice of ``noise_shape``). Returns ``z_t`` ``[R, B, ...]``
        (R = ``rollouts``; logits_t may also be ``[R, B, ...]``, one row per rollout) carrying the
        estimator's gradient path, and ``log q(z_t | z_<t)`` ``[R, B]`` of the discrete sample
        (differentiable only where the estimator needs it, i.e. REINFORCE)."""
        raise NotImplementedError

    def finish(self, fz: Tensor, logq: Tensor, baseline_input: Tensor) -> Estimate:
        """End of a rollout: ``fz`` ``[R, B]`` is f at the R rolled-out z (R = ``rollouts``),
        ``logq`` ``[R, B]`` the sum over steps of ``sample_step``'s log q, ``baseline_input``
        ``[B, *latent_shape]`` a function of x alone (not of z), for input-dependent baselines.
        Default: the pathwise estimate."""
        return Estimate(surrogate=fz.mean(0).mean(), loss=fz.detach().mean(0))

    # Score-function estimators whose S evaluations are S independent samples (REINFORCE with the
    # leave-one-out baseline, VIMCO) need nothing but S complete rollouts and their joint log q:
    # a model that can roll out R samples in parallel (``LatentModel.parallel_rollouts``) runs them
    # with ``rollouts`` = S, and ``sample_step`` then returns S rows.
    joint_rollouts: ClassVar[bool] = False

    # --- latents in layers (models/layered.py drives these; estimators/layered.py has the how) ---
    def layered_mode(self) -> str:
        """``rollout`` or ``local``: how this estimator runs on latents in layers."""
        return layered.mode(self)

    def layered_noise_shape(self, depth: int, batch_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Uniforms of one estimate on ``depth`` layers of ``batch_shape`` = (B, *shape) each."""
        return layered.noise_shape(self, depth, batch_shape)

    def layered_estimate(self, layers, u: Tensor) -> Estimate:
        """The estimate on a :class:`discograd.latents.Layers` view (estimators/layered.py)."""
        return layered.layered_estimate(self, layers, u)

    @property
    def rollouts(self) -> int:
        """Independent rollouts one estimate needs in a sequential model: S for the score-function
        estimators (``joint_rollouts``), else 1."""
        return self.samples if self.joint_rollouts else 1


class Pathwise(Estimator):
    """Single-evaluation estimators whose gradient reaches the logits through the sample itself
    (straight-through, Gumbel-softmax and their refinements). A subclass implements only
    :meth:`pathwise_sample`; the estimate, f at that sample, and the per-step hook of sequential
    models, that sample drawn one step at a time (later steps see it, gradient path included, as
    in Jang et al. 2016's stochastic binary networks), follow from it."""

    def pathwise_sample(self, logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(z ``[S, *logits.shape]`` as f sees it, carrying the estimator's gradient path; the
        exact discrete sample it stands for, whose log q a sequential model accumulates)."""
        raise NotImplementedError

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        z, _ = self.pathwise_sample(logits, u)
        fz = f(z)                                            # [S, B]
        return Estimate(surrogate=fz.mean(0).mean(), loss=fz.detach().mean(0))

    def sample_step(self, logits_t: Tensor, u_t: Tensor) -> tuple[Tensor, Tensor]:
        z, h = self.pathwise_sample(logits_t, u_t)
        return z, step_log_prob(logits_t.detach(), h, self.kind)


def smooth(f: Objective, tau: Tensor | float | None = None) -> Objective:
    """The continuous stand-in of ``f`` that control variates evaluate at relaxed points: ``f``
    itself, unless ``f`` provides ``smooth(z, tau)`` (a layered model's one-layer objective, whose
    later layers are then relaxed at ``tau``, or at their means when tau is None; see
    estimators/layered.py)."""
    g = getattr(f, "smooth", None)
    return f if g is None else (lambda z: g(z, tau))


class Tempered:
    """Mixin of estimators with a scheduled temperature (placed before Estimator in the bases).

    The schedule (a callable step -> tau, e.g. relaxed.TauSchedule) is the attribute named by
    ``schedule_attr``; ``tau`` is its current value as a Python float (logged as ``tau``, compared
    in tests) and ``tau_t`` a 0-dim buffer holding the same value, which the computations use. A
    tensor is an input of a compiled graph, whereas torch.compile specialises on a float attribute
    and would recompile at every new temperature of the schedule (train.compile)."""

    schedule_attr: ClassVar[str] = "schedule"

    def _init_schedule(self, schedule) -> None:
        setattr(self, self.schedule_attr, schedule)
        self.register_buffer("tau_t", torch.tensor(float(schedule(0)), dtype=torch.float64),
                             persistent=False)          # float64: exactly the Python float
        self.tau = schedule(0)

    def set_step(self, step: int) -> None:
        super().set_step(step)
        self.tau = getattr(self, self.schedule_attr)(step)

    def scalars(self) -> dict[str, float]:
        return {"tau": self.tau}

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        value = float(value)
        if value != getattr(self, "_tau", None):     # no device work while tau is unchanged
            self.tau_t.fill_(value)
        self._tau = value


REGISTRY: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    if not cls.name or cls.name in REGISTRY:
        raise RuntimeError(f"bad or duplicate estimator name {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def settings(cls: type[Estimator]) -> dict[str, tuple[type, object]]:
    """The estimator's settings: the keyword arguments of its constructor after (kind,
    latent_shape), as {name: (type, default)}. The constructor is where they are written, once."""
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for name, p in list(inspect.signature(cls.__init__).parameters.items())[3:]:
        if p.default is inspect.Parameter.empty or name not in hints:
            raise TypeError(f"{cls.__name__}.__init__: setting {name!r} needs a type annotation and "
                            "a default (they make the config schema)")
        out[name] = (hints[name], p.default)
    return out


@functools.cache          # one schema (and one Enum per Literal setting) per class
def config_schema(cls: type[Estimator]) -> type:
    """The structured-config schema of ``estimator=NAME``, derived from the class: ``name`` plus
    every constructor setting with its type and default. A ``Literal[...]`` setting becomes an
    Enum (Hydra then lists the accepted values); a dataclass setting (TauSchedule) a nested node."""
    fields = [("name", str, field(default=cls.name))]
    for name, (tp, default) in settings(cls).items():
        if typing.get_origin(tp) is typing.Literal:
            tp = enum.Enum(f"{cls.__name__}_{name}", {v: v for v in typing.get_args(tp)})
            default = tp[default]
        if dataclasses.is_dataclass(tp):
            fields.append((name, tp, field(default_factory=lambda d=default: dataclasses.replace(d))))
        else:
            fields.append((name, tp, field(default=default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def build(cls: type[Estimator], config: dict, kind: str, latent_shape,
          key_prefix: str = "estimator.") -> Estimator:
    """The one construction path from a config: ``config`` (plain values: enums as their names,
    nested nodes as dicts) -> constructor arguments. The constructor validates its own arguments
    and words its errors for a Python caller (``samples=0 is invalid ...``); here they get the
    config's key names on top (``estimator.samples=0 ...``, ``key_prefix``)."""
    kwargs = {}
    names = settings(cls)
    try:
        for name, (tp, _) in names.items():
            if name in config:
                value = config[name]
                kwargs[name] = tp(**value) if dataclasses.is_dataclass(tp) and isinstance(value, dict) \
                    else value
        return cls(kind, tuple(latent_shape), **kwargs)
    except ConfigError as e:
        raise ConfigError(with_keys(str(e), names, key_prefix)) from None


def with_keys(message: str, names, prefix: str) -> str:
    """``message`` with every setting of ``names`` written as a key (``samples=2`` ->
    ``estimator.samples=2``; also ``tau.init=``, ``samples >= 2``)."""
    if not prefix or not names:
        return message
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = rf"(?<![\w.'])({alternatives})(?=(\.\w+)?=| >= | <= )"
    return re.sub(pattern, lambda m: prefix + m.group(1), message)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(key: str, value: float) -> float:
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} is invalid: it must be a finite number > 0")
    return float(value)
