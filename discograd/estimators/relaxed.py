"""Relaxation estimators: Gumbel-softmax / Concrete and its straight-through variant.

- ``gumbel``: Jang, Gu & Poole 2016 (arXiv:1611.01144) eq. (1) and Maddison, Mnih & Teh 2016
  (arXiv:1611.00712) eq. (10) / binary Concrete section 3.3. Categorical:
  y = softmax((logits + g) / tau), g ~ Gumbel(0, 1). Bernoulli (binary Concrete):
  y = sigmoid((logits + L) / tau), L = log u - log(1 - u) ~ Logistic(0, 1). f is evaluated at the
  relaxed y and differentiated by reparameterisation. Biased for the discrete objective; the bias
  vanishes as tau -> 0 while the variance grows.
- ``st_gumbel``: Jang et al. 2016 section 2.2 ("Straight-Through Gumbel-Softmax"): the forward pass
  uses the hard sample H(y) (argmax one-hot, or 1[y > 1/2]), which is an exact sample of q because
  argmax(logits + g) is (Gumbel-max); the backward pass uses the gradient of the relaxed y.

Temperature schedule (docs/design.md contract, Jang et al. 2016 section 4.1):
tau(step) = max(tau_min, tau_init * exp(-rate * step')), step' = step rounded down to a multiple of
``every`` (tau is recomputed every ``every`` steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

# the sampler itself lives with the latents: estimators/layered.py relaxes later layers with it
from discograd.latents import relaxed_sample
from .base import ConfigError, Pathwise, Tempered, check_positive, is_number, register


@dataclass
class TauSchedule:
    """tau(step) = max(min, init * exp(-rate * step')), step' = step rounded down to a multiple
    of ``every``. Also the schema of the ``estimator.tau`` config node (its defaults, its types)."""

    init: float = 1.0
    min: float = 0.5
    rate: float = 1e-4
    every: int = 1000

    def __post_init__(self):
        check_positive("tau.init", self.init)
        check_positive("tau.min", self.min)
        if not (is_number(self.rate) and math.isfinite(self.rate) and self.rate >= 0):
            raise ConfigError(f"tau.rate={self.rate} is invalid: it must be a finite number >= 0")
        if not (isinstance(self.every, int) and not isinstance(self.every, bool) and self.every >= 1):
            raise ConfigError(f"tau.every={self.every} is invalid: it must be an integer >= 1")

    def __call__(self, step: int) -> float:
        anchor = (int(step) // int(self.every)) * int(self.every)
        return max(self.min, self.init * math.exp(-self.rate * anchor))


class _Relaxed(Tempered, Pathwise):
    relaxed = True

    def __init__(self, kind, latent_shape, samples: int = 1, tau: TauSchedule = TauSchedule()):
        super().__init__(kind, latent_shape, samples)
        self._init_schedule(tau)



@register
class GumbelSoftmax(_Relaxed):
    loss_quantity = "f at relaxed samples"
    name = "gumbel"

    def pathwise_sample(self, logits: Tensor, u: Tensor):
        """The relaxed sample (in a sequential model later steps see relaxed earlier ones)."""
        return relaxed_sample(logits, self.kind, u, self.tau_t)


@register
class STGumbelSoftmax(_Relaxed):
    name = "st_gumbel"
    relaxed = False  # f sees exact hard samples in the forward pass

    def pathwise_sample(self, logits: Tensor, u: Tensor):
        """Hard sample forward, relaxed gradient backward."""
        y, h = relaxed_sample(logits, self.kind, u, self.tau_t)
        return h + (y - y.detach()), h
