"""Gapped straight-through, GST-1.0 (Fan, Chi, Rudnicky & Ramadge 2022, "Training Discrete Deep
Generative Models via Gapped Straight-Through Estimator", ICML, arXiv:2206.07235, section 4).

A cheap replacement for Gumbel-Rao (which averages the ST-Gumbel gradient over random Gumbel
perturbations consistent with the sample): GST builds *deterministic* perturbed logits theta' that (1) are consistent with the one-hot sample D (argmax theta' = the sampled class i) and
(2) keep a gap: the sampled class is raised to the current maximum logit, every other class is
lowered to at most ``gap`` below it, and nothing else moves:
    theta'_i = max_k theta_k,    theta'_j = min(theta_j, max_k theta_k - gap)  (j != i),
    z = D + y - stop_grad(y),    y = softmax((theta + stop_grad(theta' - theta)) / tau).
The gradient is (1/tau) J(y)^T df/dz. Biased. Categorical only: the paper defines GST for
categorical variables, so a Bernoulli model is refused (use a 2-class categorical model).
``estimator.gap`` (default 1.0, the paper's GST-1.0) must be > 0; ``estimator.tau`` is the usual
schedule (shared with the Gumbel estimators in diagnostics).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import check_positive, hard_sample, register
from .relaxed import TauSchedule, _Relaxed


def gapped_logits(logits: Tensor, D: Tensor, gap: float) -> Tensor:
    """theta' for one-hot samples ``D`` [S, ..., K] (detached)."""
    ld = logits.detach()
    top = ld.amax(-1, keepdim=True)
    return torch.where(D > 0, top, torch.minimum(ld, top - gap))


@register
class GST(_Relaxed):
    name = "gst"
    kinds = ("categorical",)
    relaxed = False            # f sees the exact one-hot sample

    def __init__(self, kind, latent_shape, samples: int = 1, tau: TauSchedule = TauSchedule(),
                 gap: float = 1.0):
        super().__init__(kind, latent_shape, samples, tau)
        self.gap = check_positive("gap", gap)


    def pathwise_sample(self, logits: Tensor, u: Tensor):
        D = hard_sample(logits, self.kind, u)                         # [S, B, n, K]
        shift = gapped_logits(logits, D, self.gap) - logits.detach()
        y = torch.softmax((logits + shift) / self.tau_t, -1)
        return D + (y - y.detach()), D
