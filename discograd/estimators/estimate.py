"""What an estimator returns (:class:`Estimate`) and what it differentiates (``Objective``): a
module of its own, so that the base class and the layered driver (estimators/layered.py), which
both build Estimates, import it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

Objective = Callable[[Tensor], Tensor]


@dataclass
class Estimate:
    """What an estimator returns for one minibatch.

    surrogate: scalar; ``surrogate.backward()`` leaves the estimator's gradient in ``.grad``
        (plus the gradient of the estimator's own auxiliary objective, e.g. baseline regression,
        on the estimator's own parameters only).
    loss: ``[B]``, detached: the objective values the estimator saw, averaged over its samples.
    stats: extra detached scalars (on the device, never synchronised here), e.g. ``baseline_loss``.
    direct_scale: None, or a 0-dim tensor c: the caller's own terms that depend on the logits
        (a model's analytic KL) must enter its loss with their gradient through the logits
        multiplied by c, so that the whole gradient reaching the logits is scaled alike. Variance
        normalization (``normalize=true``) sets c = 1/s: it divides the score-function part by s,
        and an analytic KL left unscaled would then weigh s times more than the reconstruction (a
        beta-VAE with beta = s; on MNIST s is about 45, and the encoder collapses to the prior).
        :func:`discograd.step.step_forward` applies it; :func:`scale_grad` does it for a caller.
    """

    surrogate: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    direct_scale: Tensor | None = None


def scale_grad(t: Tensor, c: Tensor | float | None) -> Tensor:
    """``t`` with the same values and its gradient multiplied by ``c`` (``t`` itself for None)."""
    if c is None:
        return t
    d = t.detach()
    return d + (t - d) * c
