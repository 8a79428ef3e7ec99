"""Gumbel-Rao: Rao-Blackwellised straight-through Gumbel-softmax (Paulus, Maddison & Krause 2021,
"Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator", ICLR,
arXiv:2010.04838, section 3, eq. (6)-(8), and Appendix on conditional Gumbel sampling).

ST-Gumbel's gradient is df/dD * d softmax((theta + G)/tau)/d theta at the hard sample
D = H(theta + G). Its conditional expectation given D has the same mean and no more variance; GR
estimates it with K = ``estimator.mc_samples`` draws of the noise from its conditional law given D:
    z = D + ybar - stop_grad(ybar),    ybar = 1/K sum_k softmax((theta + G_k)/tau),
    G_k ~ Gumbel(0, 1)^K conditioned on argmax(theta + G_k) = D   (G_k fixed w.r.t. theta).
Conditional sampling (top-down, Maddison et al. 2014): with i the sampled class and
E_j = -log v_j ~ Exp(1) independent,
    X_i = logsumexp(theta) - log E_i             (the maximum, ~ Gumbel(logsumexp theta)),
    X_j = -log(exp(-X_i) + exp(-theta_j) E_j)     (j != i; Gumbel(theta_j) truncated below X_i),
    G = X - theta.
Bernoulli (binary Concrete, y = sigmoid((phi + L)/tau), L ~ Logistic): L is drawn from its law
conditioned on the sign of phi + L by inverting the logistic CDF on (sigmoid(-phi), 1) or
(0, sigmoid(-phi)), in log space.

Properties (tested): with K = 1, (D, G_1) has the law of (D, G) of ST-Gumbel, so the estimator
equals st_gumbel in distribution; for any K its mean equals st_gumbel's; its variance decreases
with K. Biased (as ST-Gumbel). Both kinds. f is evaluated once per sample at the exact D:
``evals = samples``.

Noise layout (``noise_shape``): ``samples * (1 + mc_samples)`` slices of uniforms shaped like the
logits; slices [0, S) draw the discrete samples (shared with the other estimators: common random
numbers), slice S + s*K + k is conditional draw k of sample s. For a categorical variable one
slice holds K uniforms: the one at the sampled class gives E_i, the others the E_j.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ConfigError, hard_sample, register
from .relaxed import TauSchedule, _Relaxed


def conditional_gumbel(logits: Tensor, D: Tensor, v: Tensor) -> Tensor:
    """Perturbed logits X = logits + G with G ~ Gumbel(0,1) given argmax X = one-hot ``D``.

    logits [..., K] (detached), D [..., K] broadcastable against v [..., K] uniforms.
    """
    log_e = torch.log(-torch.log(v))                                  # log E, E ~ Exp(1)
    top = torch.logsumexp(logits, -1, keepdim=True) - (D * log_e).sum(-1, keepdim=True)
    others = -torch.logaddexp(-top, log_e - logits)
    return torch.where(D > 0, top, others)


def conditional_logistic(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """L ~ Logistic(0, 1) given 1[logits + L > 0] = ``b``, from uniforms ``v``: L = logit(u') with
    u' = sigmoid(-phi) + v sigmoid(phi) if b = 1, u' = v sigmoid(-phi) if b = 0."""
    lp, ln = F.logsigmoid(logits), F.logsigmoid(-logits)              # log s(phi), log s(-phi)
    logv, log1mv = torch.log(v), torch.log1p(-v)
    one = torch.logaddexp(ln, logv + lp) - (log1mv + lp)
    zero = (logv + ln) - torch.logaddexp(lp, log1mv + ln)
    return torch.where(b > 0, one, zero)


@register
class GumbelRao(_Relaxed):
    name = "gumbel_rao"
    relaxed = False            # f sees the exact hard sample

    def __init__(self, kind, latent_shape, samples: int = 1, tau: TauSchedule = TauSchedule(),
                 mc_samples: int = 10):
        super().__init__(kind, latent_shape, samples, tau)
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ConfigError(f"mc_samples={mc_samples} is invalid: it must be an integer >= 1")
        self.mc_samples = int(mc_samples)


    def noise_shape(self, logits_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.samples * (1 + self.mc_samples), *logits_shape)

    def pathwise_sample(self, logits: Tensor, u: Tensor):
        S, K = self.samples, self.mc_samples
        ld = logits.detach()
        D = hard_sample(logits, self.kind, u[:S])                     # [S, B, ...]
        v = u[S:].reshape(S, K, *logits.shape)                        # [S, K, B, ...]
        if self.kind == "bernoulli":
            noise = conditional_logistic(ld, D.unsqueeze(1), v)
            y = torch.sigmoid((logits + noise) / self.tau_t)
        else:
            noise = conditional_gumbel(ld, D.unsqueeze(1), v) - ld
            y = torch.softmax((logits + noise) / self.tau_t, -1)
        ybar = y.mean(1)                                              # [S, B, ...]
        return D + (ybar - ybar.detach()), D
