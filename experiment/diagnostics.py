"""Gradient bias and variance diagnostics (DESIGN.md, "Diagnostics", a contract).

At a probe step, with the parameters frozen and a fixed diagnostic minibatch, each estimator in
``diagnostics.estimators`` draws K = ``diagnostics.samples`` independent gradient estimates
g_1..g_K of the training objective (the estimator's gradient of E[f] plus the model's direct terms,
e.g. the analytic KL, i.e. exactly the gradient the training step would apply). For each parameter
group (``encoder``: upstream of the logits, ``decoder``: inside f, ``all``) with P coordinates and
a reference gradient g*:

    mean_norm = ||g_bar||,  g_bar = 1/K sum_k g_k
    variance  = 1/P sum_p  1/(K-1) sum_k (g_kp - g_bar_p)^2
    bias2     = ||g_bar - g*||^2 / P - variance / K  [- variance_ref / M for a sampled reference]
    mse       = bias2 + variance,  cosine = cos(g_bar, g*),  snr = ||g_bar|| / sqrt(P variance)

E||g_bar - g*||^2 / P = bias^2 + variance / K (+ variance_ref / M), so bias2 is an unbiased
estimate of the squared bias per coordinate; it can be slightly negative for unbiased estimators.

The K estimates are computed in batched form: ``torch.func.vmap`` over ``torch.func.grad`` of the
surrogate, the noise drawn outside and passed in (chunked to bound memory), not K backward passes.
Estimators that consume the same uniforms share them (common random numbers): estimate k of every
estimator uses U[k, :S], so differences between estimators are not sampling noise. The probe's
noise comes from its own generator, so training follows the same random stream with or without
diagnostics.

Reference (``diagnostics.reference``):
- ``exact``: the model's closed form (toy) or enumeration of all latent configurations, when there
  are at most ``MAX_CONFIGS`` of them (e.g. <= 16 Bernoulli latents): E_q[f] = sum_z q(z|x) f(z),
  differentiated by autograd, in chunks of configurations.
- ``mc:NAME:M``: the mean of M draws of the unbiased estimator NAME (``reinforce`` is used with
  the leave-one-out baseline over ``REFERENCE_LOO`` samples per draw), with its own variance / M
  removed from bias2.
- ``auto``: exact when feasible, else ``mc:reinforce:AUTO_M``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from estimators import REGISTRY, ConfigError, Estimator, log_prob, uniform
from estimators.base import MAX_CONFIGS, all_configs, n_configs

GRAD_STATS_HEADER = ["step", "estimator", "param_group", "samples", "reference", "mean_norm",
                     "variance", "bias2", "mse", "cosine", "snr", "evals", "seconds_per_estimate"]
GROUPS = ("encoder", "decoder", "all")
AUTO_M = 100
REFERENCE_LOO = 10
CHUNK_FLOATS = 1 << 22          # per-chunk budget of stacked gradient floats (16 MiB in float32:
                                # measured fastest on CPU: the chunk stays in cache)


# --- configuration ------------------------------------------------------------------------------
def _buildable(name: str, kind: str, latent_shape, sequential: bool) -> str | None:
    """None if estimator ``name`` (default settings) can be probed on this model, else why not."""
    cls = REGISTRY[name]
    if kind not in cls.kinds:
        return f"does not support {kind} latents"
    if getattr(cls, "objective", "mean") != "mean":
        return "estimates the gradient of another objective (the multi-sample bound), not of E[f]"
    try:
        est = cls(kind, tuple(latent_shape))
    except ConfigError as e:
        return str(e)
    if sequential and est.multi_eval:
        return "evaluates f several times, which a sequential model cannot do"
    return None


def resolve_estimators(spec, trained: str, kind: str, sequential: bool,
                       latent_shape=None) -> list[str]:
    """Names for ``diagnostics.estimators``: None/'trained' = the trained one; 'all' = every
    registered estimator that can run on this model with its default settings (e.g. ``exact``
    only when the latent space is small enough to enumerate); a list or a comma-separated string
    of names (each must be able to run)."""
    if spec is None or spec == "trained":
        return [trained]
    if spec == "all":
        if latent_shape is None:
            return [n for n, c in sorted(REGISTRY.items()) if kind in c.kinds]
        names = [n for n in sorted(REGISTRY) if n == trained or
                 _buildable(n, kind, latent_shape, sequential) is None]
        return names
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
    if not names:
        raise ConfigError("diagnostics.estimators=[] is empty; accepted: null (the trained "
                          f"estimator), all, or names among {', '.join(sorted(REGISTRY))}")
    for n in names:
        if n not in REGISTRY:
            raise ConfigError(f"diagnostics.estimators contains unknown estimator {n!r}; accepted: "
                              f"all, or names among {', '.join(sorted(REGISTRY))}")
        if kind not in REGISTRY[n].kinds:
            raise ConfigError(f"diagnostics.estimators contains {n!r}, which does not support "
                              f"{kind} latents (it supports {', '.join(REGISTRY[n].kinds)})")
        why = None if latent_shape is None or n == trained else _buildable(n, kind, latent_shape, sequential)
        if why:
            raise ConfigError(f"diagnostics.estimators contains {n!r}, which cannot run on this "
                              f"model: {why}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Reference:
    mode: str                 # "exact" or "mc"
    estimator: str = ""
    draws: int = 0

    def __str__(self) -> str:
        return "exact" if self.mode == "exact" else f"mc:{self.estimator}:{self.draws}"


def parse_reference(spec: str, model) -> Reference:
    feasible = hasattr(model, "exact_objective") or n_configs(model.kind, model.latent_shape) <= MAX_CONFIGS
    spec = str(spec)
    if spec == "auto":
        return Reference("exact") if feasible else Reference("mc", "reinforce", AUTO_M)
    if spec == "exact":
        if not feasible:
            raise ConfigError(
                f"diagnostics.reference=exact is not feasible for model '{model.name}' with "
                f"{model.kind} latents of shape {tuple(model.latent_shape)} (more than {MAX_CONFIGS} "
                "configurations); use auto or mc:NAME:M")
        return Reference("exact")
    parts = spec.split(":")
    if len(parts) == 3 and parts[0] == "mc":
        name, m = parts[1], parts[2]
        if name not in REGISTRY or not REGISTRY[name].unbiased or model.kind not in REGISTRY[name].kinds:
            ok = [n for n, c in sorted(REGISTRY.items()) if c.unbiased and model.kind in c.kinds]
            raise ConfigError(f"diagnostics.reference={spec}: {name!r} is not an unbiased estimator "
                              f"for {model.kind} latents; accepted: {', '.join(ok)}")
        if not m.isdigit() or int(m) < 2:
            raise ConfigError(f"diagnostics.reference={spec}: M={m} must be an integer >= 2")
        return Reference("mc", name, int(m))
    raise ConfigError(f"diagnostics.reference={spec!r} is invalid; accepted: auto, exact, mc:NAME:M")


# --- the probe -----------------------------------------------------------------------------------
class _Surrogate(nn.Module):
    """model + estimator as one module, so that functional_call swaps the model's parameters for
    the whole computation, including the objective closure the estimator calls."""

    def __init__(self, model, estimator):
        super().__init__()
        self.model, self.estimator = model, estimator

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        logits = self.model.logits(x)
        s = self.estimator(logits, self.model.objective(x, logits), u=u).surrogate
        extra = self.model.extra_loss(x, logits)
        return s if extra is None else s + extra.mean()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Probe:
    def __init__(self, model, trained: Estimator, names: list[str], reference: Reference,
                 samples: int, x: Tensor, seed: int = 0):
        if samples < 2:
            raise ConfigError(f"diagnostics.samples={samples} is invalid: it must be an integer >= 2")
        self.model, self.trained, self.reference = model, trained, reference
        self.K, self.x, self.seed = int(samples), x, int(seed)
        self.estimators: dict[str, Estimator] = {}
        for n in names:
            self.estimators[n] = trained if n == trained.name else self._default(n)
        self.ref_estimator = None
        if reference.mode == "mc":
            samples_ref = REFERENCE_LOO if reference.estimator == "reinforce" else 1
            self.ref_estimator = REGISTRY[reference.estimator](model.kind, model.latent_shape,
                                                              samples=samples_ref)
        device = x.device
        for e in [*self.estimators.values(), self.ref_estimator]:
            if e is not None and e is not trained:
                e.to(device)
        self.gen = torch.Generator(device=device)
        enc = {id(p) for p in model.encoder_parameters()}
        dec = {id(p) for p in model.decoder_parameters()}
        named = dict(model.named_parameters())
        self.groups = {"encoder": [n for n, p in named.items() if id(p) in enc],
                       "decoder": [n for n, p in named.items() if id(p) in dec]}
        self.groups["all"] = list(named)
        self.P = sum(p.numel() for p in named.values())

    def _default(self, name: str) -> Estimator:
        cls = REGISTRY[name]
        est = cls(self.model.kind, self.model.latent_shape)
        if getattr(self.trained, "schedule", None) is not None and hasattr(est, "schedule"):
            est.schedule = self.trained.schedule           # relaxed estimators share the temperature
        return est

    # gradients of K estimates, stacked per parameter, accumulated into per-coordinate moments
    def _moments(self, est: Estimator, U: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        module = _Surrogate(self.model, est)
        params = {f"model.{n}": p.detach() for n, p in self.model.named_parameters()}
        x = self.x

        def loss(p, u):
            return functional_call(module, p, (x, u))

        gfn = vmap(grad(loss), in_dims=(None, 0))
        K = U.shape[0]
        chunk = max(1, min(K, CHUNK_FLOATS // max(self.P, 1)))
        # per-chunk mean and centred sum of squares (float32, [chunk, P] work), combined across
        # chunks in float64 with Chan et al.'s pairwise update (no cancellation at high SNR)
        mean = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        m2 = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        count = 0
        for i in range(0, K, chunk):
            g = gfn(params, U[i:i + chunk])
            nb = U[i:i + chunk].shape[0]
            for n, v in g.items():
                mb = v.mean(0)
                # out of place: a gradient that does not depend on u (e.g. the exact estimator's)
                # comes back from vmap as an expanded view, which cannot be written in place
                v = v - mb
                m2b = v.square_().sum(0).double()
                delta = mb.double() - mean[n]
                mean[n] += delta * (nb / (count + nb))
                m2[n] += m2b + delta.square() * (count * nb / (count + nb))
            count += nb
        return {n[len("model."):]: (mean[n], m2[n] / (K - 1)) for n in mean}

    def _noise(self, draws: int, n: int, logits_shape) -> Tensor:
        return uniform((draws, n, *logits_shape), self.x.new_empty(()), generator=self.gen)

    def exact_reference(self) -> dict[str, Tensor]:
        model, x = self.model, self.x
        params = [p for _, p in model.named_parameters()]
        names = [n for n, _ in model.named_parameters()]
        total = [torch.zeros_like(p, dtype=torch.float64) for p in params]

        def add(value: Tensor) -> None:
            gs = torch.autograd.grad(value, params, allow_unused=True)
            for t, g in zip(total, gs):
                if g is not None:
                    t += g.double()

        with torch.enable_grad():
            if hasattr(model, "exact_objective"):
                add(model.exact_objective(x))
            else:
                logits = model.logits(x)
                extra = model.extra_loss(x, logits)
                if extra is not None:
                    add(extra.mean())
                configs = all_configs(model.kind, model.latent_shape, x.device, x.dtype)
                rows = max(1, (1 << 16) // max(x.shape[0], 1))
                for i in range(0, configs.shape[0], rows):
                    logits = model.logits(x)
                    z = configs[i:i + rows, None].expand(-1, x.shape[0], *model.latent_shape)
                    q = log_prob(logits, z, model.kind).exp()            # [M, B]
                    f = model.objective(x, logits)(z)                    # [M, B]
                    add((q * f).sum(0).mean())
        return {n: t for n, t in zip(names, total)}

    @torch.no_grad()
    def run(self, step: int) -> list[list]:
        model, device = self.model, self.x.device
        was_training = [model.training, *(e.training for e in self.estimators.values())]
        model.eval()
        for e in self.estimators.values():
            e.eval()
            e.set_step(step)
        self.gen.manual_seed(self.seed * 7919 + step)
        logits_shape = (self.x.shape[0], *model.latent_shape)
        ref_var = None
        with torch.enable_grad():
            if self.reference.mode == "exact":
                g_ref = self.exact_reference()
            else:
                est = self.ref_estimator
                est.eval()
                U = self._noise(self.reference.draws, est.noise_shape(logits_shape)[0], logits_shape)
                mom = self._moments(est, U)
                g_ref = {n: m for n, (m, _) in mom.items()}
                ref_var = {n: v for n, (_, v) in mom.items()}
            nmax = max(e.noise_shape(logits_shape)[0] for e in self.estimators.values())
            U = self._noise(self.K, nmax, logits_shape)      # common random numbers
            rows = []
            for name, est in self.estimators.items():
                _sync(device)
                t0 = time.perf_counter()
                mom = self._moments(est, U[:, :est.noise_shape(logits_shape)[0]])
                _sync(device)
                per_estimate = (time.perf_counter() - t0) / self.K
                for group in GROUPS:
                    members = self.groups[group]
                    if not members:
                        continue
                    stats = group_stats(mom, g_ref, ref_var, members, self.K, self.reference)
                    rows.append([step, name, group, self.K, str(self.reference), *stats,
                                 est.evals, per_estimate])
        model.train(was_training[0])
        for e, t in zip(self.estimators.values(), was_training[1:]):
            e.train(t)
        return rows


def group_stats(mom, g_ref, ref_var, members, K, reference) -> list[float]:
    mean = torch.cat([mom[n][0].flatten() for n in members])
    var_c = torch.cat([mom[n][1].flatten() for n in members])
    ref = torch.cat([g_ref[n].flatten() for n in members])
    P = mean.numel()
    variance = var_c.mean().item()
    bias2 = (mean - ref).pow(2).sum().item() / P - variance / K
    if ref_var is not None:
        bias2 -= torch.cat([ref_var[n].flatten() for n in members]).mean().item() / reference.draws
    norm, rnorm = mean.norm().item(), ref.norm().item()
    cosine = (mean @ ref).item() / (norm * rnorm) if norm > 0 and rnorm > 0 else float("nan")
    snr = norm / math.sqrt(P * variance) if variance > 0 else float("inf")
    return [norm, variance, bias2, bias2 + variance, cosine, snr]
