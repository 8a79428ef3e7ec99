"""Models whose latents come in layers: q(z_1..z_L) = prod_l q(z_l | z_<l).

- :class:`LayeredVAE` (``model=vae model.layers=L``, L >= 2): the VAE with L stochastic layers of
  the ARM, REBAR/RELAX and DisARM papers ("linear two layers" / "784-200-200"):
      q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}),     p(z_L) p(z_{L-1} | z_L) ... p(x | z_1),
  every conditional a (linear, or ``hidden`` LeakyReLU MLP) map to logits. With hidden=[] it is the
  linear two-layer model of Yin & Zhou 2019 (code ``b_mnist_linear2_slim.py``) and Grathwohl et al.
  2018 (appendix): q(b_1|x) = sigma(x W + beta), q(b_2|b_1), p(b_1|b_2), p(x|b_1), learned p(b_2).
  f(z) = -log p(x | z_1) - sum_l log p(z_l | z_{l+1}) - log p(z_L) + sum_l log q(z_l | z_{l-1}),
  the single-sample negative ELBO (the lower KL has no closed form, so ``model.kl=sampled`` is
  required). ``model.objective=iwae`` trains the S-sample bound with ``estimator=vimco`` (its S
  samples are S joint rollouts).
- :class:`discograd.models.sbn.SBN` (``model=sbn``, models/sbn.py): the sigmoid belief net.

Both hand the estimator a :class:`discograd.latents.Layers` view through ``sequential_estimate``
(``estimator.layered_estimate``); every estimator runs on them (estimators/layered.py says how).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd.errors import ConfigError
from discograd.latents import Layers, hard_sample, log_prob, uniform
from .base import LatentModel
from .parts import (EVAL_ROWS, add_prior, bias_at_mean_logit, check_decoder_bias,
                    check_prior_and_slope, mlp)


class LayeredModel(LatentModel):
    """Base of the layered models: ``latent_shape`` is one layer's, ``depth`` the number of layers.
    Subclasses implement :meth:`layer_logits` and :meth:`layered_objective`."""

    sequential = True            # the model drives the sampling (sequential_estimate)
    parallel_rollouts = True     # it can roll out several samples side by side
    depth: int

    def layer_logits(self, x: Tensor, l: int, zs: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def layered_objective(self, x: Tensor, zs: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def estimator_support(self, estimator) -> str | None:
        return None              # every estimator (rollout or per layer: estimators/layered.py)

    def noise_shape(self, estimator, batch: int) -> tuple[int, ...]:
        return estimator.layered_noise_shape(self.depth, (batch, *self.latent_shape))

    def evals_per_step(self, estimator) -> int:
        """rollout: one evaluation per rollout; local: f at the rollout, then the estimator's
        evaluations for each layer (each with a rollout of the later layers)."""
        if estimator.layered_mode() == "rollout":
            return estimator.rollouts
        return 1 + self.depth * estimator.evals

    def estimator_mode(self, estimator) -> dict:
        return {"layered_mode": estimator.layered_mode(), "layers": self.depth}

    def forward(self, method: str, *args):
        """Dispatch for ``torch.func.functional_call`` (the frozen evaluations)."""
        return getattr(self, method)(*args)

    def sequential_estimate(self, x: Tensor, estimator, u: Tensor | None = None):
        if u is None:
            u = uniform(self.noise_shape(estimator, x.shape[0]), x)
        return estimator.layered_estimate(_View(self, x), u)

    def _sample(self, x: Tensor, samples: int, generator) -> list[Tensor]:
        """``samples`` exact joint samples of the layers: list of ``[S, B, *shape]``."""
        zs: list[Tensor] = []
        for l in range(self.depth):
            lg = self.layer_logits(x, l, zs)
            lg = lg.expand(samples, *lg.shape[1:])
            zs.append(hard_sample(lg, self.kind, uniform(tuple(lg.shape), lg, generator)))
        return zs

    @torch.no_grad()
    def evaluate(self, x: Tensor, samples: int, generator=None) -> dict[str, Tensor]:
        """With exact joint samples z_k, k = 1..K, and -f(z_k) a log weight (VAE: log p(x, z) -
        log q(z | x); SBN: log p(lower | h)): ``bound_K`` = log 1/K sum_k exp(-f(z_k)), ``loss``
        = mean_k f(z_k), and ``elbo`` = -loss where the model reports it (the VAE)."""
        names = self.metric_names(samples)
        out: dict[str, list[Tensor]] = {k: [] for k in names}
        chunk = max(1, EVAL_ROWS // samples)
        for i in range(0, x.shape[0], chunk):
            xb = x[i:i + chunk]
            log_w = -self.layered_objective(xb, self._sample(xb, samples, generator))   # [S, B]
            out["loss"].append(-log_w.mean(0))
            if "elbo" in out:
                out["elbo"].append(log_w.mean(0))
            out[f"bound_{samples}"].append(torch.logsumexp(log_w, 0) - math.log(samples))
        return {k: torch.cat(v) for k, v in out.items()}

    def _reshape(self, out: Tensor) -> Tensor:
        return out.view(*out.shape[:-1], *self.latent_shape)


class _View(Layers):
    """The Layers view of one minibatch; ``frozen`` evaluations run the model with its
    parameters detached (torch.func.functional_call), so gradients reach only their inputs."""

    def __init__(self, model: LayeredModel, x: Tensor):
        self.model, self.x = model, x
        self.kind, self.shape, self.depth = model.kind, model.latent_shape, model.depth
        self._frozen = None

    def _call(self, frozen: bool, method: str, *args):
        if not frozen:
            return getattr(self.model, method)(*args)
        if self._frozen is None:
            self._frozen = {n: p.detach() for n, p in self.model.named_parameters()}
        return torch.func.functional_call(self.model, self._frozen, (method, *args))

    def logits(self, l, zs, frozen):
        return self._call(frozen, "layer_logits", self.x, l, zs)

    def objective(self, zs, frozen):
        return self._call(frozen, "layered_objective", self.x, zs)


def flat(z: Tensor) -> Tensor:
    """One layer's samples as rows of a linear map: ``[R, B, n, K]`` -> ``[R, B, n*K]``."""
    return z.flatten(2) if z.dim() > 3 else z


