"""REBAR (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017, arXiv:1703.07370).

Unbiased, both latent kinds. With z = logits + noise the perturbed logits (Logistic noise for
Bernoulli, Gumbel noise on log-probabilities for categorical), b = H(z) the exact discrete sample,
z~ ~ p(z | b) a second perturbation conditioned on the same b (Tucker et al. appendix C; RELAX
appendix B), and sigma_lambda the Concrete relaxation at temperature lambda, the REBAR estimator of
d/dtheta E_b[f(b)] is (Tucker et al. eq. (5); written as in Grathwohl et al. 2018, eq. (8), with the
control variate c(z) = eta f(sigma_lambda(z))):

    g = [f(b) - c(z~)] d/dtheta log p(b) + d/dtheta c(z) - d/dtheta c(z~) + d/dtheta f(b)

where the last term is f's own dependence on theta (parameters inside f, or a direct dependence of
f on the logits such as log q in a sampled KL). It is unbiased for every eta and lambda because
E_b E_{z~|b}[c(z~)] = E_z[c(z)] (z~ | b has marginal p(z)). For parameters inside f, the terms
d c(z) - d c(z~) have mean zero, so they add variance but no bias.

Conditional samples, computed in log space (finite for |logits| up to 30 and beyond):
- Bernoulli, theta = sigmoid(l), L_v = log v - log(1 - v), v ~ U(0, 1):
    z~ = softplus(L_v + softplus(l))          if b = 1   (= log(1 + v / ((1 - v)(1 - theta))))
    z~ = -softplus(softplus(-l) - L_v)        if b = 0   (= -log(1 + (1 - v) / (v theta)))
- categorical, log theta = log_softmax(l), E_k = -log v_k ~ Exp(1):
    z~_b = -log E_b,   z~_i = -log(E_i / theta_i + E_b) = -logaddexp(log E_i - log theta_i, log E_b)

Learned parameters (Tucker et al. section 3.2): eta (scalar) and the temperature lambda =
exp(log_tau) (log-parametrised, clamped to [1e-3, 1e3]), trained by minimising the single-sample
variance of the estimate. As E[g] does not depend on them, d Var(g) = d E[g^2]; the objective is the
mean over the minibatch of the squared norm of the per-example gradient with respect to the logits,
whose gradient with respect to eta and lambda is taken by double backpropagation
(``torch.autograd.grad(..., create_graph=True)``). This happens in training mode only, during the
forward pass: the gradients are *accumulated* into the estimator's own ``.grad`` (the training loop
zeroes gradients before the forward pass) and the same Adam optimizer steps them with the model.
The returned surrogate carries the model gradient only: eta and lambda enter it through fresh
detached leaves, so ``surrogate.backward()`` never reaches the estimator's own parameters, and no
graph outlives the step (no create_graph/retain_graph state is stored on the module).

Relaxed points are evaluated with ``smooth(f, lambda)``: f itself, or, for one layer of a layered
model, f with the later layers relaxed at the same temperature (estimators/layered.py); the
control variate only has to be continuous in z.

Noise: ``noise_shape = (2 S, *logits.shape)``: u[:S] draw b (and z), exactly like every other
estimator (common random numbers), u[S:2S] draw z~ | b. Cost: ``evals = 3 S`` (f(b), f(sigma(z)),
f(sigma(z~)), one stacked call of f). With S > 1 the estimate is the mean of S independent ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (ConfigError, Estimate, Estimator, Objective, gumbel_noise, hard_sample,
                   log_prob, logistic_noise, probs, register, smooth, uniform)

LOG_TAU_MIN, LOG_TAU_MAX = math.log(1e-3), math.log(1e3)


def perturbed(logits: Tensor, kind: str, u: Tensor) -> Tensor:
    """z with H(z) = hard_sample(logits, kind, u): logits + Logistic(u) (Bernoulli) or
    log_softmax(logits) + Gumbel(u) (categorical). Differentiable in the logits."""
    if kind == "bernoulli":
        return logits + logistic_noise(u)
    return torch.log_softmax(logits, -1) + gumbel_noise(u)


def conditional_perturbed(logits: Tensor, kind: str, b: Tensor, v: Tensor) -> Tensor:
    """z~ ~ p(z | H(z) = b) from uniforms v, reparameterised in the logits with b held fixed."""
    if kind == "bernoulli":
        lv = logistic_noise(v)
        one = F.softplus(lv + F.softplus(logits))
        zero = -F.softplus(F.softplus(-logits) - lv)
        return torch.where(b > 0.5, one, zero)
    logp = torch.log_softmax(logits, -1)
    log_e = torch.log(-torch.log(v))                         # log E, E ~ Exp(1)
    log_e_b = (b * log_e).sum(-1, keepdim=True)
    others = -torch.logaddexp(log_e - logp, log_e_b)
    return torch.where(b > 0.5, -log_e_b, others)


def relax(z: Tensor, kind: str, tau: Tensor) -> Tensor:
    """The Concrete relaxation sigma_lambda(z): sigmoid(z / tau) or softmax(z / tau)."""
    return torch.sigmoid(z / tau) if kind == "bernoulli" else torch.softmax(z / tau, -1)


@register
class Rebar(Estimator):
    name = "rebar"
    not_compilable = ("its training step differentiates its own gradient (double backward, for the "
                      "variance objective), which torch.compile does not support")
    unbiased = True
    relaxed = True           # f is also evaluated at relaxed samples (the control variate);
                             # the reported loss is f(b) at the exact samples

    def __init__(self, kind, latent_shape, samples: int = 1, tau_init: float = 0.5,
                 eta_init: float = 1.0, learn: bool = True):
        super().__init__(kind, latent_shape, samples)
        if not (isinstance(tau_init, (int, float)) and math.isfinite(tau_init)
                and 1e-3 <= tau_init <= 1e3):
            raise ConfigError(f"tau_init={tau_init} is invalid: it must be a number in "
                              "[0.001, 1000] (the learned temperature is kept in that range)")
        if not (isinstance(eta_init, (int, float)) and math.isfinite(eta_init)):
            raise ConfigError(f"eta_init={eta_init} is invalid: it must be a finite number")
        self.learn = bool(learn)
        self.log_tau = nn.Parameter(torch.tensor(math.log(float(tau_init))), requires_grad=self.learn)
        self.eta = nn.Parameter(torch.tensor(float(eta_init)), requires_grad=self.learn)

    @property
    def evals(self) -> int:
        return 3 * self.samples

    @property
    def multi_eval(self) -> bool:
        return True

    def noise_shape(self, logits_shape):
        return (2 * self.samples, *logits_shape)

    def forward(self, logits: Tensor, f: Objective, u: Tensor | None = None,
                generator: torch.Generator | None = None) -> Estimate:
        """As :meth:`Estimator.forward`; ``u`` may also hold only the S uniforms that draw b (as
        for single-noise estimators): the uniforms of z~ | b are then drawn here (independent)."""
        n = 2 * self.samples
        if u is not None and u.shape[0] < n:
            if u.shape[0] < self.samples:
                raise ValueError(f"{self.name}: u has {u.shape[0]} slices, needs {n} "
                                 f"(noise_shape {self.noise_shape(tuple(logits.shape))})")
            u = torch.cat([u, uniform((n - u.shape[0], *logits.shape), logits, generator=generator)])
        return super().forward(logits, f, u, generator)

    def scalars(self) -> dict[str, float]:
        return {"tau": float(self._log_tau(self.log_tau.detach()).exp()), "eta": float(self.eta.detach())}

    # --- pieces that RELAX extends ----------------------------------------------------------
    @staticmethod
    def _log_tau(log_tau: Tensor) -> Tensor:
        return log_tau.clamp(LOG_TAU_MIN, LOG_TAU_MAX)

    def _own(self, live: bool) -> dict[str, Tensor]:
        """The estimator's parameters as tensors for one forward pass: fresh leaves that require
        grad (``live``, so the variance objective can be differentiated without the surrogate's
        backward ever reaching the Parameters), else detached constants."""
        out = {}
        for name, p in self.named_parameters():
            q = p.detach()
            if live and p.requires_grad:
                q = q.clone().requires_grad_(True)
            out[name] = q
        return out

    def _extra_cv(self, own: dict[str, Tensor], z: Tensor) -> Tensor | None:
        """An additional control-variate term r(z) ([S, B]); none for REBAR."""
        return None

    # --- the estimate ---------------------------------------------------------------------
    def estimate(self, logits: Tensor, f: Objective, u: Tensor) -> Estimate:
        S, kind = self.samples, self.kind
        ub, uv = u[:S], u[S:2 * S]
        train_cv = self.training and logits.requires_grad and any(
            p.requires_grad for p in self.parameters())
        own = self._own(train_cv)
        tau = self._log_tau(own["log_tau"]).exp()
        eta = own["eta"]

        b = hard_sample(logits, kind, ub)                      # [S, B, ...], exact, no gradient
        z = perturbed(logits, kind, ub)                        # H(z) = b
        zt = conditional_perturbed(logits, kind, b, uv)        # z~ | b
        if hasattr(f, "smooth"):           # relaxed points get f's continuous stand-in
            fb = f(b)
            fz, fzt = smooth(f, tau)(torch.cat([relax(z, kind, tau), relax(zt, kind, tau)])).chunk(2)
        else:
            values = f(torch.cat([b, relax(z, kind, tau), relax(zt, kind, tau)]))    # [3S, B]
            fb, fz, fzt = values[:S], values[S:2 * S], values[2 * S:]
        cz, czt = eta * fz, eta * fzt
        extra = self._extra_cv(own, torch.cat([z, zt]))
        if extra is not None:
            cz, czt = cz + extra[:S], czt + extra[S:]
        logq = log_prob(logits, b, kind)                       # [S, B]
        pathwise = fb + cz - czt                               # reparameterised part + f's own
        surrogate = ((fb - czt).detach() * logq + pathwise).mean(0).mean()
        stats = {}
        if train_cv:
            stats["cv_variance"] = self._train_control_variate(logits, b, fb - czt, pathwise, own)
        return Estimate(surrogate=surrogate, loss=fb.detach().mean(0), stats=stats)

    def _train_control_variate(self, logits: Tensor, b: Tensor, signal: Tensor, pathwise: Tensor,
                               own: dict[str, Tensor]) -> Tensor:
        """Accumulate d/d(own) of the single-sample variance objective into the Parameters' .grad.

        The estimate of example b's gradient with respect to its logits is
            g_b = 1/S sum_s [signal_s * (b_s - probs) + d pathwise_s / d logits_b],
        signal = f(b) - c(z~) *not* detached here (its dependence on eta, lambda, rho is part of
        d g / d phi; Grathwohl et al. eq. (6)), d log q(b) / d logits = b - probs in closed form.
        The objective is 1/B sum_b ||g_b||^2 (Tucker et al. section 3.2; Grathwohl et al.
        section 3.3); its gradient with respect to the estimator's own leaves only is taken by
        double backpropagation, and added to the Parameters' .grad."""
        S, B = b.shape[0], logits.shape[0]
        g_path, = torch.autograd.grad(pathwise.sum() / S, logits, create_graph=True)
        score = b - probs(logits.detach(), self.kind)          # d log q(b) / d logits, [S, B, ...]
        coef = signal.reshape(*signal.shape, *([1] * (b.dim() - 2)))
        g = g_path + (coef * score).mean(0)                    # [B, ...]: per-example estimates
        var = g.pow(2).sum() / B
        names = [n for n, q in own.items() if q.requires_grad]
        grads = torch.autograd.grad(var, [own[n] for n in names], retain_graph=True,
                                    allow_unused=True)
        params = dict(self.named_parameters())
        for n, gr in zip(names, grads):
            if gr is None:
                continue
            p = params[n]
            p.grad = gr.detach() if p.grad is None else p.grad + gr.detach()
        return var.detach()
