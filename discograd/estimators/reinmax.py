"""ReinMax: a second-order straight-through estimator (Liu, Dong, Liu, Yu & Gao 2023, "Bridging
Discrete and Backpropagation: Straight-Through and Beyond", NeurIPS, arXiv:2304.08612,
section 5 and Algorithm 2).

Categorical, per latent variable with logits theta and pi_0 = softmax(theta):
    D ~ Categorical(pi_0)                      (forward value: the exact one-hot sample)
    pi_1 = (D + softmax(theta / tau)) / 2
    pi_1 := softmax(stop_grad(ln pi_1 - theta) + theta)   (value pi_1, Jacobian of a softmax at pi_1)
    pi_2 = 2 pi_1 - pi_0 / 2
    z = D + pi_2 - stop_grad(pi_2)
so that, with g = df/dz at D, the gradient is  2 J(pi_1) g - J(pi_0) g / 2,
J(p) = diag(p) - p p^T. The paper derives this from Heun's method: the true gradient is
sum_ij pi_i pi_j (f(I_i) - f(I_j)) (...), and ReinMax replaces f(I_i) - f(I_j) by the trapezoid
(f'(I_i) + f'(I_j))^T (I_i - I_j) / 2, which is exact for quadratic f; at tau = 1 its expectation is
therefore the true gradient when f is quadratic in the one-hot sample (tested), while ST (the
forward-Euler step) is exact only for linear f. Here J(pi_1) is applied through the linearisation
pi_1 * (d - <pi_1, d>), d = theta - stop_grad(theta), which has the same value and gradient and
cannot produce log(0).

Bernoulli latents are the 2-class case: logits [0, phi], sample [1 - b, b], z = that z[..., 1].
Biased in general. Requires tau >= 1 (the paper, and its official code, refuse tau < 1): both
``estimator.tau.init`` and ``estimator.tau.min`` must be >= 1 (the schedule never goes below min).
The temperature is ReinMax's own: it is not shared with the Gumbel estimators in diagnostics.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import ConfigError, Pathwise, Tempered, hard_sample, register
from .relaxed import TauSchedule


def softmax_jacobian_surrogate(p: Tensor, theta: Tensor) -> Tensor:
    """Zero-valued tensor whose gradient w.r.t. ``theta`` is J(p)^T g = p*g - p <p, g> (the Jacobian
    of a softmax whose output is ``p``), for a detached ``p``."""
    d = theta - theta.detach()
    return p * (d - (p * d).sum(-1, keepdim=True))


def reinmax_sample(theta: Tensor, D: Tensor, tau: float | Tensor) -> Tensor:
    """ReinMax's straight-through one-hot: value D, gradient 2 J(pi_1) - J(pi_0) / 2."""
    pi0 = torch.softmax(theta, -1)
    pi1 = 0.5 * (D + torch.softmax(theta.detach() / tau, -1))
    return D + 2.0 * softmax_jacobian_surrogate(pi1, theta) - 0.5 * (pi0 - pi0.detach())


@register
class ReinMax(Tempered, Pathwise):
    name = "reinmax"
    schedule_attr = "tau_schedule"   # not `schedule`: diagnostics share that with gumbel's
    unbiased = False

    def __init__(self, kind, latent_shape, samples: int = 1,
                 tau: TauSchedule = TauSchedule(init=1.0, min=1.0, rate=0.0)):
        super().__init__(kind, latent_shape, samples)
        sched = tau
        for key in ("init", "min"):
            value = getattr(sched, key)
            if value < 1.0:
                raise ConfigError(
                    f"estimator.tau.{key}={value} is invalid for reinmax: ReinMax requires a "
                    "temperature >= 1 (Liu et al. 2023, section 5); e.g. tau.init=1.3 "
                    "tau.min=1.3")
        self._init_schedule(sched)

    def pathwise_sample(self, logits: Tensor, u: Tensor):
        D = hard_sample(logits, self.kind, u)                       # [S, B, ...]
        if self.kind == "bernoulli":
            theta = torch.stack([torch.zeros_like(logits), logits], -1)
            return reinmax_sample(theta, torch.stack([1 - D, D], -1), self.tau_t)[..., 1], D
        return reinmax_sample(logits, D, self.tau_t), D
