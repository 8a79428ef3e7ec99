"""Straight-through estimator (Bengio, Leonard & Courville 2013, arXiv:1308.3432, section 4).

Forward pass: an exact discrete sample z. Backward pass: the gradient of f at z is passed to the
distribution parameters as if z were its mean, i.e. dz/dlogits := d E[z]/dlogits.

- Bernoulli: z = b + p - stop_grad(p), b ~ Bernoulli(p), p = sigmoid(logits).
- Categorical: z = onehot + softmax(logits) - stop_grad(softmax(logits)).

Biased in general; exact when f is linear in z (then E[f(z)] = f(E[z]) and the chain rule through
the mean is the true gradient).
"""
from __future__ import annotations

from torch import Tensor

from .base import Estimate, Estimator, Objective, hard_sample, probs, register, step_log_prob


@register
class StraightThrough(Estimator):
    name = "st"
    unbiased = False

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        p = probs(logits, self.kind)
        z = hard_sample(logits, self.kind, u) + (p - p.detach())
        fz = f(z)                                            # [S, B]
        return Estimate(surrogate=fz.mean(0).mean(), loss=fz.detach().mean(0))

    def sample_step(self, logits_t: Tensor, u_t: Tensor):
        """Sequential rollouts: the same straight-through sample, one step at a time."""
        h = hard_sample(logits_t, self.kind, u_t[:1])
        p = probs(logits_t, self.kind)
        return h + (p - p.detach()), step_log_prob(logits_t.detach(), h, self.kind)
