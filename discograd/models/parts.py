"""Building blocks shared by the MNIST models (the VAE with one or several layers, the SBN): MLPs,
the prior, the decoder bias at the data mean, the evaluation chunk size, their common config
checks. A module of its own so that the VAE can build the layered VAE (model=vae
model.layers>=2) without an import cycle."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from discograd.errors import ConfigError
from discograd.images import CANVAS_DATASETS
from .config import int_at_least, plain

EVAL_ROWS = 1 << 15   # latent samples per evaluation chunk (bounds memory: 32768 x 784 floats)
DECODE_ROWS = 2048    # decoder rows per product in evaluation: its [rows, 784] output stays in cache
PRIORS = ("learned", "uniform")


def mlp(sizes: list[int], slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


def check_prior_and_slope(prior: str, slope: float) -> None:
    if prior not in PRIORS:
        raise ConfigError(f"model.prior={prior!r} is invalid; accepted: {', '.join(PRIORS)}")
    if not (math.isfinite(slope) and slope >= 0):
        raise ConfigError(f"model.slope={slope} is invalid: it must be a finite number >= 0")


def add_prior(module: nn.Module, prior: str, shape: tuple[int, ...]) -> None:
    """``module.prior_logits``: learned (a Parameter trained with the model; DisARM, ARM linear)
    or uniform (a zero buffer: Bernoulli(1/2) / uniform categorical; Jang et al. 2016 §4.2, ARM
    nonlinear code)."""
    zeros = torch.zeros(shape)
    if prior == "learned":
        module.prior_logits = nn.Parameter(zeros)
    else:
        module.register_buffer("prior_logits", zeros)


DECODER_BIASES = ("data_mean", "zero")


def check_decoder_bias(value: str) -> None:
    if value not in DECODER_BIASES:
        raise ConfigError(f"model.decoder_bias={value!r} is invalid; accepted: "
                          f"{', '.join(DECODER_BIASES)}")


@torch.no_grad()
def bias_at_mean_logit(layer: nn.Linear, mean: Tensor) -> None:
    """Output bias := logit of the training data mean (DisARM code)."""
    m = mean.detach().to(layer.bias).clamp(1e-3, 1 - 1e-3)
    layer.bias.copy_(torch.log(m) - torch.log1p(-m))


def check_digit_model(model_cfg, data_cfg) -> None:
    """The config checks of the models that read 28x28 digits through layers of latents (the VAE,
    the SBN): their sizes, and no canvas data."""
    m = model_cfg
    int_at_least("model.layers", m.layers, 1)
    if m.latent_dim is not None:
        int_at_least("model.latent_dim", m.latent_dim, 1)
    if plain(m.latent) == "categorical":
        int_at_least("model.classes", m.classes, 2)
    for h in m.get("hidden", []):
        int_at_least("model.hidden[i]", h, 1)
    if data_cfg.name in CANVAS_DATASETS:
        raise ConfigError(f"model '{m.name}' reads 28x28 images, but data={data_cfg.name} has "
                          f"{data_cfg.size}x{data_cfg.size} canvases; accepted: data=mnist, mnist_grey "
                          "or fashion_mnist")
