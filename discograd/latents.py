"""Discrete latent variables: noise, exact samples, log-probabilities, entropies and enumeration.

Shared by the models (which sample their own latents at evaluation) and the estimators, so that
neither imports the other. Shapes: Bernoulli ``logits`` ``[B, n]``, samples ``[S, B, n]``;
categorical ``logits`` ``[B, n, K]``, one-hot samples ``[S, B, n, K]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("bernoulli", "categorical")


def uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """U(0, 1) noise clamped away from 0 and 1, so that log(u), log(1-u) and -log(-log u) are
    finite (the traps of torch issues 22442 / 18254)."""
    u = torch.rand(shape, device=like.device, dtype=like.dtype, generator=generator)
    tiny = torch.finfo(like.dtype).tiny
    return u.clamp_(tiny, 1.0 - torch.finfo(like.dtype).eps)


def logistic_noise(u: Tensor) -> Tensor:
    """Logistic(0, 1) noise, log u - log(1 - u), computed in log space."""
    return torch.log(u) - torch.log1p(-u)


def gumbel_noise(u: Tensor) -> Tensor:
    """Gumbel(0, 1) noise, -log(-log u)."""
    return -torch.log(-torch.log(u))


def one_hot(index: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot by comparison (F.one_hot checks its input's range, which torch.func.vmap refuses)."""
    return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).to(dtype)


def hard_sample(logits: Tensor, kind: str, u: Tensor) -> Tensor:
    """Exact discrete samples from uniforms ``u`` of shape ``[S, *logits.shape]``.

    Bernoulli: b = 1[logits + Logistic(u) > 0] ~ Bernoulli(sigmoid(logits)).
    Categorical: one_hot(argmax(logits + Gumbel(u))) ~ Categorical(softmax(logits)) (Gumbel-max).
    Both are deterministic given ``u``, which is what lets estimators share random numbers.
    """
    logits = logits.detach()
    if kind == "bernoulli":
        return (logits + logistic_noise(u) > 0).to(logits.dtype)
    index = (logits + gumbel_noise(u)).argmax(-1)
    return one_hot(index, logits.shape[-1], logits.dtype)


def log_prob(logits: Tensor, z: Tensor, kind: str) -> Tensor:
    """log q(z | logits) summed over the latent dimensions: ``[S, B]`` for samples ``[S, B, ...]``."""
    if kind == "bernoulli":
        # z log s(l) + (1 - z) log s(-l)  ==  z * l - softplus(l)
        return (z * logits - F.softplus(logits)).sum(-1)
    return (z * torch.log_softmax(logits, -1)).sum((-1, -2))


def step_log_prob(logits_t: Tensor, z_t: Tensor, kind: str) -> Tensor:
    """log q(z_t | logits_t), ``[S, B]``, for one step of a sequential rollout: samples ``z_t``
    ``[S, B, ...]`` (one categorical ``[S, B, K]``, several ``[S, B, n, K]``, Bernoulli
    ``[S, B, n]``); ``logits_t`` the same without the S axis, or with it (one row per rollout).
    Summed over every axis after (S, B)."""
    if kind == "bernoulli":
        terms = z_t * logits_t - F.softplus(logits_t)
    else:
        terms = z_t * torch.log_softmax(logits_t, -1)
    return terms.flatten(2).sum(-1)


def relaxed_sample(logits: Tensor, kind: str, u: Tensor, tau: float | Tensor,
                   hard: bool = True) -> tuple[Tensor, Tensor | None]:
    """(relaxed y, hard H(y)) from uniforms u; both [S, *logits.shape]. The hard sample is exact
    (None when ``hard=False``)."""
    if kind == "bernoulli":
        a = logits + logistic_noise(u)
        return torch.sigmoid(a / tau), (a.detach() > 0).to(logits.dtype) if hard else None
    a = logits + gumbel_noise(u)
    y = torch.softmax(a / tau, -1)
    return y, one_hot(a.detach().argmax(-1), logits.shape[-1], logits.dtype) if hard else None


def probs(logits: Tensor, kind: str) -> Tensor:
    return torch.sigmoid(logits) if kind == "bernoulli" else torch.softmax(logits, -1)


def entropy(logits: Tensor, kind: str) -> Tensor:
    """Entropy of q summed over latent dimensions, ``[B]``."""
    if kind == "bernoulli":
        p = torch.sigmoid(logits)
        return (F.softplus(logits) - p * logits).sum(-1)
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum((-1, -2))


# --------------------------------------------------------------------------------------------
# Enumeration of latent configurations (the ``exact`` estimator and exact diagnostics).
# --------------------------------------------------------------------------------------------

MAX_CONFIGS = 65536


def n_configs(kind: str, latent_shape) -> float:
    """Number of latent configurations: 2^n (Bernoulli [n]) or K^n (categorical [n, K]); inf when
    it does not fit in 64 bits."""
    if kind == "bernoulli":
        n = int(latent_shape[0])
        return 2 ** n if n < 64 else math.inf
    n, k = int(latent_shape[0]), int(latent_shape[1])
    return k ** n if n * math.log2(max(k, 2)) < 64 else math.inf


def all_configs(kind: str, latent_shape, device, dtype) -> Tensor:
    """Every latent configuration, ``[M, *latent_shape]``, in a fixed order (configuration m has
    digit i = (m // base^i) % base). Built with :func:`one_hot`, so it is safe under vmap."""
    if kind == "bernoulli":
        n = int(latent_shape[0])
        codes = torch.arange(2 ** n, device=device)
        return ((codes[:, None] >> torch.arange(n, device=device)) & 1).to(dtype)
    n, k = int(latent_shape[0]), int(latent_shape[1])
    codes = torch.arange(k ** n, device=device)
    digits = torch.stack([(codes // k ** i) % k for i in range(n)], -1)     # [M, n]
    return one_hot(digits, k, dtype)


# --------------------------------------------------------------------------------------------
# Latents in layers: what a layered model hands to the estimators (estimators/layered.py).
# --------------------------------------------------------------------------------------------

class Layers:
    """What a layered model hands to :func:`layered_estimate` for one minibatch.

    ``kind`` and ``shape`` are those of one layer (every layer has the same); ``depth`` = L.
    Samples carry a leading rows axis: ``[R, B, *shape]``, R broadcasting (1 or any R).
    ``frozen=True``: evaluated with the model's parameters detached (gradients reach the inputs
    only)."""

    kind: str
    shape: tuple[int, ...]
    depth: int

    def logits(self, l: int, zs: list[Tensor], frozen: bool) -> Tensor:
        """Logits of layer ``l`` given the samples ``zs`` of layers 0..l-1: ``[R, B, *shape]``
        (``[1, B, *shape]`` for l = 0)."""
        raise NotImplementedError

    def objective(self, zs: list[Tensor], frozen: bool) -> Tensor:
        """f at the samples of every layer: ``[R, B]``."""
        raise NotImplementedError