class LayeredVAE(LayeredModel):
    name = "vae"
    main_metric = "elbo"

    def select_metric(self, samples: int) -> str:
        return f"bound_{samples}"

    def metric_names(self, samples: int) -> tuple[str, ...]:
        return ("loss", "elbo", f"bound_{samples}")

    def __init__(self, layers: int = 2, latent: str = "bernoulli", latent_dim: int = 200,
                 classes: int = 10, hidden=(), slope: float = 0.3, x_dim: int = 784,
                 objective: str = "elbo", prior: str = "learned", kl: str = "sampled",
                 decoder_bias: str = "data_mean"):
        super().__init__()
        check_decoder_bias(decoder_bias)
        self.decoder_bias = decoder_bias
        if int(layers) < 2:
            raise ConfigError(f"model.layers={layers} is invalid for the layered VAE: it must be >= 2")
        if kl != "sampled":
            raise ConfigError(f"model.kl={kl} is invalid with model.layers={layers}: the KL of a lower "
                              "layer, E_q[log q(z_l | z_l-1) - log p(z_l | z_l+1)], has no closed "
                              "form; accepted: model.kl=sampled")
        check_prior_and_slope(prior, slope)
        self.kind, self.depth, self.train_objective = latent, int(layers), objective
        n = int(latent_dim)
        self.latent_shape = (n,) if latent == "bernoulli" else (n, int(classes))
        width = math.prod(self.latent_shape)
        hidden = [int(h) for h in hidden]
        self.encoders = nn.ModuleList(
            [mlp([x_dim if l == 0 else width, *hidden, width], slope) for l in range(self.depth)])
        self.decoder_x = mlp([width, *reversed(hidden), x_dim], slope)          # p(x | z_1)
        # decoders[l - 1]: z_l+1 -> logits of p(z_l | z_l+1) (0-based: zs[l] -> zs[l - 1])
        self.decoders = nn.ModuleList([mlp([width, *reversed(hidden), width], slope)
                                       for _ in range(self.depth - 1)])
        add_prior(self, prior, self.latent_shape)

    def set_data_mean(self, mean: Tensor) -> None:
        if self.decoder_bias == "data_mean":
            bias_at_mean_logit(self.decoder_x[-1], mean)
        else:                       # zero: the ARM code's (TensorFlow's default bias init)
            with torch.no_grad():
                self.decoder_x[-1].bias.zero_()

    def layer_logits(self, x, l, zs):
        if l == 0:
            return self._reshape(self.encoders[0](x)).unsqueeze(0)
        return self._reshape(self.encoders[l](flat(zs[l - 1])))

    def layered_objective(self, x, zs):
        """f = -log p(x | z_1) - sum_l log p(z_l | z_l+1) - log p(z_L) + sum_l log q(z_l | z_l-1),
        the negative log weight: [R, B]."""
        out = self.decoder_x(flat(zs[0]))                                 # [R, B, 784]
        nll = (F.softplus(out) - x * out).sum(-1)
        for l in range(1, self.depth):      # log p(zs[l - 1] | zs[l])
            nll = nll - log_prob(self._reshape(self.decoders[l - 1](flat(zs[l]))), zs[l - 1],
                                 self.kind)
        nll = nll - log_prob(self.prior_logits.expand_as(zs[-1]), zs[-1], self.kind)
        for l in range(self.depth):
            nll = nll + log_prob(self.layer_logits(x, l, zs[:l]), zs[l], self.kind)
        return nll

    def encoder_parameters(self):
        return list(self.encoders.parameters())

    def decoder_parameters(self):
        learned = [self.prior_logits] if isinstance(self.prior_logits, nn.Parameter) else []
        return list(self.decoder_x.parameters()) + list(self.decoders.parameters()) + learned
