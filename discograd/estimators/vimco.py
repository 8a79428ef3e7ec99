"""VIMCO (Mnih & Rezende 2016, arXiv:1602.06725): the multi-sample bound with leave-one-out
per-sample baselines. Both latent kinds; unbiased for its objective, the S-sample bound.

Objective. VIMCO does not estimate the gradient of E_q[f] like the other estimators: it reads f as
a per-sample NEGATIVE log weight, f(z) = -log w(z) (for the VAE with ``model.objective=iwae``:
f = -log p(x|z) - log p(z) + log q(z|x)), and estimates the gradient of the S-sample bound
(Mnih & Rezende eq. (2); Burda et al. 2016 eq. (8))

    L = E_{z_1..z_S ~ q}[ log 1/S sum_s w_s ],      w_s = exp(-f(z_s)),

which it minimises as ``-L`` (the ``loss`` it reports is the per-example -L-hat, the multi-sample
bound's negative, in nats for the VAE). On a model whose f is not a negative log weight (the toy
problem) it minimises -log 1/S sum_s exp(-f(z_s)), a soft minimum of the S losses.

Gradient (Mnih & Rezende eq. (9)-(10)), L-hat = log 1/S sum_s w_s, w~_s = w_s / sum_j w_j:

    g = sum_s L-hat(s | -s) d log q(z_s) + sum_s w~_s d log w_s,
    L-hat(s | -s) = L-hat - log 1/S (sum_{j != s} w_j + w^_{-s}),
    w^_{-s} = exp(1/(S-1) sum_{j != s} log w_j)       (geometric mean of the others),

where d log w_s includes the direct dependence of f on the logits (log q inside f) and f's own
parameters (the decoder). The baseline of sample s does not depend on z_s, so g is unbiased for
d L. Everything is computed in log space (logsumexp), so large |f| (hundreds of nats) is safe.

Requires ``estimator.samples=S >= 2`` (ConfigError otherwise). Noise: ``(S, *logits.shape)``, the
same slices that draw the samples of every other estimator. Cost: ``evals = S``. The class
attribute ``objective = "multisample"`` declares that its target is the S-sample bound, not E_q[f]:
``experiment/validate.py`` refuses it on a VAE with ``model.objective=elbo`` and refuses every other
estimator on ``model.objective=iwae``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import (ConfigError, Estimate, Estimator, Objective, hard_sample, log_prob, register,
                   step_log_prob)


def multisample_bound(log_w: Tensor) -> Tensor:
    """log 1/S sum_s w_s over the leading axis: [S, B] -> [B]."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def leave_one_out_bounds(log_w: Tensor) -> Tensor:
    """[S, B]: log 1/S (sum_{j != s} w_j + w^_{-s}) with w^_{-s} the geometric mean of the other
    weights (Mnih & Rezende eq. (10)); vmap-safe (no indexing by data)."""
    S = log_w.shape[0]
    geo = (log_w.sum(0, keepdim=True) - log_w) / (S - 1)                       # [S, B]
    eye = torch.eye(S, dtype=torch.bool, device=log_w.device)[:, :, None]      # [s, j, 1]
    swapped = torch.where(eye, geo[:, None, :], log_w[None, :, :])             # [s, j, B]
    return torch.logsumexp(swapped, 1) - math.log(S)


@register
class Vimco(Estimator):
    name = "vimco"
    unbiased = True
    objective = "multisample"      # the target is the S-sample bound of -f, not E_q[f]
    joint_rollouts = True          # its S samples may be S complete rollouts of a sequential model
    loss_quantity = "the S-sample bound"

    def __init__(self, kind, latent_shape, samples: int = 5):
        if isinstance(samples, int) and not isinstance(samples, bool) and samples == 1:
            raise ConfigError("estimator 'vimco' needs samples >= 2 (its baselines leave one "
                              "of S samples out); got samples=1")
        super().__init__(kind, latent_shape, samples)

    def properties(self) -> dict:
        return {**super().properties(), "objective": self.objective}

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        z = hard_sample(logits, self.kind, u[:self.samples])   # [S, B, ...]
        return self.finish(f(z), log_prob(logits, z, self.kind), logits)

    def sample_step(self, logits_t: Tensor, u_t: Tensor):
        """Sequential models: S rollouts side by side; their joint log q, summed over the steps,
        takes the place of log q(z_s) (Mnih & Rezende 2016 train multi-layer belief networks so)."""
        z = hard_sample(logits_t, self.kind, u_t[:self.samples])   # [S, B, ...], no gradient
        return z, step_log_prob(logits_t, z, self.kind)

    def finish(self, fz: Tensor, logq: Tensor, baseline_input: Tensor) -> Estimate:
        """fz = -log w ``[S, B]`` at the S samples, logq their log q ``[S, B]``."""
        log_w = -fz                                            # [S, B]
        bound = multisample_bound(log_w)                       # [B], gradient via w~_s d log w_s
        lw = log_w.detach()
        signal = multisample_bound(lw)[None] - leave_one_out_bounds(lw)      # L-hat(s | -s)
        surrogate = -((signal * logq).sum(0) + bound).mean()
        return Estimate(surrogate=surrogate, loss=-bound.detach())
