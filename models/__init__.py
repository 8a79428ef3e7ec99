"""Testbeds: the toy problem with a known gradient and the discrete VAE on MNIST."""
from __future__ import annotations

from .base import LatentModel
from .toy import Toy
from .vae import VAE

MODELS = {"toy": Toy, "vae": VAE}

__all__ = ["LatentModel", "MODELS", "Toy", "VAE"]
