"""Testbeds: the toy problem with a known gradient, the discrete VAE on MNIST and the
hard-attention classifier."""
from __future__ import annotations

from .attention import Attention
from .base import LatentModel
from .toy import Toy
from .vae import VAE

MODELS = {"toy": Toy, "vae": VAE, "attention": Attention}

__all__ = ["Attention", "LatentModel", "MODELS", "Toy", "VAE"]
