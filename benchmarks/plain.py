"""The plain baselines: each model and estimator written in the most direct PyTorch, independent of
the harness (no registry, no config, no logging): ``nn.Linear`` layers, ``torch.optim.Adam`` with
its defaults, minibatches sliced from an in-memory tensor and binarized with ``torch.bernoulli``.

They compute what the harness computes for the same configuration (same model, same estimator,
analytic KL, Adam), so the ratio harness / plain measures the harness's overhead or gain.
Estimators: ``st``, ``reinforce`` (no baseline), ``gumbel``, ``st_gumbel`` (tau = 1) and
``disarm`` (Dong, Mnih & Tucker 2020, eq. 6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ESTIMATORS = ("st", "reinforce", "gumbel", "st_gumbel", "disarm")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.3))
    return nn.Sequential(*layers)


def _grad_of(est: str, logits: torch.Tensor, f, t_or_none=None):
    """(surrogate per example [B], reported loss [B]) for Bernoulli latents."""
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    if est == "st":
        p = torch.sigmoid(logits)
        b = (u < p).float()
        fz = f(b + p - p.detach())
        return fz, fz.detach()
    if est == "reinforce":
        b = (u < torch.sigmoid(logits)).float()
        fz = f(b)
        logq = -F.binary_cross_entropy_with_logits(logits, b, reduction="none").sum(-1)
        return fz + fz.detach() * logq, fz.detach()
    if est in ("gumbel", "st_gumbel"):
        y = torch.sigmoid(logits + torch.log(u) - torch.log1p(-u))        # tau = 1
        if est == "st_gumbel":
            y = (y > 0.5).float() + y - y.detach()
        fz = f(y)
        return fz, fz.detach()
    if est == "disarm":
        p = torch.sigmoid(logits.detach())
        b, b_anti = (u < p).float(), (1 - u < p).float()
        fb, fa = f(b), f(b_anti)
        weight = (1 - 2 * b_anti) * (b != b_anti).float() * torch.sigmoid(logits.detach().abs())
        signal = 0.5 * (fb - fa).detach().unsqueeze(-1) * weight
        return (signal * logits).sum(-1) + 0.5 * (fb + fa), (0.5 * (fb + fa)).detach()
    raise ValueError(f"plain baseline has no estimator {est!r}; accepted: {', '.join(ESTIMATORS)}")


class VAENet(nn.Module):
    """Encoder 784-[hidden]-200, mirrored decoder, learned prior logits; the decoder's output
    bias starts at the logit of the data mean ``mean`` (as the harness's VAE)."""

    def __init__(self, mean: torch.Tensor, hidden=()):
        super().__init__()
        self.enc = _mlp([784, *hidden, 200])
        self.dec = _mlp([200, *reversed(hidden), 784])
        self.prior = nn.Parameter(torch.zeros(200))
        with torch.no_grad():
            m = mean.clamp(1e-3, 1 - 1e-3)
            self.dec[-1].bias.copy_(torch.log(m) - torch.log1p(-m))

    def kl(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(q(z | x) || p(z)) of Bernoulli latents, [B]."""
        q, prior = torch.sigmoid(logits), self.prior
        return (q * (F.logsigmoid(logits) - F.logsigmoid(prior))
                + (1 - q) * (F.logsigmoid(-logits) - F.logsigmoid(-prior))).sum(-1)


class PlainVAE:
    """The Bernoulli VAE (VAENet) trained with estimator ``est``, analytic KL, Adam."""

    def __init__(self, images: torch.Tensor, est: str, hidden=(), batch_size: int = 50,
                 lr: float = 1e-3, device="cpu"):
        self.X = images.to(device=device, dtype=torch.float32) / 256      # grey levels, in memory
        self.est, self.bs = est, batch_size
        self.net = VAENet(self.X.mean(0), hidden).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.perm, self.pos = torch.randperm(len(self.X), device=device), 0

    def step(self) -> torch.Tensor:
        if (self.pos + 1) * self.bs > len(self.X):
            self.perm, self.pos = torch.randperm(len(self.X), device=self.X.device), 0
        x = torch.bernoulli(self.X[self.perm[self.pos * self.bs:(self.pos + 1) * self.bs]])
        self.pos += 1
        logits = self.net.enc(x)

        def f(z):                                       # -log p(x | z)
            out = self.net.dec(z)
            return F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)

        surrogate, loss = _grad_of(self.est, logits, f)
        kl = self.net.kl(logits)
        self.opt.zero_grad()
        (surrogate + kl).mean().backward()
        self.opt.step()
        return (loss + kl.detach()).mean()


class PlainToy:
    """Tucker et al.'s E[(b - t)^2] over ``dim`` latents, ``batch_size`` draws per step, Adam."""

    def __init__(self, est: str, dim: int = 1, t: float = 0.45, batch_size: int = 1,
                 lr: float = 0.01, device="cpu"):
        self.est, self.t, self.bs = est, t, batch_size
        self.phi = nn.Parameter(torch.zeros(dim, device=device))
        self.opt = torch.optim.Adam([self.phi], lr=lr)

    def step(self) -> torch.Tensor:
        logits = self.phi.expand(self.bs, -1)
        surrogate, loss = _grad_of(self.est, logits, lambda z: (z - self.t).pow(2).mean(-1))
        self.opt.zero_grad()
        surrogate.mean().backward()
        self.opt.step()
        return loss.mean()
