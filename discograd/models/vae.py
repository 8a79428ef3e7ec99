"""Variational autoencoder with one stochastic layer of discrete latents on binarized MNIST.

q(z | x): Bernoulli(sigmoid(enc(x))) over ``latent_dim`` units, or ``latent_dim`` independent
categoricals of ``classes`` classes (Jang et al. 2016, section 4.2). p(z): factorised, with learned
logits (``prior=learned``, as in ARM linear/DisARM/RELAX) or fixed uniform (``prior=uniform``, Jang
et al. 2016 section 4.2 and the ARM nonlinear code). p(x | z): Bernoulli(sigmoid(dec(z))) over 784 pixels, the decoder's
output bias initialised to the logit of the training data mean (Dong et al. 2020 code).
``hidden=[]`` is the linear model of ARM/DisARM (784-200 encoder, 200-784 decoder); e.g.
``hidden=[200, 200]`` is nonlinear with LeakyReLU (``slope`` 0.3 as in the DisARM code; the ARM
code has 0.1), the decoder
mirroring the encoder.

Objective (negative ELBO, Kingma & Welling 2014 eq. 3):
    -ELBO(x) = E_q[-log p(x | z)] + KL(q(z | x) || p(z)).
``kl=analytic``: f(z) = -log p(x | z) and the closed-form KL is added by the loop (the estimator
handles only the expectation of f). ``kl=sampled``: f(z) = -log p(x | z) - log p(z) + log q(z | x),
the single-sample estimate of the whole bound; log q keeps its direct dependence on the logits.

Training objective (``objective``): ``elbo`` (default) trains the ELBO above. ``iwae`` trains the
S-sample bound log 1/S sum_s w_s (Burda et al. 2016, eq. (8)) with S = ``estimator.samples``: f(z)
is then always the per-sample NEGATIVE log weight -log w = -log p(x|z) - log p(z) + log q(z|x) (the
sampled form; ``kl`` has no effect and there is no analytic extra term), and the estimator, which
must be one whose target is the multi-sample bound (``vimco``), forms the bound from the [S, B]
values of f itself. :meth:`VAE.check_objective` (run by experiment/validate.py) refuses every other
combination before training.

Evaluation uses exact (hard) samples z_k ~ q, k = 1..K:
    log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),
    bound_K = logsumexp_k log w_k - log K  (Burda et al. 2016, eq. 8), a lower bound on log p(x);
    elbo = mean_k log p(x | z_k) - KL(q || p), the ELBO estimated with the same K samples.
Both are reported as signed log-likelihood bounds in nats (higher is better); ``loss`` = -elbo.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd.errors import ConfigError
from discograd.latents import log_prob
from .base import LatentModel
from .config import Latent, latent_dim_or_default, plain
from .layered import LayeredVAE
from .parts import (DECODE_ROWS, EVAL_ROWS, add_prior, bias_at_mean_logit, check_decoder_bias,
                    check_digit_model,
                    check_prior_and_slope, mlp)
from .registry import register

OBJECTIVES = ("elbo", "iwae")   # model.objective: the single-sample ELBO or the S-sample bound


class KL(Enum):
    analytic = "analytic"
    sampled = "sampled"


class Prior(Enum):
    learned = "learned"    # prior logits trained with the model
    uniform = "uniform"    # fixed: Bernoulli(1/2) / uniform categorical (Jang et al. 2016)


class DecoderBias(Enum):
    data_mean = "data_mean"   # logit of the training-data mean per pixel (the DisARM code)
    zero = "zero"             # 0 (TensorFlow's default bias init, which the ARM code keeps)


class ModelObjective(Enum):
    elbo = "elbo"      # single-sample ELBO: every estimator of E_q[f]
    iwae = "iwae"      # S-sample bound (Burda et al. 2016): f = -log w, estimators like vimco


@dataclass
class VAEConfig:
    name: str = "vae"
    latent: Latent = Latent.bernoulli
    latent_dim: Optional[int] = None   # None: 200 Bernoulli units, or 20 categorical variables
    classes: int = 10
    hidden: List[int] = field(default_factory=list)
    kl: KL = KL.analytic
    objective: ModelObjective = ModelObjective.elbo   # iwae: the S-sample bound (estimator=vimco)
    prior: Prior = Prior.learned
    slope: float = 0.3         # LeakyReLU slope of hidden layers (DisARM code 0.3; ARM code 0.1)
    layers: int = 1            # stochastic layers; >= 2: models/layered.py (needs kl=sampled)
    # the initial output bias of the decoder: data_mean (the DisARM code's) or zero
    decoder_bias: DecoderBias = DecoderBias.data_mean


def kl_divergence(logits: Tensor, prior_logits: Tensor, kind: str) -> Tensor:
    """KL(q || p) summed over latent dimensions, [B]; ``prior_logits`` is [B, ...] or broadcasts
    against ``logits`` (e.g. the unbatched learned prior)."""
    if kind == "bernoulli":
        q = torch.sigmoid(logits)
        # q (log q - log p) + (1 - q)(log(1 - q) - log(1 - p)), in terms of logits
        return (q * (F.logsigmoid(logits) - F.logsigmoid(prior_logits))
                + (1 - q) * (F.logsigmoid(-logits) - F.logsigmoid(-prior_logits))).sum(-1)
    logq = torch.log_softmax(logits, -1)
    logp = torch.log_softmax(prior_logits, -1)
    return (logq.exp() * (logq - logp)).sum((-1, -2))


def log_prior_ratio(z: Tensor, prior: Tensor, logits: Tensor, kind: str) -> Tensor:
    """log p(z) - log q(z) for samples z [S, B, ...] -> [S, B]. Bernoulli: with log Bern(z; a) =
    z.a - sum softplus(a), the ratio is z.(prior - logits) plus a per-example constant, so the
    softplus is taken over [B, n], not over all S samples."""
    if kind != "bernoulli":
        return log_prob(prior, z, kind) - log_prob(logits, z, kind)
    const = (F.softplus(logits) - F.softplus(prior)).flatten(1).sum(-1)           # [B]
    return torch.einsum("sbk,bk->sb", z.flatten(2), (prior - logits).flatten(1)) + const


@register
class VAE(LatentModel):
    """``model=vae``: this class with one stochastic layer; :meth:`from_config` builds the
    :class:`LayeredVAE` for ``model.layers`` >= 2 (same schema and checks)."""

    name = "vae"
    schema = VAEConfig
    main_metric = "elbo"

    @classmethod
    def check_config(cls, model_cfg, data_cfg) -> None:
        check_digit_model(model_cfg, data_cfg)

    @classmethod
    def check_objective(cls, model_cfg, estimator: type) -> None:
        """model.objective (elbo | iwae) against the estimator's target (E_q[f] | the S-sample
        bound); checked only where the config has the key, as it always was."""
        if "objective" not in model_cfg:
            return
        objective, multisample = plain(model_cfg.objective), estimator.objective == "multisample"
        if objective == "iwae" and not multisample:
            raise ConfigError(
                "model.objective=iwae trains the S-sample bound, but estimator "
                f"'{estimator.name}' estimates the gradient of the single-sample objective E_q[f] "
                "(the ELBO), not of that bound; use estimator=vimco, or model.objective=elbo")
        if objective == "elbo" and multisample:
            raise ConfigError(
                f"estimator '{estimator.name}' estimates the gradient of the S-sample bound "
                "log 1/S sum_s exp(-f(z_s)), which needs f = -log w: set model.objective=iwae "
                "(model.objective=elbo gives f = -log p(x|z) plus an analytic KL)")

    @classmethod
    def from_config(cls, model_cfg, data_cfg) -> VAE | LayeredVAE:
        m = model_cfg
        kind = plain(m.latent)
        latent_dim = latent_dim_or_default(m.latent_dim, kind)
        if int(m.get("layers", 1)) > 1:
            return LayeredVAE(layers=int(m.layers), latent=kind, latent_dim=latent_dim,
                              classes=m.classes, hidden=list(m.hidden), kl=plain(m.kl),
                              objective=plain(m.objective), prior=plain(m.prior),
                              slope=float(m.slope),
                              decoder_bias=plain(m.get("decoder_bias", "data_mean")))
        return cls(latent=kind, latent_dim=latent_dim, classes=m.classes, hidden=list(m.hidden),
                   kl=plain(m.kl), objective=plain(m.objective), prior=plain(m.prior),
                   slope=float(m.slope), decoder_bias=plain(m.get("decoder_bias", "data_mean")))

    def select_metric(self, samples: int) -> str:
        return f"bound_{samples}"       # the papers select on validation log-likelihood

    def metric_names(self, samples: int) -> tuple[str, ...]:
        return ("loss", "elbo", f"bound_{samples}")

    def __init__(self, latent: str = "bernoulli", latent_dim: int = 200, classes: int = 10,
                 hidden: list[int] | tuple[int, ...] = (), kl: str = "analytic",
                 slope: float = 0.3, x_dim: int = 784, objective: str = "elbo",
                 prior: str = "learned", decoder_bias: str = "data_mean"):
        super().__init__()
        check_decoder_bias(decoder_bias)
        self.decoder_bias = decoder_bias
        if objective not in OBJECTIVES:
            raise ConfigError(f"model.objective={objective!r} is invalid; accepted: {', '.join(OBJECTIVES)}")
        self.kind = latent
        self.kl = kl
        self.train_objective = objective
        n = int(latent_dim)
        self.latent_shape = (n,) if latent == "bernoulli" else (n, int(classes))
        width = math.prod(self.latent_shape)
        hidden = [int(h) for h in hidden]
        self.encoder = mlp([x_dim, *hidden, width], slope)
        self.decoder = mlp([width, *reversed(hidden), x_dim], slope)
        check_prior_and_slope(prior, slope)
        add_prior(self, prior, self.latent_shape)

    def set_data_mean(self, mean: Tensor) -> None:
        if self.decoder_bias == "data_mean":
            bias_at_mean_logit(self.decoder[-1], mean)
        else:                       # zero: the ARM code's (TensorFlow's default bias init)
            with torch.no_grad():
                self.decoder[-1].bias.zero_()

    # --- the interface -----------------------------------------------------------------------
    def logits(self, x: Tensor) -> Tensor:
        return self.encoder(x).view(x.shape[0], *self.latent_shape)

    def neg_log_lik(self, z: Tensor, x: Tensor) -> Tensor:
        """-log p(x | z) for z [S, B, ...] -> [S, B]."""
        flat = z.reshape(*z.shape[:2], -1)
        out = self.decoder(flat)                              # [S, B, 784]
        if out.shape[0] * out.shape[1] >= 4096:
            # large evaluation chunks: x.out as a contraction, without an [S, B, 784] temporary
            # (about 2x faster there; for training-sized batches the plain form is faster)
            return F.softplus(out).sum(-1) - torch.einsum("...bd,bd->...b", out, x)
        return (F.softplus(out) - x * out).sum(-1)

    def eval_neg_log_lik(self, z: Tensor, x: Tensor) -> Tensor:
        """:meth:`neg_log_lik` for evaluation's many samples, at the speed of its matrix products:
        with a = h W^T + c the decoder's last layer on its input h, -log p(x|z) = sum softplus(a)
        - h.(x W) - x.c, so the only [S, B, 784] work is the product and the softplus, done in
        blocks of DECODE_ROWS rows whose output is still in cache when the softplus reads it."""
        flat = z.reshape(*z.shape[:2], -1)
        body, last = self.decoder[:-1], self.decoder[-1]
        xw, xc = x @ last.weight, x @ last.bias                       # [B, H], [B]
        step = max(1, DECODE_ROWS // max(1, flat.shape[1]))
        out = flat.new_empty(flat.shape[:2])
        for s in range(0, flat.shape[0], step):
            h = body(flat[s:s + step])                                # [s, B, H]
            a = last(h)                                               # [s, B, 784]
            out[s:s + step] = F.softplus(a).sum(-1) - (h * xw).sum(-1) - xc
        return out

    def objective(self, x, logits):
        kind = self.kind
        if self.kl == "analytic" and self.train_objective == "elbo":
            return lambda z: self.neg_log_lik(z, x)
        prior = self.prior_logits

        def f(z):
            return (self.neg_log_lik(z, x) + log_prob(logits, z, kind)
                    - log_prob(prior.expand_as(logits), z, kind))
        return f

    def extra_loss(self, x, logits):
        if self.kl == "analytic" and self.train_objective == "elbo":
            # the prior broadcasts against [B, ...]: its log-sigmoids are computed once, not B times
            return kl_divergence(logits, self.prior_logits, self.kind)
        return None

    def encoder_parameters(self):
        return list(self.encoder.parameters())

    def decoder_parameters(self):
        learned = [self.prior_logits] if isinstance(self.prior_logits, nn.Parameter) else []
        return list(self.decoder.parameters()) + learned

    @torch.no_grad()
    def evaluate(self, x: Tensor, samples: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        out: dict[str, list[Tensor]] = {"loss": [], "elbo": [], f"bound_{samples}": []}
        chunk = max(1, EVAL_ROWS // samples)
        for i in range(0, x.shape[0], chunk):
            xb = x[i:i + chunk]
            logits = self.logits(xb)
            prior = self.prior_logits.expand_as(logits)
            if self.kind == "bernoulli":
                u = torch.rand((samples, *logits.shape), device=x.device, dtype=logits.dtype,
                               generator=generator)
                z = (u < torch.sigmoid(logits)).to(logits.dtype)
            else:
                z = torch.zeros((samples, *logits.shape), device=x.device, dtype=logits.dtype)
                idx = torch.multinomial(torch.softmax(logits, -1).reshape(-1, logits.shape[-1]),
                                        samples, replacement=True, generator=generator)         # [B*n, S]
                idx = idx.T.reshape(samples, *logits.shape[:-1], 1)
                z.scatter_(-1, idx, 1.0)
            nll = self.eval_neg_log_lik(z, xb)                             # [S, B]
            log_w = -nll + log_prior_ratio(z, prior, logits, self.kind)
            elbo = -nll.mean(0) - kl_divergence(logits, prior, self.kind)
            out["elbo"].append(elbo)
            out["loss"].append(-elbo)
            out[f"bound_{samples}"].append(torch.logsumexp(log_w, 0) - math.log(samples))
        return {k: torch.cat(v) for k, v in out.items()}
