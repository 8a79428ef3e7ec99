"""One training step's forward pass, the unit that the training loop, the replica group and the
gradient probe share (docs/design.md, "One training step").

    batch x -> model.logits(x) -> estimator(logits, f, u) -> + model.extra_loss -> surrogate

The estimator never sees the model and the model never sees the estimator: this module is the one
place where the two meet. :class:`Step` wraps the pair as one ``nn.Module``, so that
``torch.func.functional_call`` can swap the tensors of both at once (the probe's per-estimate
gradients, the replica group's stacked parameters).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from discograd.estimators.estimate import scale_grad


def step_forward(model, estimator, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, dict]:
    """(surrogate, per-example loss [B], stats) of one minibatch of a non-sequential model.

    ``surrogate.backward()`` gives the estimator's gradient of the mean over the batch of E_q[f]
    plus the gradient of the model's direct terms (e.g. the analytic KL; through the logits
    multiplied by ``Estimate.direct_scale`` when the estimator sets one); ``loss`` is detached;
    ``u`` holds the estimator's uniforms (``model.noise_shape(estimator, B)``)."""
    logits = model.logits(x)
    est = estimator(logits, model.objective(x, logits), u=u)
    # the model's direct terms (the analytic KL) reach the logits scaled as the estimator asks
    # (1/s under variance normalization: Estimate.direct_scale)
    extra = model.extra_loss(x, scale_grad(logits, est.direct_scale))
    surrogate, loss = est.surrogate, est.loss
    if extra is not None:
        surrogate = surrogate + extra.mean()
        loss = loss + extra.detach()
    return surrogate, loss, est.stats


class Step(nn.Module):
    """Model + estimator as one module; ``forward(x, u)`` is :func:`step_forward`. Its parameters
    and buffers are the model's (``model.*``) and the estimator's (``estimator.*``)."""

    def __init__(self, model: nn.Module, estimator: nn.Module):
        super().__init__()
        self.model, self.estimator = model, estimator

    def forward(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, dict]:
        return step_forward(self.model, self.estimator, x, u)


def finite(tensors: list[Tensor]) -> Tensor:
    """0-dim bool tensor (no host sync): every element of every tensor is finite. The largest
    absolute value per tensor (ord=inf) cannot overflow, unlike a 2-norm of large finite values."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors, ord=math.inf))).all()
