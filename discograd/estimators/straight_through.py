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

from .base import Pathwise, hard_sample, probs, register


@register
class StraightThrough(Pathwise):
    name = "st"
    unbiased = False

    def pathwise_sample(self, logits: Tensor, u: Tensor):
        h = hard_sample(logits, self.kind, u)
        p = probs(logits, self.kind)
        return h + (p - p.detach()), h
