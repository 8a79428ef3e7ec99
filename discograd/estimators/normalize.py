"""Variance normalization of a score-function learning signal (NVIL: Mnih & Gregor 2014,
arXiv:1402.0030, section 2.3.2 and Algorithm 1; MuProp's "-VN", Gu et al. 2016 section 2.2).

The centred learning signal (f - baseline) is divided by s = max(1, sqrt(v)), v a running
estimate of the signal's variance over minibatches: v <- a v + (1 - a) var_batch(signal), a =
``norm_decay`` (NVIL's alpha, 0.8). Dividing by max(1, .) only ever shrinks the signal, so it
adapts the step size of the distribution's parameters while the signal is large and leaves it
alone as it vanishes.

What stays unbiased. Here v is updated *after* the step has used it (NVIL updates it with the
current minibatch first): s is fixed by earlier steps before this step's samples are drawn, so
the estimate is exactly unbiased for
    (1 / s) x (the gradient of E_q[f] through q)  +  (the gradient through f's own parameters and
    through f's direct dependence on the logits),
i.e. the score-function part is an unbiased estimate of the true one scaled by the known constant
1/s, and every other part is unbiased as it is. The estimator as a whole is therefore not an
unbiased estimator of the gradient (``properties()['unbiased']`` is false with normalization on);
tests/test_normalize.py proves the statement above by z-tests at a fixed s.

The terms the model adds itself. With an analytic KL (``model.kl=analytic``) the learning signal
holds only the reconstruction, and the KL's gradient reaches the logits outside the estimator.
Scaling the score part alone by 1/s would train E[log p(x|z)] / s - KL: a beta-VAE with beta = s
(s is about 45 for a linear VAE on MNIST, and the encoder collapses to the prior: 200 nats after
4000 steps, against 137 without normalization). So the Estimate carries ``direct_scale`` = 1/s,
and the caller scales its own logits terms by it (discograd.step.step_forward does): the whole
gradient that reaches the encoder is then (1/s) x the ELBO's, in expectation, as in NVIL, whose
learning signal holds the KL too (``model.kl=sampled`` gives exactly that form here).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ConfigError

NVIL_DECAY = 0.8       # NVIL Appendix A: "the smoothing factor alpha ... was set to 0.8"


class SignalNormalizer:
    """Mixin of an Estimator (placed before it in the bases): ``_init_normalizer(normalize,
    decay)`` in the constructor, then ``signal_scale()`` (a 0-dim tensor, 1 until a first
    minibatch has been seen) and ``update_signal_scale(signal)`` (training mode only) around the
    use of a signal."""

    def _init_normalizer(self, normalize: bool, decay: float) -> None:
        if not isinstance(normalize, bool):
            raise ConfigError(f"normalize={normalize!r} is invalid: it must be true or false")
        if not (isinstance(decay, (int, float)) and math.isfinite(decay) and 0.0 <= decay < 1.0):
            raise ConfigError(f"norm_decay={decay} is invalid: it must be in [0, 1)")
        self.normalize, self.norm_decay = bool(normalize), float(decay)
        # persistent (in checkpoints) only when used: checkpoints of runs without normalization
        # keep the keys they always had
        self.register_buffer("signal_var", torch.zeros(()), persistent=self.normalize)
        self.register_buffer("signal_count", torch.zeros((), dtype=torch.long),
                             persistent=self.normalize)

    def signal_scale(self) -> Tensor:
        """s = max(1, sqrt(v)) from the steps before this one (1 before any)."""
        return self.signal_var.detach().sqrt().clamp_min(1.0)

    def update_signal_scale(self, signal: Tensor) -> None:
        """v <- a v + (1 - a) var(signal) over the minibatch (the first minibatch: v = its var)."""
        if not self.training:
            return
        var = signal.detach().var(unbiased=False) if signal.numel() > 1 else signal.new_zeros(())
        a = self.norm_decay
        self.signal_var.copy_(torch.where(self.signal_count == 0, var, a * self.signal_var + (1 - a) * var))
        self.signal_count.add_(1)

    def properties(self) -> dict:
        out = super().properties()
        if self.normalize:
            out["unbiased"] = False         # only up to the scale 1/s of its score part
            out["normalize"] = True
        return out

    def scalars(self) -> dict[str, float]:
        out = super().scalars()
        if self.normalize:
            out["signal_scale"] = float(self.signal_scale())
        return out
