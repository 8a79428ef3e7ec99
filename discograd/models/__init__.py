"""Testbeds: the toy problem with a known gradient, the discrete VAE on MNIST (one or several
stochastic layers), the sigmoid belief net for structured output prediction and the
hard-attention classifier."""
from __future__ import annotations

from .attention import Attention
from .base import LatentModel
from .layered import SBN, LayeredVAE
from .toy import Toy
from .vae import VAE

# model=NAME; ``vae`` with model.layers >= 2 builds the LayeredVAE
MODELS = {"toy": Toy, "vae": VAE, "attention": Attention, "sbn": SBN}

__all__ = ["Attention", "LatentModel", "LayeredVAE", "MODELS", "SBN", "Toy", "VAE"]
