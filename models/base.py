"""The interface every testbed model implements (DESIGN.md, "One training step").

A model turns a minibatch ``x`` into distribution parameters (``logits``) over its latents and
provides the objective ``f(z)`` that the estimator differentiates. It never sees the estimator.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import Tensor, nn


class LatentModel(nn.Module):
    """Base class of the testbeds.

    kind: ``bernoulli`` or ``categorical``; latent_shape: ``(n,)`` or ``(n, K)``.
    needs_data: False for models with no data set (the toy problem).
    sequential: True when later latents depend on earlier samples (refuses multi-eval estimators).
    main_metric: the metric name (test split) reported as the run's headline.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    sequential: ClassVar[bool] = False
    main_metric: ClassVar[str] = "loss"
    kind: str
    latent_shape: tuple[int, ...]

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def objective(self, x: Tensor, logits: Tensor) -> Callable[[Tensor], Tensor]:
        """f(z): samples [S, B, ...] -> per-example loss [S, B]."""
        raise NotImplementedError

    def extra_loss(self, x: Tensor, logits: Tensor) -> Tensor | None:
        """Per-example terms that depend on the distribution parameters directly ([B]), added to
        the surrogate and to the reported loss by the loop (e.g. an analytic KL); None if none."""
        return None

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters upstream of the logits (diagnostics group ``encoder``)."""
        raise NotImplementedError

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters inside f (diagnostics group ``decoder``)."""
        raise NotImplementedError

    def set_data_mean(self, mean: Tensor) -> None:
        """Data-dependent initialisation from the training data mean (default: nothing)."""

    @torch.no_grad()
    def evaluate(self, x: Tensor, samples: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-example evaluation metrics with hard (exact) samples: name -> [B] tensor."""
        raise NotImplementedError
