"""Tucker et al.'s toy problem (REBAR, arXiv:1703.07370, section 6.1; RELAX, arXiv:1711.00123
section 6.1): minimise E_{b ~ Bernoulli(sigmoid(phi))}[(b - t)^2]; and its polynomial form, the
"polynomial programming" of Liu et al. 2023 (ReinMax, arXiv:2304.08612, section 6; official code
``poly/poly_programming.py``): E[|b - t|^p] over 128 latents, p in {1.5, 2, 3}.

Here over ``dim`` independent latents with the loss averaged over the dims (``power`` = p, 2 by
default):
    f(b) = 1/dim sum_i |b_i - t|^p,
    E[f] = 1/dim sum_i s_i |1 - t|^p + (1 - s_i) |t|^p,      s_i = sigmoid(phi_i),
    dE/dphi_i = (|1 - t|^p - |t|^p) s_i (1 - s_i) / dim.
The optimum is s -> 0 for t < 1/2 (E[f] -> t^p); the gradient signal (1 - 2t for p = 2) is tiny
for t near 1/2, which is what makes the problem hard for high-variance estimators.

Categorical variant (``latent=categorical``, ``classes=K``): each latent picks a value from
v = linspace(0, 1, K) and f(z) = 1/dim sum_i (<z_i, v> - t)^2, which for K = 2 is the Bernoulli
problem with b = z_i[1]; relaxed z give the loss at the relaxed value <z, v>. Exact loss:
E[f] = 1/dim sum_i sum_k p_ik (v_k - t)^2.

The parameters are the logits themselves, initialised at 0, or uniform in [-init, init] with
``init`` > 0 (ReinMax: 0.01); the "minibatch" is ``train.batch_size`` independent draws at the same
logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from discograd.errors import ConfigError
from .base import LatentModel
from .config import Latent, int_at_least, plain
from .registry import register


@dataclass
class ToyConfig:
    name: str = "toy"
    latent: Latent = Latent.bernoulli
    dim: int = 1
    t: float = 0.45
    classes: int = 3
    power: float = 2.0         # f = mean |value - t|^power (ReinMax's polynomial programming: 1.5, 2, 3)
    init: float = 0.0          # logits ~ U(-init, init) (0: zeros)


@register
class Toy(LatentModel):
    name = "toy"
    schema = ToyConfig
    needs_data = False
    main_metric = "exact_loss"

    @classmethod
    def check_config(cls, model_cfg, data_cfg) -> None:
        m = model_cfg
        int_at_least("model.dim", m.dim, 1)
        if plain(m.latent) == "categorical":
            int_at_least("model.classes", m.classes, 2)
        if not math.isfinite(m.t):
            raise ConfigError(f"model.t={m.t} is invalid: it must be a finite number")
        if not (math.isfinite(m.power) and m.power >= 1):
            raise ConfigError(f"model.power={m.power} is invalid: it must be a finite number "
                              ">= 1 (f = mean |z - t|^power; 1 <= power keeps f convex in z)")
        if not (math.isfinite(m.init) and m.init >= 0):
            raise ConfigError(f"model.init={m.init} is invalid: it must be a finite number >= 0")

    @classmethod
    def check_objective(cls, model_cfg, estimator: type) -> None:
        if estimator.objective == "multisample":
            raise ConfigError(
                f"estimator '{estimator.name}' estimates the gradient of the S-sample bound "
                "log 1/S sum_s exp(-f(z_s)), but model 'toy' minimises E[f] (f is not a negative "
                "log-likelihood, so that bound is not its objective and its exact_loss would not be "
                "comparable); accepted with the toy: any estimator of E[f] (e.g. rloo, reinforce "
                "estimator.samples=S); vimco trains model=vae model.objective=iwae, model=sbn or "
                "model=attention")

    @classmethod
    def from_config(cls, model_cfg, data_cfg) -> Toy:
        m = model_cfg
        # .get: a config without these keys (e.g. saved before they existed) gets the old defaults
        return cls(dim=m.dim, t=m.t, latent=plain(m.latent), classes=m.classes,
                   power=float(m.get("power", 2.0)), init=float(m.get("init", 0.0)))

    def __init__(self, dim: int = 1, t: float = 0.45, latent: str = "bernoulli", classes: int = 2,
                 power: float = 2.0, init: float = 0.0):
        super().__init__()
        self.kind = latent
        self.t = float(t)
        self.power = float(power)
        self.dim = int(dim)
        if latent == "bernoulli":
            self.latent_shape = (self.dim,)
        else:
            self.latent_shape = (self.dim, int(classes))
            self.register_buffer("values", torch.linspace(0.0, 1.0, int(classes)))
        self.phi = nn.Parameter(torch.zeros(self.latent_shape))
        if init > 0:
            with torch.no_grad():
                self.phi.uniform_(-float(init), float(init))

    def logits(self, x: Tensor) -> Tensor:
        return self.phi.expand(x.shape[0], *self.latent_shape)

    def _value(self, z: Tensor) -> Tensor:
        return z if self.kind == "bernoulli" else (z * self.values).sum(-1)

    def objective(self, x, logits):
        t, p = self.t, self.power
        if p == 2.0:                     # the REBAR / RELAX problem, as it always was
            return lambda z: (self._value(z) - t).pow(2).mean(-1)
        return lambda z: (self._value(z) - t).abs().pow(p).mean(-1)

    def _cost(self, v) -> Tensor | float:
        """|v - t|^p for a value v (a float or the class values)."""
        return abs(v - self.t) ** self.power if isinstance(v, float) else \
            (v - self.t).abs().pow(self.power)

    def exact_loss(self, phi: Tensor | None = None) -> Tensor:
        """Closed-form E[f] at ``phi`` (default: the current parameters); differentiable."""
        phi = self.phi if phi is None else phi
        if self.kind == "bernoulli":
            s = torch.sigmoid(phi)
            return (s * self._cost(1.0) + (1 - s) * self._cost(0.0)).mean()
        p = torch.softmax(phi, -1)
        return (p * self._cost(self.values)).sum(-1).mean()

    def exact_objective(self, x: Tensor) -> Tensor:
        """The exact training objective mean_b E[f_b] for a minibatch (diagnostics reference)."""
        return self.exact_loss()

    @property
    def optimum(self) -> float:
        """The smallest E[f] any distribution reaches: all its mass on the value nearest t
        (t^p for Bernoulli latents and t < 1/2), approached as the logits diverge."""
        values = [0.0, 1.0] if self.kind == "bernoulli" else [float(v) for v in self.values]
        return min(self._cost(v) for v in values)

    def exact_grad(self) -> Tensor:
        """Closed-form dE/dphi (Bernoulli) or autograd of the closed-form E (categorical)."""
        if self.kind == "bernoulli":
            s = torch.sigmoid(self.phi.detach())
            return (self._cost(1.0) - self._cost(0.0)) * s * (1 - s) / self.dim
        phi = self.phi.detach().clone().requires_grad_(True)
        return torch.autograd.grad(self.exact_loss(phi), phi)[0]

    def encoder_parameters(self):
        return [self.phi]

    def decoder_parameters(self):
        return []

    @torch.no_grad()
    def evaluate(self, x: Tensor, samples: int, generator=None) -> dict[str, Tensor]:
        return {"exact_loss": self.exact_loss().expand(1)}
