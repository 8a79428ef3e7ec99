"""RELAX (Grathwohl, Choi, Wu, Roeder & Duvenaud 2018, arXiv:1711.00123), discrete version.

Unbiased, both latent kinds. The estimator of Grathwohl et al. eq. (8) (their Algorithm 2):

    g = [f(b) - c_phi(z~)] d/dtheta log p(b) + d/dtheta c_phi(z) - d/dtheta c_phi(z~) + d/dtheta f(b)

with z the perturbed logits, b = H(z), z~ ~ p(z | b) (see :mod:`estimators.rebar` for the exact
formulas) and the learned control variate of their section 3.3 / appendix (``relaxation=add`` in
their code):

    c_phi(z) = eta * f(sigma_lambda(z)) + r_rho(z),

sigma_lambda the Concrete relaxation at the learned temperature lambda = exp(log_tau), and r_rho a
small network (Linear(n_latent -> hidden), tanh, Linear(hidden -> 1)) reading the flattened
perturbed logits z. Its output layer starts at zero, so an untrained RELAX equals REBAR. (Their
network also reads x; the estimator never sees x, so r_rho reads z only.) Unbiased for every phi =
(eta, lambda, rho): E_b E_{z~|b}[c(z~)] = E_z[c(z)].

phi is trained to minimise the single-sample variance of g with respect to the logits (their
eq. (6): d Var(g) / d phi = E[2 g d g / d phi], by double backpropagation), exactly as in
:class:`estimators.rebar.Rebar`, whose mechanics RELAX inherits: the gradients are accumulated into
the estimator's ``.grad`` during the forward pass in training mode only, the surrogate carries the
model gradient only, and nothing keeps a graph alive across steps (storchastic issue 26).

Noise: ``(2 S, *logits.shape)``, u[:S] draw b, u[S:] draw z~ | b. Cost: ``evals = 3 S``.
"""
from __future__ import annotations

import math

from torch import Tensor, nn
from torch.func import functional_call

from .base import ConfigError, register
from .rebar import Rebar


@register
class Relax(Rebar):
    name = "relax"

    def __init__(self, kind, latent_shape, samples: int = 1, tau_init: float = 0.5,
                 eta_init: float = 1.0, learn: bool = True, hidden: int = 100):
        super().__init__(kind, latent_shape, samples, tau_init=tau_init, eta_init=eta_init,
                         learn=learn)
        if not (isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 1):
            raise ConfigError(f"hidden={hidden} is invalid: it must be an integer >= 1")
        width = math.prod(self.latent_shape)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        if not self.learn:
            self.net.requires_grad_(False)

    def _extra_cv(self, own: dict[str, Tensor], z: Tensor) -> Tensor:
        params = {k[len("net."):]: v for k, v in own.items() if k.startswith("net.")}
        flat = z.reshape(*z.shape[:2], -1)
        return functional_call(self.net, params, (flat,)).squeeze(-1)
