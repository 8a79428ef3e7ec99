"""The probe as a function of a user's own model: :func:`probe` measures, at a frozen state, the
variance, squared bias, SNR and cosine of several estimators' gradients against a reference
(exact by enumeration where feasible, else an unbiased Monte Carlo reference), and returns the
statistics of grad_stats.csv with their standard errors as a pandas DataFrame. The runner's
diagnostics use the same :class:`~.probe.Probe` (docs/api.md, "The probe").
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from discograd.estimators import latents_of
from .probe import Probe
from .reference import AUTO_M, parse_reference
from .stats import GRAD_STATS_HEADER

Objective = Callable[[Tensor], Tensor]


class Problem(nn.Module):
    """A user's model as the probe reads it. ``module`` holds every parameter (the probe
    differentiates with respect to all of them); ``logits(x)`` returns the logits ``[B, n]``
    (Bernoulli) or ``[B, n, K]`` (categorical); ``objective(x, logits)`` returns f, mapping
    latents ``[S, B, ...]`` to per-example losses ``[S, B]`` (it may read ``logits`` directly,
    e.g. for a sampled KL); ``extra(x, logits)`` (optional) per-example terms ``[B]`` whose
    gradient is exact (an analytic KL). Parameters are grouped into ``encoder`` (those the
    logits depend on, found by autograd at ``x``, or the ``encoder`` list) and ``decoder`` (the
    rest)."""

    name = "problem"
    sequential = False

    def __init__(self, module: nn.Module, logits: Callable[[Tensor], Tensor],
                 objective: Callable[[Tensor, Tensor], Objective], x: Tensor,
                 extra: Callable[[Tensor, Tensor], Tensor] | None = None,
                 encoder: list[nn.Parameter] | None = None):
        super().__init__()
        self.module = module
        self._logits, self._objective, self._extra = logits, objective, extra
        with torch.enable_grad():
            lg = logits(x)
        self.kind, self.latent_shape = latents_of(lg)
        params = [p for p in module.parameters() if p.requires_grad]
        if encoder is None:
            with torch.enable_grad():
                grads = torch.autograd.grad(lg.sum(), params, allow_unused=True) if params else []
            encoder = [p for p, g in zip(params, grads) if g is not None]
        ids = {id(p) for p in encoder}
        self._encoder = [p for p in params if id(p) in ids]
        self._decoder = [p for p in params if id(p) not in ids]

    def logits(self, x: Tensor) -> Tensor:
        return self._logits(x)

    def objective(self, x: Tensor, logits: Tensor) -> Objective:
        return self._objective(x, logits)

    def extra_loss(self, x: Tensor, logits: Tensor) -> Tensor | None:
        return None if self._extra is None else self._extra(x, logits)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return self._encoder

    def decoder_parameters(self) -> list[nn.Parameter]:
        return self._decoder


def probe(module: nn.Module, logits: Callable[[Tensor], Tensor],
          objective: Callable[[Tensor, Tensor], Objective], estimators: list, x: Tensor, *,
          samples: int = 100, reference: str = "auto", extra=None, encoder=None, seed: int = 0):
    """Measure ``estimators`` on a user's model at its current parameters (frozen: nothing is
    updated) and minibatch ``x``; returns a pandas DataFrame with one row per estimator and
    parameter group (``encoder``, ``decoder``, ``all``) and the columns of grad_stats.csv
    (README, "Gradient diagnostics": variance, bias2 and its standard error, snr, cosine with
    its interval, ...).

    ``estimators``: names (built with their default settings, ``discograd.make``), Estimator
    instances, or (label, instance) pairs (measured as they are, with their state: ``aux=given``;
    the label names their rows). ``samples``: K estimates
    per estimator (>= 2; the standard errors use 10 jackknife groups of them). ``reference``:
    ``auto`` (exact by enumeration when the latent space has at most 2^16 configurations, else
    the most precise unbiased Monte Carlo reference for 1000 f-evaluations per example),
    ``exact``, or ``mc:NAME:M``. ``seed``: the probe's own random stream (the global one is not
    touched). See :class:`Problem` for ``logits``, ``objective``, ``extra`` and ``encoder``."""
    import pandas as pd
    problem = Problem(module, logits, objective, x, extra, encoder)
    ref = parse_reference(reference, problem, AUTO_M)
    was = module.training
    try:
        p = Probe(problem, None, list(estimators), ref, int(samples), x, seed=seed)
        rows = p.run(0)
    finally:
        module.train(was)
    return pd.DataFrame(rows, columns=GRAD_STATS_HEADER).drop(columns=["step"])
