"""The interface every testbed model implements (docs/design.md, "One training step").

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
    sequential: True when later latents depend on earlier samples; such a model drives the
        sampling itself in :meth:`sequential_estimate` and says which estimators it can take in
        :meth:`estimator_support` (a single rollout refuses multi-evaluation estimators; the
        layered models of models/layered.py take every estimator).
    needs_labels: True for supervised models: the harness then appends the label to every input
        row (:func:`with_labels`; the model splits it off with :func:`split_labels`), so that every
        path that hands ``x`` to the model (training step, evaluation, diagnostic probe) carries it.
    main_metric: the metric name (test split) reported as the run's headline.
    select_metric(samples): the validation metric that picks the best step (``eval.select=auto``).

    From a config (models/registry.py: ``model=NAME`` is the registered class named NAME):
    schema: the dataclass of the keys, types and defaults of ``model=NAME``.
    check_config / check_objective: refuse, before any work, what the schema cannot.
    from_config: the one construction path from config nodes ``model`` and ``data``.
    checks_batch_size: the harness refuses a ``train.batch_size`` larger than the training split
        (models that need data only).
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    sequential: ClassVar[bool] = False
    # sequential models that roll out several samples side by side (the score-function estimators
    # with S samples then run on S whole rollouts: Estimator.joint_rollouts)
    parallel_rollouts: ClassVar[bool] = False
    main_metric: ClassVar[str] = "loss"
    schema: ClassVar[type | None] = None
    checks_batch_size: ClassVar[bool] = True

    @classmethod
    def check_config(cls, model_cfg, data_cfg) -> None:
        """Raise ConfigError for the first value of config node ``model`` (or of its pairing with
        ``data``) that the schema cannot refuse: the message names ``model.KEY=value`` and what is
        accepted. Called before anything is built (default: nothing to check)."""

    @classmethod
    def check_objective(cls, model_cfg, estimator: type) -> None:
        """Raise ConfigError when the estimator class's target (``estimator.objective``: "mean",
        E_q[f], or "multisample", the S-sample bound) is not what this model trains (default:
        any)."""

    @classmethod
    def from_config(cls, model_cfg, data_cfg) -> LatentModel:
        """The model of config nodes ``model`` and ``data`` (DictConfigs of a composed config that
        passed :meth:`check_config`)."""
        raise NotImplementedError

    def estimator_support(self, estimator) -> str | None:
        """None when ``estimator`` can train this model, else why not (sequential models)."""
        return estimator.sequential_support(self.parallel_rollouts) if self.sequential else None

    def evals_per_step(self, estimator) -> int:
        """Evaluations of f per example per training step (the cost logged as ``evals``)."""
        return estimator.evals

    def estimator_mode(self, estimator) -> dict:
        """How this model applies the estimator (summary.json, next to its properties)."""
        return {}

    def noise_shape(self, estimator, batch: int) -> tuple[int, ...]:
        """Shape of the uniforms of one training estimate for a minibatch of ``batch`` inputs."""
        return estimator.noise_shape((batch, *self.latent_shape))

    def select_metric(self, samples: int) -> str:
        return self.main_metric

    def metric_names(self, samples: int) -> tuple[str, ...]:
        """The metrics :meth:`evaluate` returns with ``samples`` (what ``eval.select`` accepts)."""
        return (self.main_metric,)
    kind: str
    latent_shape: tuple[int, ...]

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def objective(self, x: Tensor, logits: Tensor) -> Callable[[Tensor], Tensor]:
        """f(z): samples [S, B, ...] -> per-example loss [S, B]."""
        raise NotImplementedError

    def sequential_estimate(self, x: Tensor, estimator, u: Tensor | None = None):
        """Sequential models only: roll the latents out step by step with
        ``estimator.sample_step`` (u: uniforms of ``estimator.noise_shape((B, *latent_shape))``,
        drawn if None), evaluate f once, return ``estimator.finish(...)`` (an Estimate)."""
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


def with_labels(x: Tensor, y: Tensor) -> Tensor:
    """Inputs of a supervised model: ``[B, D + 1]``, the integer label as the last column."""
    return torch.cat([x, y.to(x.dtype).unsqueeze(-1)], -1)


def split_labels(x: Tensor) -> tuple[Tensor, Tensor]:
    """(pixels ``[B, D]``, labels int64 ``[B]``) from :func:`with_labels` inputs."""
    return x[..., :-1], x[..., -1].round().long()


def higher_is_better(metric: str) -> bool:
    """Direction of a logged metric: bounds, ELBOs and accuracies grow, losses shrink."""
    name = metric.split("/")[-1]
    return name.startswith(("bound_", "elbo", "accuracy"))
