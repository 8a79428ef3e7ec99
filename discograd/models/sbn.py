"""Structured output prediction with a sigmoid belief net (``model=sbn``; Raiko et al. 2014; Gu et
al. 2016 section 5.1; Jang et al. 2016 section 4.1): predict the lower half y of a binarized MNIST
digit from its upper half x_u through L stochastic layers, x_u (392) -> h_1 (200) -> h_2 (200) ->
y (392), each arrow a linear map to logits of a Bernoulli (or ``latent_dim`` categoricals of
``classes`` classes, 20 x 10 in Jang et al.).
Training minimises f(h) = -log p(y | h_L) with h ~ p(h | x_u) (m = 1); evaluation reports the
m-sample bound log 1/m sum_i p(y | h_i) (``bound_m``; the papers' test "negative log-likelihood"
is -bound_m, m = 1000 in Jang et al., 100 in Gu et al.). ``estimator=vimco`` trains the
S-sample bound itself (MuProp section 5.1's objective with m = S).

A layered model (models/layered.py): it hands the estimator a :class:`discograd.latents.Layers`
view, on which every estimator runs (estimators/layered.py says how).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from discograd.errors import ConfigError
from .config import Latent, latent_dim_or_default, plain
from .layered import LayeredModel, flat
from .parts import bias_at_mean_logit, check_digit_model
from .registry import register

HALF = 392      # the upper 14 rows of a 28 x 28 image


@dataclass
class SBNConfig:
    name: str = "sbn"
    latent: Latent = Latent.bernoulli
    latent_dim: Optional[int] = None   # None: 200 Bernoulli units, or 20 categorical variables
    classes: int = 10
    layers: int = 2            # stochastic layers between the upper and the lower half


@register
class SBN(LayeredModel):
    name = "sbn"
    schema = SBNConfig
    main_metric = "loss"

    @classmethod
    def check_config(cls, model_cfg, data_cfg) -> None:
        check_digit_model(model_cfg, data_cfg)

    @classmethod
    def from_config(cls, model_cfg, data_cfg) -> SBN:
        m = model_cfg
        kind = plain(m.latent)
        return cls(layers=int(m.layers), latent=kind,
                   latent_dim=latent_dim_or_default(m.latent_dim, kind), classes=m.classes)

    def select_metric(self, samples: int) -> str:
        return f"bound_{samples}"

    def metric_names(self, samples: int) -> tuple[str, ...]:
        return ("loss", f"bound_{samples}")

    def __init__(self, layers: int = 2, latent: str = "bernoulli", latent_dim: int = 200,
                 classes: int = 10):
        super().__init__()
        if int(layers) < 1:
            raise ConfigError(f"model.layers={layers} is invalid for model 'sbn': it must be >= 1")
        self.kind, self.depth = latent, int(layers)
        n = int(latent_dim)
        self.latent_shape = (n,) if latent == "bernoulli" else (n, int(classes))
        width = math.prod(self.latent_shape)
        self.nets = nn.ModuleList([nn.Linear(HALF if l == 0 else width, width)
                                   for l in range(self.depth)])
        self.out = nn.Linear(width, 784 - HALF)

    def set_data_mean(self, mean: Tensor) -> None:
        bias_at_mean_logit(self.out, mean[HALF:])          # of the lower half

    def layer_logits(self, x, l, zs):
        if l == 0:
            return self._reshape(self.nets[0](x[..., :HALF])).unsqueeze(0)
        return self._reshape(self.nets[l](flat(zs[l - 1])))

    def layered_objective(self, x, zs):
        """-log p(y | h_L), y the lower half of x: [R, B]."""
        out = self.out(flat(zs[-1]))                                       # [R, B, 392]
        return (F.softplus(out) - x[..., HALF:] * out).sum(-1)

    def encoder_parameters(self):
        return list(self.nets.parameters())

    def decoder_parameters(self):
        return list(self.out.parameters())
