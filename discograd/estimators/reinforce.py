"""REINFORCE / score-function estimator (Williams 1992) with baselines.

Gradient of E_q[f(z)] (Williams 1992 eq. 10; Mohamed et al. 2020 eq. 13):
    g = (f(z) - b) * grad log q(z | logits) + grad f(z)    (the last term: f's own parameters)
with a baseline b that does not depend on z, which keeps g unbiased.

Baselines (``estimator.baseline``), for one sample (``estimator.samples=1``):
- ``none``: b = 0.
- ``ema``: b = exponential moving average of the minibatch mean of f (decay ``ema_decay``),
  computed from past steps only (Williams 1992; "moving average baseline").
- ``learned``: the input-dependent baseline of NVIL (Mnih & Gregor 2014, arXiv:1402.0030,
  section 3.3): b(x) = c + net(x), c the moving average above, net a one-hidden-layer MLP trained by
  regressing f on it, minimising E[(f(z) - b(x))^2]. Since the estimator never sees x, the net reads
  the (detached) logits, which are a deterministic function of x. Its regression loss is added to
  the surrogate; it only reaches the net's own parameters.

``normalize=true``: NVIL's variance normalization of the centred signal (estimators/normalize.py,
which says precisely what stays unbiased: the score part up to a known scale 1/s).

For S > 1 samples (``estimator.samples=S``) the baseline of sample s is the mean of f over the
other S - 1 samples (leave-one-out; Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE samples",
eq. 8), which is independent of z_s and keeps the estimator unbiased:
    g = 1/S sum_s (f(z_s) - 1/(S-1) sum_{j != s} f(z_j)) grad log q(z_s) + grad f(z_s).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .base import (ConfigError, Estimate, Estimator, Objective, hard_sample, log_prob, register,
                   step_log_prob)
from .normalize import NVIL_DECAY, SignalNormalizer

BASELINES = ("none", "ema", "learned")


@register
class Reinforce(SignalNormalizer, Estimator):
    name = "reinforce"
    unbiased = True
    joint_rollouts = True     # its S samples may be S complete rollouts of a sequential model

    def __init__(self, kind, latent_shape, samples: int = 1,
                 baseline: Literal["none", "ema", "learned"] = "none", ema_decay: float = 0.99,
                 baseline_hidden: int = 100, normalize: bool = False, norm_decay: float = NVIL_DECAY):
        super().__init__(kind, latent_shape, samples)
        self._init_normalizer(normalize, norm_decay)
        if baseline not in BASELINES:
            raise ConfigError(f"baseline={baseline!r} is invalid; accepted: {', '.join(BASELINES)}")
        if self.samples > 1 and baseline != "none":
            raise ConfigError(
                f"baseline={baseline} cannot be combined with samples={self.samples}: "
                "with samples > 1 the leave-one-out baseline is used; set baseline=none")
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ConfigError(f"ema_decay={ema_decay} is invalid: it must be in [0, 1)")
        self.baseline = baseline
        self.ema_decay = float(ema_decay)
        self.register_buffer("ema", torch.zeros(()))
        self.register_buffer("ema_count", torch.zeros((), dtype=torch.long))
        self.net = None
        if baseline == "learned":
            n_in = 1
            for d in self.latent_shape:
                n_in *= int(d)
            self.net = nn.Sequential(nn.Linear(n_in, int(baseline_hidden)), nn.Tanh(),
                                     nn.Linear(int(baseline_hidden), 1))
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    @property
    def adaptive(self) -> bool:
        return self.baseline != "none" or self.normalize   # the EMA, the net, the scale adapt

    def _update_ema(self, fz: Tensor) -> None:
        if not self.training:
            return
        m = fz.detach().mean()
        self.ema.copy_(torch.where(self.ema_count == 0, m,
                                   self.ema_decay * self.ema + (1 - self.ema_decay) * m))
        self.ema_count.add_(1)

    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        z = hard_sample(logits, self.kind, u)                # [S, B, ...], no gradient
        fz = f(z)                                            # [S, B]
        logq = log_prob(logits, z, self.kind)                # [S, B]
        return self.finish(fz, logq, logits)

    def sample_step(self, logits_t: Tensor, u_t: Tensor):
        """Sequential rollouts (e.g. recurrent hard attention). z_t is a constant (the hard sample
        carries no gradient, so nothing flows back through the chosen location); log q(z_t | z_<t)
        keeps its gradient to everything upstream of logits_t, including the earlier steps' state,
        because q(z) = prod_t q(z_t | z_<t) depends on those parameters too. Unbiased. With S
        samples, S rollouts side by side (``rollouts``): ``finish`` gives each the leave-one-out
        baseline of the other rollouts, whose joint log q is the sum over steps."""
        z = hard_sample(logits_t, self.kind, u_t[:self.rollouts])   # [R, B, ...], no gradient
        return z, step_log_prob(logits_t, z, self.kind)

    def finish(self, fz: Tensor, logq: Tensor, baseline_input: Tensor) -> Estimate:
        """surrogate = mean[(f - b).detach() * log q + f] (+ the learned baseline's regression
        loss); ``baseline_input`` (a function of x only, e.g. the logits) feeds the learned net."""
        stats = {}
        S = fz.shape[0]
        if S > 1:
            fd = fz.detach()
            b = (fd.sum(0, keepdim=True) - fd) / (S - 1)
        elif self.baseline == "none":
            b = torch.zeros_like(fz)
        else:
            b = self.ema.detach().clone().expand_as(fz)   # clone: the EMA is updated in place below
            if self.net is not None:
                b = b + self.net(baseline_input.detach().flatten(1)).squeeze(-1)   # [B] -> [1, B]
            self._update_ema(fz)
        signal = (fz.detach() - b.detach())
        direct = None
        if self.normalize:                      # estimators/normalize.py: s from earlier steps
            scale = self.signal_scale()
            self.update_signal_scale(signal)
            signal, direct = signal / scale, 1.0 / scale
        surrogate = (signal * logq + fz).mean(0).mean()
        if self.net is not None:
            baseline_loss = (fz.detach() - b).pow(2).mean()
            surrogate = surrogate + baseline_loss
            stats["baseline_loss"] = baseline_loss.detach()
        return Estimate(surrogate=surrogate, loss=fz.detach().mean(0), stats=stats, direct_scale=direct)
