"""Exact gradient by enumeration of every latent configuration (``estimator=exact``).

    E_q[f] = sum_z q(z | logits) f(z),   grad E_q[f] = sum_z [grad q(z) f(z) + q(z) grad f(z)],
differentiated by autograd through the weights q(z) (distribution parameters) and through f
(parameters inside f). This is the true gradient (``unbiased``, zero variance), usable as a training
baseline and as the diagnostics' reference on small models. Both kinds.

Feasible only for small latent spaces: at most ``MAX_CONFIGS`` (65536) configurations, i.e. 2^n for
n <= 16 Bernoulli units, K^n for n categorical variables of K classes; larger shapes are refused at
construction. ``evals`` = the number of configurations (every one is an evaluation of f). f is
called on chunks of configurations so that each call sees at most ``CHUNK_ROWS`` rows.
"""
from __future__ import annotations

from torch import Tensor

from .base import (MAX_CONFIGS, ConfigError, Estimate, Estimator, Objective, all_configs, log_prob,
                   n_configs, register)

CHUNK_ROWS = 1 << 15        # configurations x examples per call of f


@register
class Exact(Estimator):
    name = "exact"
    unbiased = True
    loss_quantity = "exact E[f]"

    def __init__(self, kind, latent_shape, samples: int = 1):
        super().__init__(kind, latent_shape, samples)
        if self.samples != 1:
            raise ConfigError(f"samples={samples} is invalid for exact: it enumerates every "
                              "latent configuration and draws no samples; leave samples=1")
        count = n_configs(kind, self.latent_shape)
        if count > MAX_CONFIGS:
            what = (f"2^{self.latent_shape[0]}" if kind == "bernoulli"
                    else f"{self.latent_shape[1]}^{self.latent_shape[0]}")
            raise ConfigError(
                f"estimator 'exact' cannot enumerate {kind} latents of shape {self.latent_shape}: "
                f"{what} configurations is more than the limit of {MAX_CONFIGS}; use a model with "
                "fewer latents (e.g. model.latent_dim=8) or another estimator")
        self.configs = int(count)

    @property
    def evals(self) -> int:
        return self.configs

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        configs = all_configs(self.kind, self.latent_shape, logits.device, logits.dtype)  # [M, ...]
        B = logits.shape[0]
        rows = max(1, CHUNK_ROWS // max(B, 1))
        surrogate = expectation = logits.new_zeros(B)
        ref = None
        for i in range(0, self.configs, rows):
            z = configs[i:i + rows].unsqueeze(1).expand(-1, B, *self.latent_shape)
            q = log_prob(logits, z, self.kind).exp()                 # [m, B]
            fz = f(z)                                                # [m, B]
            if ref is None:
                ref = fz[0].detach()          # f at the first configuration, per example
            # sum_z grad q(z) = 0, so subtracting the constant ref changes no gradient; it removes
            # the float cancellation (a constant f gives exactly zero)
            surrogate = surrogate + (q * (fz - ref)).sum(0)
            expectation = expectation + (q * fz).detach().sum(0)
        return Estimate(surrogate=surrogate.mean(), loss=expectation)
