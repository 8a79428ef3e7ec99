"""Slope-annealed straight-through ("Annealed ST" in Jang, Gu & Poole 2016, Table 1), after the
slope annealing trick of Chung, Ahn & Bengio 2017 (arXiv:1609.01704, section 3.3).

Forward pass: an exact discrete sample, as ``st``. Backward pass: the gradient of f at the sample
is passed to the logits through the mean of a *sharpened* distribution,

    z = h + p_a - stop_grad(p_a),    p_a = sigmoid(a * logits)  (Bernoulli)  or  softmax(a * logits),

with the slope a = min(slope_max, 1 + slope_rate * step) rising during training: the surrogate
gradient approaches the (zero almost everywhere) gradient of the hard threshold, trading the ST
bias of a flat sigmoid for variance. With slope_rate = 0 it is ``st`` exactly. Biased.

The defaults (slope_rate 1e-4 per step, slope_max 5) are ours: Chung et al. raise the slope per
epoch; convert their rate with the number of steps per epoch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ConfigError, Pathwise, hard_sample, probs, register


@register
class AnnealedST(Pathwise):
    name = "annealed_st"
    unbiased = False

    def __init__(self, kind, latent_shape, samples: int = 1, slope_rate: float = 1e-4,
                 slope_max: float = 5.0):
        super().__init__(kind, latent_shape, samples)
        if not (math.isfinite(slope_rate) and slope_rate >= 0):
            raise ConfigError(f"slope_rate={slope_rate} is invalid: it must be a finite "
                              "number >= 0 (0: the slope stays 1, plain st)")
        if not (math.isfinite(slope_max) and slope_max >= 1):
            raise ConfigError(f"slope_max={slope_max} is invalid: it must be a finite "
                              "number >= 1")
        self.slope_rate, self.slope_max = float(slope_rate), float(slope_max)
        # a buffer, not a float attribute: a compiled step takes it as an input (train.compile)
        self.register_buffer("slope_t", torch.ones((), dtype=torch.float64), persistent=False)

    def slope(self, step: int) -> float:
        return min(self.slope_max, 1.0 + self.slope_rate * step)

    def set_step(self, step: int) -> None:
        super().set_step(step)
        self.slope_t.fill_(self.slope(step))

    def scalars(self) -> dict[str, float]:
        return {"slope": self.slope(self.step)}

    def pathwise_sample(self, logits: Tensor, u: Tensor):
        p = probs(logits * self.slope_t.to(logits.dtype), self.kind)
        h = hard_sample(logits, self.kind, u)
        return h + (p - p.detach()), h
