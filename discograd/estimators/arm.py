"""Antithetic estimators for Bernoulli latents: ARM and DisARM.

Both draw one antithetic pair per sample from a single uniform vector u ~ U(0, 1)^n:
    b  = 1[u > sigmoid(-phi)]  (= hard_sample(phi, u): 1[phi + Logistic(u) > 0], shared with the
                                other estimators through common random numbers)
    b~ = 1[u < sigmoid(phi)]   (= 1[phi - Logistic(u) > 0], the antithetic sample; b~ ~ b in law)
and evaluate f at both (one call to f on the stacked pair), so ``evals = 2 * samples``.

- ``arm``: Augment-REINFORCE-Merge, Yin & Zhou 2019 (arXiv:1807.11143), Theorem 1 / eq. (5):
      d/dphi E[f(b)] = E_u[(f(b) - f(b~)) (u - 1/2)].
- ``disarm``: Dong, Mnih & Tucker 2020 (arXiv:2006.10680), eq. (6) (univariate) and section 4
  (multivariate, applied per coordinate): DisARM is ARM with u integrated out given (b, b~),
      g_i = 1/2 (f(b) - f(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigmoid(|phi_i|),
  so its variance is never larger than ARM's (Rao-Blackwellisation).

Both are unbiased. Parameters inside f get the unbiased gradient of (f(b) + f(b~)) / 2.
Bernoulli only: for categorical latents use ``arsm`` (estimators/arsm.py, the swap-merge
generalisation of ARM); a categorical model is refused here.
``estimator.samples`` is the number of antithetic pairs; the gradient is averaged over the pairs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimate, Estimator, Objective, logistic_noise, register


class _Antithetic(Estimator):
    kinds = ("bernoulli",)
    unbiased = True

    @property
    def evals(self) -> int:
        return 2 * self.samples

    def _coefficient(self, logits: Tensor, u: Tensor, b: Tensor, b_anti: Tensor) -> Tensor:
        """Per-coordinate weight w with gradient estimate (f(b) - f(b~)) * w."""
        raise NotImplementedError

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        ld = logits.detach()
        noise = logistic_noise(u)                                  # [S, B, n]
        b = (ld + noise > 0).to(ld.dtype)                          # = hard_sample(logits, u)
        b_anti = (ld - noise > 0).to(ld.dtype)                     # 1[u < sigmoid(phi)]
        S = u.shape[0]
        fz = f(torch.cat([b, b_anti], 0))                          # [2S, B], one call
        fb, fa = fz[:S], fz[S:]
        weight = self._coefficient(ld, u, b, b_anti)               # [S, B, n], no gradient
        signal = (fb - fa).detach().unsqueeze(-1) * weight
        surrogate = ((signal * logits).sum(-1) + 0.5 * (fb + fa)).mean(0).mean()
        return Estimate(surrogate=surrogate, loss=(0.5 * (fb + fa)).detach().mean(0))


@register
class ARM(_Antithetic):
    name = "arm"

    def _coefficient(self, logits, u, b, b_anti):
        return u - 0.5


@register
class DisARM(_Antithetic):
    name = "disarm"

    def _coefficient(self, logits, u, b, b_anti):
        sign = 1.0 - 2.0 * b_anti                                  # (-1)^{b~}
        return 0.5 * sign * (b != b_anti).to(logits.dtype) * torch.sigmoid(logits.abs())
