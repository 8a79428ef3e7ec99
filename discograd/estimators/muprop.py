"""MuProp: REINFORCE with a first-order Taylor control variate (Gu, Levine, Sutskever & Mnih 2016,
arXiv:1511.05176, section 3, eq. (5) and Algorithm 1).

With the mean-field point mu = E_q[z] (sigmoid(logits), or softmax(logits) per categorical
variable) and the linearisation h(z) = f(mu) + f'(mu)^T (z - mu), whose expectation is f(mu) and
whose score-function term has expectation f'(mu)^T d mu / d logits:
    g = 1/S sum_s [f(z_s) - h(z_s)] grad log q(z_s) + f'(mu)^T grad mu + grad_theta f(z_s).
Unbiased for any f (the control variate's correction term is added back analytically). Both kinds.
Parameters inside f get the plain gradient of f at the samples (the control variate is used for
the distribution parameters only, as in the paper). ``normalize=true``: the variance normalization
of NVIL applied to the residual signal, MuProp's "-VN" (section 2.2; estimators/normalize.py says
what stays unbiased).

Cost (``evals``): f at each of the S samples (one stacked call), plus f at the mean field and its
gradient there (one forward and one vector-Jacobian product, computed with ``torch.func.vjp`` so
that it composes with the diagnostics' vmap/grad); the backward pass is counted as one evaluation:
``evals = S + 2``.

f(mu) and f'(mu) are those of ``smooth(f)``: f itself, or, for one layer of a layered model, f
with the later layers at their means (MuProp's mean-field pass; estimators/layered.py). The
control variate is linear in z, so any choice keeps the estimator unbiased.
"""
from __future__ import annotations

from torch import Tensor
from torch.func import vjp

from .base import Estimate, Estimator, Objective, hard_sample, log_prob, probs, register, smooth
from .normalize import NVIL_DECAY, SignalNormalizer


@register
class MuProp(SignalNormalizer, Estimator):
    name = "muprop"
    unbiased = True

    def __init__(self, kind: str, latent_shape: tuple[int, ...], samples: int = 1,
                 normalize: bool = False, norm_decay: float = NVIL_DECAY):
        super().__init__(kind, latent_shape, samples)
        self._init_normalizer(normalize, norm_decay)

    @property
    def adaptive(self) -> bool:
        return self.normalize

    @property
    def evals(self) -> int:
        return self.samples + 2

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        z = hard_sample(logits, self.kind, u)                  # [S, B, ...]
        fz = f(z)                                              # [S, B]
        mu = probs(logits, self.kind)                          # [B, ...], differentiable
        m = mu.detach().unsqueeze(0)                           # [1, B, ...]
        f_mu, pullback = vjp(smooth(f), m)                     # f(mu): [1, B]
        grad_mu, = pullback(f_mu.new_ones(f_mu.shape))         # f'(mu) per example: [1, B, ...]
        f_mu, grad_mu = f_mu.detach(), grad_mu.detach()
        taylor = f_mu + (grad_mu * (z - m)).flatten(2).sum(-1)  # h(z_s): [S, B]
        signal = fz.detach() - taylor
        logq = log_prob(logits, z, self.kind)
        analytic = (grad_mu[0] * mu).flatten(1).sum(-1)        # gradient f'(mu)^T d mu: [B]
        direct = None
        if self.normalize:
            # MuProp-VN (Gu et al. 2016 section 2.2): the residual signal and the analytic term
            # together are the gradient through q, so both are divided by the same s
            scale = self.signal_scale()
            self.update_signal_scale(signal)
            signal, analytic, direct = signal / scale, analytic / scale, 1.0 / scale
        surrogate = (signal * logq + fz).mean(0).mean() + analytic.mean()
        return Estimate(surrogate=surrogate, loss=fz.detach().mean(0), direct_scale=direct)
