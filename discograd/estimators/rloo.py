"""REINFORCE with the leave-one-out baseline, as a named estimator (``estimator=rloo``).

Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE samples, get a baseline for free!" (ICLR workshop),
eq. (8): with S >= 2 independent samples z_1..z_S,
    g = 1/S sum_s (f(z_s) - 1/(S-1) sum_{j != s} f(z_j)) grad log q(z_s) + grad f(z_s),
unbiased because the baseline of sample s does not depend on z_s. This is exactly
``reinforce`` with ``estimator.samples=S`` (estimators/reinforce.py); ``rloo`` is that preset with
S = 2 by default (the equal-cost partner of ARM/DisARM in Dong et al. 2020), and it refuses S < 2,
where there is no other sample to build the baseline from. Both kinds; ``evals = S``.
"""
from __future__ import annotations

from .base import ConfigError, register
from .reinforce import Reinforce


@register
class RLOO(Reinforce):
    name = "rloo"
    # layered models apply it per layer, like ARM and DisARM (the DisARM code's multi-layer
    # reinforce_loo); ``reinforce estimator.samples=S`` is the same estimator on S whole rollouts
    joint_rollouts = False

    def __init__(self, kind, latent_shape, samples: int = 2):
        super().__init__(kind, latent_shape, samples=samples, baseline="none")
        if self.samples < 2:
            raise ConfigError(
                f"samples={samples} is invalid for rloo: the leave-one-out baseline needs "
                "at least 2 samples (use samples=2 or more, or estimator=reinforce)")


