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
    """

    surrogate: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
