"""Gradient bias and variance diagnostics (README, "Gradient diagnostics"; the definitions are a
contract).

At a probe step, with the parameters frozen and a fixed diagnostic minibatch (by default of the
training batch size), each estimator in ``diagnostics.estimators`` draws K = ``diagnostics.samples``
independent gradient estimates g_1..g_K of the training objective (the estimator's gradient of E[f]
plus the model's direct terms, e.g. the analytic KL, i.e. exactly the gradient the training step
would apply). For each parameter group (``encoder``: upstream of the logits, ``decoder``: inside f,
``all``) with P coordinates and a reference gradient g*:

    g_bar     = 1/K sum_k g_k
    variance  = 1/P sum_p  1/(K-1) sum_k (g_kp - g_bar_p)^2
    bias2     = ||g_bar - g*||^2 / P - variance / K  [- variance_ref / M for a sampled reference]
    mean_norm2 = ||g_bar||^2 - P variance / K        (unbiased for ||E g||^2; may be negative)
    mean_norm = sqrt(max(mean_norm2, 0)),  snr = mean_norm / sqrt(P variance)
    cosine    = g_bar . g* / sqrt(mean_norm2 ||E g*||^2_hat), NaN unless resolved (below)
    mse       = bias2 + variance

E||g_bar - g*||^2 / P = bias^2 + variance / K (+ variance_ref / M), so bias2 is an unbiased
estimate of the squared bias per coordinate; E||g_bar||^2 = ||E g||^2 + P variance / K, which is
why the raw ||g_bar|| (``mean_norm_raw``) gives a noisy estimator an SNR floor of about 1/sqrt(K).
Standard errors (``bias2_se``, ``mean_norm2_se``) come from a delete-one-group jackknife (Efron &
Stein 1981) over G = 10 groups of the K estimates, paired with G groups of the reference's M draws
when it is sampled: the groups are independent, so the errors hold whatever the correlation
between coordinates.

Comparators (every probed estimator but the trained one) are built with the trained estimator's
shared settings and, when they have state of their own, fitted before they are measured
(:class:`Probe`); the ``aux`` column says which state was measured.

Reference (``diagnostics.reference``):
- ``exact``: the model's closed form (toy) or enumeration of all latent configurations, when there
  are at most ``MAX_CONFIGS`` of them (e.g. <= 16 Bernoulli latents): E_q[f] = sum_z q(z|x) f(z),
  differentiated by autograd, in chunks of configurations.
- ``mc:NAME:M``: the mean of M draws of the unbiased estimator NAME (``reinforce`` is used with
  the leave-one-out baseline over ``REFERENCE_LOO`` samples per draw), with its own variance / M
  removed from bias2.
- ``auto``: exact when feasible, else the most precise sampled reference for a budget of
  ``AUTO_EVALS`` f-evaluations per example (AUTO_M draws of reinforce with REFERENCE_LOO
  samples): at each probe every candidate (:func:`reference_candidates`: e.g. disarm, arm, rloo,
  muprop, reinforce on Bernoulli latents) is measured on ``PILOT_DRAWS`` draws, and the one with
  the smallest variance x evals is drawn budget / evals times (the ``reference`` column names it).
  On the linear VAE, DisARM's variance is about 1/70 of REINFORCE's, so the bias2 it can resolve
  is far smaller than the old fixed ``mc:reinforce:100``'s at the same cost.

Cosine: ``cosine_se`` is its jackknife standard error, ``cosine_lo``/``cosine_hi`` the interval
cosine +- 2 SE clipped to [-1, 1]; ``cosine`` itself is NaN unless it is resolved (see
:func:`group_stats`): a ratio with a noisy denominator is never clipped into a false 1.000.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from omegaconf import OmegaConf

from discograd.estimators import REGISTRY, ConfigError, Estimator, build_estimator, log_prob, uniform
from discograd.estimators.base import MAX_CONFIGS, all_configs, n_configs
from .config import estimator_defaults
from .optim import Adam

GRAD_STATS_HEADER = ["step", "estimator", "param_group", "samples", "reference", "mean_norm",
                     "variance", "bias2", "mse", "cosine", "snr", "evals", "seconds_per_estimate",
                     # added after the contract's columns (their meaning is in the module doc)
                     "aux", "batch_size", "mean_norm2", "mean_norm2_se", "bias2_se",
                     "mean_norm_raw", "snr_raw", "cosine_raw", "cosine_se", "cosine_lo", "cosine_hi"]
GROUPS = ("encoder", "decoder", "all")
JACKKNIFE_GROUPS = 10           # groups of the K estimates for the standard errors
AUTO_M = 100
REFERENCE_LOO = 10
AUTO_EVALS = AUTO_M * REFERENCE_LOO   # f-evaluations per example that ``auto`` spends on its reference
PILOT_DRAWS = 16                # draws per candidate when ``auto`` measures the candidates' precision
COSINE_HALF_WIDTH = 0.2         # a cosine is "resolved" when 2 SE <= this (else only its interval)
CHUNK_FLOATS = 1 << 22          # per-chunk budget of stacked gradient floats (16 MiB in float32:
                                # measured fastest on CPU: the chunk stays in cache)


# --- configuration ------------------------------------------------------------------------------
def _buildable(name: str, kind: str, latent_shape, sequential: bool) -> str | None:
    """None if estimator ``name`` (default settings) can be probed on this model, else why not."""
    cls = REGISTRY[name]
    if kind not in cls.kinds:
        return f"does not support {kind} latents"
    if cls.objective != "mean":
        return "estimates the gradient of another objective (the multi-sample bound), not of E[f]"
    try:
        with torch.random.fork_rng(devices=[]):      # a trial build draws no training randomness
            est = build_estimator(estimator_defaults(name), kind, tuple(latent_shape))
    except ConfigError as e:
        return str(e)
    if sequential and est.multi_eval:
        return "evaluates f several times, which a sequential model cannot do"
    return None


BASIC = ("st", "reinforce", "gumbel", "st_gumbel")


def probe_plan(dg, estimator_name: str, model) -> tuple[list[str], object]:
    """(the probed estimators, the reference) that the ``diagnostics`` config ``dg`` asks for on
    ``model`` trained with ``estimator_name``; ConfigError names a value that cannot work."""
    spec = dg.estimators
    if spec is not None and not isinstance(spec, str):
        spec = list(spec)
    names = resolve_estimators(spec, estimator_name, model.kind, model.sequential,
                               model.latent_shape)
    return names, parse_reference(dg.reference, model)


def resolve_estimators(spec, trained: str, kind: str, sequential: bool,
                       latent_shape=None) -> list[str]:
    """Names for ``diagnostics.estimators``: None/'trained' = the trained one; 'basic' (the
    default) = the trained one and st, reinforce, gumbel, st_gumbel (those that can run); 'all' =
    every registered estimator that can run on this model (e.g. ``exact`` only when the latent
    space is small enough to enumerate; not ``vimco``, whose target is another objective); a list
    or a comma-separated string of names (each must be able to run)."""
    if spec is None or spec == "trained":
        return [trained]
    if spec in ("all", "basic"):
        pool = sorted(REGISTRY) if spec == "all" else BASIC
        # a trained estimator of another objective (vimco) is not probed: the others are, at
        # the states it trains through
        first = [trained] if _objective(REGISTRY[trained]) == "mean" else []
        if latent_shape is None:
            return list(dict.fromkeys([*first, *(n for n in pool if kind in REGISTRY[n].kinds)]))
        return list(dict.fromkeys([*first, *(n for n in pool if (n == trained and first) or
                                             _buildable(n, kind, latent_shape, sequential) is None)]))
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
    if not names:
        raise ConfigError("diagnostics.estimators=[] is empty; accepted: null (the trained "
                          f"estimator), basic, all, or names among {', '.join(sorted(REGISTRY))}")
    for n in names:
        if n not in REGISTRY:
            raise ConfigError(f"diagnostics.estimators contains unknown estimator {n!r}; accepted: "
                              f"basic, all, or names among {', '.join(sorted(REGISTRY))}")
        if kind not in REGISTRY[n].kinds:
            raise ConfigError(f"diagnostics.estimators contains {n!r}, which does not support "
                              f"{kind} latents (it supports {', '.join(REGISTRY[n].kinds)})")
        why = None if latent_shape is None or n == trained else _buildable(n, kind, latent_shape, sequential)
        if why:
            raise ConfigError(f"diagnostics.estimators contains {n!r}, which cannot run on this "
                              f"model: {why}")
    return list(dict.fromkeys(names))


def _objective(cls) -> str:
    """What an estimator class estimates the gradient of: "mean" (E_q[f]) or another objective
    (vimco: "multisample", the S-sample bound)."""
    return cls.objective


def _reference_capable(name: str, kind: str) -> bool:
    cls = REGISTRY[name]
    return cls.unbiased and _objective(cls) == "mean" and kind in cls.kinds


def build_comparator(name: str, kind: str, latent_shape, trained_cfg=None,
                     overrides: dict | None = None) -> Estimator:
    """Estimator ``name`` as ``estimator=NAME`` would build it, taking the trained estimator's
    settings where the two share a key (``samples``, ``baseline``, ``tau``, ``tau_init``, ...):
    a comparator is measured in the configuration the user trains. Where a shared value is
    invalid for it (e.g. rloo needs samples >= 2), its own defaults are kept."""
    base = estimator_defaults(name)
    if overrides:
        base = OmegaConf.merge(base, overrides)
    if trained_cfg is not None:
        shared = {k: trained_cfg[k] for k in trained_cfg if k != "name" and k in base}
        try:
            return build_estimator(OmegaConf.merge(base, shared), kind, tuple(latent_shape))
        except ConfigError:
            pass
    return build_estimator(base, kind, tuple(latent_shape))


@dataclass(frozen=True)
class Reference:
    mode: str                 # "exact", "mc", or "pick" (auto without enumeration)
    estimator: str = ""
    draws: int = 0            # mc: draws M; pick: the budget in f-evaluations per example

    def __str__(self) -> str:
        if self.mode == "pick":
            return f"mc:most-precise:{self.draws}-evals"
        return "exact" if self.mode == "exact" else f"mc:{self.estimator}:{self.draws}"


def parse_reference(spec: str, model) -> Reference:
    feasible = hasattr(model, "exact_objective") or n_configs(model.kind, model.latent_shape) <= MAX_CONFIGS
    spec = str(spec)
    if spec == "auto":
        from .launch import SHRINK_DRAWS, shrink_steps      # DISCOGRAD_SHRINK: a smoke test
        draws = AUTO_M if shrink_steps() is None else min(AUTO_M, SHRINK_DRAWS)
        return Reference("exact") if feasible else Reference("pick", "", draws * REFERENCE_LOO)
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
        ok = [n for n in sorted(REGISTRY) if _reference_capable(n, model.kind)]
        if name not in REGISTRY or not _reference_capable(name, model.kind):
            why = ("it estimates the gradient of another objective (the multi-sample bound), not "
                   "of E[f]" if name in REGISTRY and _objective(REGISTRY[name]) != "mean"
                   else f"it is not an unbiased estimator of the gradient of E[f] for {model.kind} "
                   "latents")
            raise ConfigError(f"diagnostics.reference={spec}: {name!r} cannot be the reference: "
                              f"{why}; accepted: exact, auto, or mc:NAME:M with NAME among "
                              f"{', '.join(ok)}")
        if not m.isdigit() or int(m) < 2:
            raise ConfigError(f"diagnostics.reference={spec}: M={m} must be an integer >= 2")
        return Reference("mc", name, int(m))
    raise ConfigError(f"diagnostics.reference={spec!r} is invalid; accepted: auto, exact, mc:NAME:M")


def _reference_estimator(name: str, model) -> Estimator:
    """A reference estimator as ``mc:NAME:M`` builds it: its defaults, except that ``reinforce``
    takes the leave-one-out baseline over ``REFERENCE_LOO`` samples per draw."""
    extra = {"samples": REFERENCE_LOO} if name == "reinforce" else None
    return build_comparator(name, model.kind, model.latent_shape, overrides=extra)


def reference_candidates(model) -> dict[str, Estimator]:
    """What ``auto`` chooses among when it cannot enumerate: every unbiased estimator of the
    gradient of E[f] for the model's latents that has no state of its own to fit (a REBAR or
    RELAX reference would have to be trained first) and can run on the model, built as
    :func:`_reference_estimator` builds it; reinforce (leave-one-out over REFERENCE_LOO samples)
    always."""
    out = {}
    for name in sorted(REGISTRY):
        if name == "exact" or not _reference_capable(name, model.kind):
            continue
        if name != "reinforce" and _buildable(name, model.kind, model.latent_shape,
                                              model.sequential) is not None:
            continue
        est = _reference_estimator(name, model)
        if est.adaptive and name != "reinforce":
            continue
        out[name] = est
    return out


# --- the probe -----------------------------------------------------------------------------------
class _Surrogate(nn.Module):
    """model + estimator as one module, so that functional_call swaps the model's parameters for
    the whole computation, including the objective closure the estimator calls."""

    def __init__(self, model, estimator):
        super().__init__()
        self.model, self.estimator = model, estimator

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        from .train import step_forward
        return step_forward(self.model, self.estimator, x, u)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Probe:
    """Measures the estimators of ``names`` at the model's current parameters (see the module
    doc). ``trained`` is the estimator being trained (measured as it is: ``aux=trained``); every
    other one is a comparator built by :func:`build_comparator` from ``trained_cfg`` (the trained
    estimator's config; None: defaults). A comparator with state of its own (``adaptive``: a learned
    baseline, an EMA, REBAR's eta and temperature, RELAX's net) is *fitted* before it is measured:
    ``fit_steps`` inner steps of its own objective at each probe, on minibatches drawn by
    ``fit_batch(generator)`` (default: the diagnostic batch), with Adam at ``fit_lr``, never
    touching the model; its state and optimizer carry over from probe to probe (and into
    checkpoints, :meth:`state_dict`), so it follows the model as a trained one would.
    ``aux=fitted:N`` says it had N inner steps in all; ``aux=none``: nothing to fit."""

    def __init__(self, model, trained: Estimator, names: list[str], reference: Reference,
                 samples: int, x: Tensor, seed: int = 0, trained_cfg=None, fit_steps: int = 0,
                 fit_lr: float = 1e-3, fit_batch=None):
        if samples < 2:
            raise ConfigError(f"diagnostics.samples={samples} is invalid: it must be an integer >= 2")
        self.model, self.trained, self.reference = model, trained, reference
        self.K, self.x, self.seed = int(samples), x, int(seed)
        self.fit_steps, self.fit_lr = int(fit_steps), float(fit_lr)
        self.fit_batch = fit_batch if fit_batch is not None else (lambda generator: self.x)
        self.estimators: dict[str, Estimator] = {}
        self.ref_estimator = None
        # comparators with networks (RELAX, a learned baseline) initialise them from the global
        # CPU generator: fork it, so that a run trains identically with and without diagnostics
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 7919 + 1)
            for n in names:
                self.estimators[n] = trained if n == trained.name else \
                    build_comparator(n, model.kind, model.latent_shape, trained_cfg)
            if reference.mode == "mc":
                self.ref_estimator = _reference_estimator(reference.estimator, model)
            self.candidates = reference_candidates(model) if reference.mode == "pick" else {}
        device = x.device
        for e in [*self.estimators.values(), self.ref_estimator, *self.candidates.values()]:
            if e is not None and e is not trained:
                e.to(device)
        self.fitted = {n: 0 for n, e in self.estimators.items() if e is not trained and e.adaptive}
        self.optimizers = {n: Adam([p for p in self.estimators[n].parameters() if p.requires_grad],
                                   lr=self.fit_lr)
                           for n in self.fitted
                           if any(p.requires_grad for p in self.estimators[n].parameters())}
        self.gen = torch.Generator(device=device)
        self.fit_gen = torch.Generator(device=device)
        enc = {id(p) for p in model.encoder_parameters()}
        dec = {id(p) for p in model.decoder_parameters()}
        named = dict(model.named_parameters())
        self.groups = {"encoder": [n for n, p in named.items() if id(p) in enc],
                       "decoder": [n for n, p in named.items() if id(p) in dec]}
        self.groups["all"] = list(named)
        self.P = sum(p.numel() for p in named.values())

    def aux(self, name: str) -> str:
        if self.estimators[name] is self.trained:
            return "trained"
        return f"fitted:{self.fitted[name]}" if name in self.fitted else "none"

    # --- comparators' own state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"fitted": dict(self.fitted),
                "estimators": {n: self.estimators[n].state_dict() for n in self.fitted},
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}}

    def load_state_dict(self, s: dict) -> None:
        for n in self.fitted:
            if n in s.get("fitted", {}):
                self.estimators[n].load_state_dict(s["estimators"][n])
                self.fitted[n] = int(s["fitted"][n])
                if n in self.optimizers:
                    self.optimizers[n].load_state_dict(s["optimizers"][n])

    def fit(self, step: int) -> None:
        """``fit_steps`` steps of each adaptive comparator's own objective (baseline regression,
        REBAR/RELAX's variance minimisation, the EMA's update) at the current, frozen model."""
        if not self.fitted or self.fit_steps <= 0:
            return
        model = self.model
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:                       # the model is never touched (nor differentiated)
            p.requires_grad_(False)
        self.fit_gen.manual_seed(self.seed * 7919 + step + (1 << 40))
        try:
            with torch.enable_grad():
                for name in self.fitted:
                    est, opt = self.estimators[name], self.optimizers.get(name)
                    est.train()
                    est.set_step(step)
                    own = [p for p in est.parameters() if p.requires_grad]
                    for _ in range(self.fit_steps):
                        x = self.fit_batch(self.fit_gen)
                        # the logits require grad (REBAR / RELAX differentiate the estimate with
                        # respect to them), the model's parameters do not
                        logits = model.logits(x).detach().requires_grad_(True)
                        u = uniform(est.noise_shape(tuple(logits.shape)), logits, generator=self.fit_gen)
                        if opt is not None:
                            opt.zero_grad()
                        e = est(logits, model.objective(x, logits), u=u)
                        if opt is not None:
                            # the surrogate's part on the estimator's parameters is their own
                            # objective (e.g. the baseline regression); REBAR/RELAX accumulate
                            # theirs into .grad during the forward pass
                            grads = torch.autograd.grad(e.surrogate, own, allow_unused=True)
                            for p, g in zip(own, grads):
                                if g is not None:
                                    p.grad = g if p.grad is None else p.grad + g
                            opt.step()
                    self.fitted[name] += self.fit_steps
                    if opt is not None:
                        opt.zero_grad()
        finally:
            for p in frozen:
                p.requires_grad_(True)

    # gradients of K estimates, stacked per parameter, accumulated into per-coordinate moments
    def _moments(self, est: Estimator, U: Tensor, G: int = JACKKNIFE_GROUPS) -> dict[str, tuple]:
        """Per parameter name: (mean [shape], per-coordinate variance [shape], sums of the
        estimates per jackknife group [G, shape], sums of their squared norms [G], group sizes
        [G]), all float64."""
        module = _Surrogate(self.model, est)
        params = {f"model.{n}": p.detach() for n, p in self.model.named_parameters()}
        x = self.x

        def loss(p, u):
            return functional_call(module, p, (x, u))

        gfn = vmap(grad(loss), in_dims=(None, 0))
        K = U.shape[0]
        G = min(G, K)
        gid_all = torch.arange(K, device=U.device) * G // K        # group of estimate k
        sizes = torch.bincount(gid_all, minlength=G).double()
        chunk = max(1, min(K, CHUNK_FLOATS // max(self.P, 1)))
        # per-chunk mean and centred sum of squares (float32, [chunk, P] work), combined across
        # chunks in float64 with Chan et al.'s pairwise update (no cancellation at high SNR)
        mean = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        m2 = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        gsum = {n: torch.zeros((G, *p.shape), dtype=torch.float64, device=p.device)
                for n, p in params.items()}
        gsq = {n: torch.zeros(G, dtype=torch.float64, device=p.device) for n, p in params.items()}
        count = 0
        for i in range(0, K, chunk):
            g = gfn(params, U[i:i + chunk])
            nb = U[i:i + chunk].shape[0]
            gid = gid_all[i:i + nb]
            for n, v in g.items():
                v = v.expand(nb, *params[n].shape)
                # group sums of this chunk in float32 (a few estimates each), added in float64:
                # no float64 copy of the [chunk, P] gradients
                part = v.new_zeros((gsum[n].shape[0], *params[n].shape)).index_add_(0, gid, v)
                gsum[n] += part
                gsq[n].index_add_(0, gid, v.reshape(nb, -1).square().sum(1, dtype=torch.float64))
                mb = v.mean(0)
                # out of place: a gradient that does not depend on u (e.g. the exact estimator's)
                # comes back from vmap as an expanded view, which cannot be written in place
                v = v - mb
                m2b = v.square_().sum(0).double()
                delta = mb.double() - mean[n]
                mean[n] += delta * (nb / (count + nb))
                m2[n] += m2b + delta.square() * (count * nb / (count + nb))
            count += nb
        return {n[len("model."):]: (mean[n], m2[n] / (K - 1), gsum[n], gsq[n], sizes) for n in mean}

    def _noise(self, draws: int, n: int, logits_shape) -> Tensor:
        return uniform((draws, n, *logits_shape), self.x.new_empty(()), generator=self.gen)

    def pick_reference(self, logits_shape) -> tuple[Reference, Estimator]:
        """``auto`` without enumeration: the candidate (:func:`reference_candidates`) with the
        smallest measured variance x cost, i.e. the most precise reference for a budget of
        ``self.reference.draws`` f-evaluations per example. Each candidate's total gradient
        variance over the encoder parameters (where the estimators differ: the figures and
        tables show that group) is measured on ``PILOT_DRAWS`` draws at the current parameters;
        the chosen one gets M = budget / its evals draws (at least 2). Measured at every probe,
        from the probe's seeded generator: deterministic, and it follows the model."""
        scores = {}
        for name, est in self.candidates.items():
            est.eval()
            U = self._noise(PILOT_DRAWS, est.noise_shape(logits_shape)[0], logits_shape)
            mom = self._moments(est, U, 2)
            total = sum(mom[n][1].sum().item() for n in self.groups["encoder"])
            scores[name] = total * est.evals
        name = min(scores, key=lambda n: (scores[n], n))
        est = self.candidates[name]
        M = max(2, self.reference.draws // est.evals)
        return Reference("mc", name, M), est

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
        self.fit(step)
        for e in self.estimators.values():
            e.eval()
        self.gen.manual_seed(self.seed * 7919 + step)
        logits_shape = (self.x.shape[0], *model.latent_shape)
        g_ref = ref_mom = None
        reference, est = self.reference, self.ref_estimator
        with torch.enable_grad():
            if reference.mode == "pick":
                reference, est = self.pick_reference(logits_shape)
            M = reference.draws
            G = min(JACKKNIFE_GROUPS, self.K, M if reference.mode == "mc" else self.K)
            if reference.mode == "exact":
                g_ref = self.exact_reference()
            else:
                est.eval()
                U = self._noise(M, est.noise_shape(logits_shape)[0], logits_shape)
                ref_mom = self._moments(est, U, G)
            nmax = max(e.noise_shape(logits_shape)[0] for e in self.estimators.values())
            U = self._noise(self.K, nmax, logits_shape)      # common random numbers
            rows = []
            for name, est in self.estimators.items():
                _sync(device)
                t0 = time.perf_counter()
                mom = self._moments(est, U[:, :est.noise_shape(logits_shape)[0]], G)
                _sync(device)
                per_estimate = (time.perf_counter() - t0) / self.K
                for group in GROUPS:
                    members = self.groups[group]
                    if not members:
                        continue
                    st = group_stats(mom, members, self.K, g_ref, ref_mom, M)
                    rows.append([step, name, group, self.K, str(reference),
                                 *(st[c] for c in GRAD_STATS_HEADER[5:11]), est.evals,
                                 per_estimate, self.aux(name), self.x.shape[0],
                                 *(st[c] for c in GRAD_STATS_HEADER[15:])])
        model.train(was_training[0])
        for e, t in zip(self.estimators.values(), was_training[1:]):
            e.train(t)
        return rows


def _jackknife_se(values: Tensor) -> float:
    """Standard error of a statistic from its G leave-one-group-out values (Efron & Stein)."""
    G = values.numel()
    return math.sqrt((G - 1) / G * (values - values.mean()).square().sum().item())


def _flat(mom, members, i: int) -> Tensor:
    """Field i of the moments of ``members``, flattened and concatenated along the coordinates
    (the group sums, field 2, keep their leading group axis)."""
    if i == 2:
        return torch.cat([mom[n][2].flatten(1) for n in members], 1)
    return torch.cat([mom[n][i].flatten() for n in members])


def _leave_one_out(mom, members, K: int) -> tuple[Tensor, Tensor]:
    """For each jackknife group j: the mean [G, P] of the estimates outside group j and their
    per-coordinate variance averaged over coordinates [G], from the group sums S_j and the sums of
    squared norms Q_j (sum of squared deviations = Q - ||S||^2 / n)."""
    S = _flat(mom, members, 2)
    Q = sum(mom[n][3] for n in members)
    n_out = K - mom[members[0]][4]
    S_out = S.sum(0, keepdim=True) - S
    ss_out = (Q.sum() - Q) - S_out.square().sum(1) / n_out
    return S_out / n_out[:, None], ss_out / (n_out - 1) / S.shape[1]


def group_stats(mom, members, K: int, g_ref=None, ref_mom=None, M: int = 0) -> dict[str, float]:
    """The statistics of one parameter group (module doc), noise-corrected, with jackknife
    standard errors (delete one of G groups of the K estimates, and of the reference's M draws
    when it is sampled: the groups are independent units). ``g_ref``: an exact reference
    gradient (dict of tensors), or ``ref_mom``: the moments of M reference draws. Returns a dict
    keyed by grad_stats.csv column."""
    mean, var_c = _flat(mom, members, 0), _flat(mom, members, 1)
    P = mean.numel()
    variance = var_c.mean().item()
    if ref_mom is None:
        ref = torch.cat([g_ref[n].flatten() for n in members])
        ref_noise = 0.0
    else:                      # E||g* - E g*||^2 / P of the sampled reference is removed too
        ref = _flat(ref_mom, members, 0)
        ref_noise = _flat(ref_mom, members, 1).mean().item() / M
    bias2 = (mean - ref).pow(2).sum().item() / P - variance / K - ref_noise
    # ||g_bar||^2 overestimates ||E g||^2 by P variance / K: the unbiased estimate, and its clip
    norm2_raw = mean.square().sum().item()
    norm2 = norm2_raw - P * variance / K
    norm_raw, norm = math.sqrt(norm2_raw), math.sqrt(max(norm2, 0.0))
    ref2 = ref.square().sum().item() - P * ref_noise          # unbiased ||E g*||^2
    dot = (mean @ ref).item()                                 # unbiased E g . E g* (independent)
    rnorm_raw = ref.norm().item()
    cosine_raw = dot / (norm_raw * rnorm_raw) if norm_raw > 0 and rnorm_raw > 0 else math.nan
    scale = math.sqrt(P * variance)
    snr = norm / scale if variance > 0 else math.inf
    snr_raw = norm_raw / scale if variance > 0 else math.inf
    # jackknife: leave-one-group-out values of bias2, of the corrected ||E g||^2 and of the cosine
    G = mom[members[0]][4].numel()
    bias2_se = norm2_se = cosine_se = math.nan
    if G >= 2 and K - mom[members[0]][4].max().item() >= 2:
        mean_out, var_out = _leave_one_out(mom, members, K)
        n_out = K - mom[members[0]][4]
        ref_out, ref_noise_out = ref[None], 0.0
        if ref_mom is not None:
            ref_out, rvar_out = _leave_one_out(ref_mom, members, M)
            ref_noise_out = rvar_out / (M - ref_mom[members[0]][4])
        bias2_out = (mean_out - ref_out).square().sum(1) / P - var_out / n_out - ref_noise_out
        norm2_out = mean_out.square().sum(1) - P * var_out / n_out
        ref2_out = ref_out.square().sum(1) - P * ref_noise_out
        bias2_se, norm2_se = _jackknife_se(bias2_out), _jackknife_se(norm2_out)
        if bool((norm2_out > 0).all()) and bool((ref2_out > 0).all()):
            cos_out = (mean_out * ref_out).sum(1) / (norm2_out * ref2_out).sqrt()
            cosine_se = _jackknife_se(cos_out)
        else:            # a leave-one-out denominator at or below zero: no interval
            cosine_se = math.inf
    # the cosine of E g with E g*: a ratio of unbiased estimates, consistent but not unbiased,
    # and unbounded when a denominator is noisy: never clipped into [-1, 1] (a clipped 1.000 is
    # not a measurement). It is reported (``cosine``) only when resolved: ||E g||^2 and ||E g*||^2
    # above zero by 2 SE, the estimate inside [-1, 1] and an interval cosine +- 2 SE no wider
    # than +-COSINE_HALF_WIDTH; the interval itself (clipped to the cosine's range) is always
    # written.
    est = dot / math.sqrt(norm2 * ref2) if norm2 > 0 and ref2 > 0 else math.nan
    if P == 1 and math.isfinite(est):     # one coordinate: the cosine is the sign, exactly
        est, cosine_se = math.copysign(1.0, dot), 0.0
    lo = hi = math.nan
    if math.isfinite(est) and math.isfinite(cosine_se):
        lo, hi = max(-1.0, est - 2 * cosine_se), min(1.0, est + 2 * cosine_se)
    elif math.isfinite(est):
        lo, hi = -1.0, 1.0
    if lo > hi:          # the whole interval outside [-1, 1]: no cosine is consistent with it
        lo = hi = math.nan
    resolved = (math.isfinite(est) and -1.0 <= est <= 1.0 and not (norm2 < 2 * norm2_se)
                and 2 * cosine_se <= COSINE_HALF_WIDTH and lo <= hi)
    cosine = est if resolved else math.nan
    return {"mean_norm": norm, "variance": variance, "bias2": bias2, "mse": bias2 + variance,
            "cosine": cosine, "snr": snr, "mean_norm2": norm2, "mean_norm2_se": norm2_se,
            "bias2_se": bias2_se, "mean_norm_raw": norm_raw, "snr_raw": snr_raw,
            "cosine_raw": cosine_raw, "cosine_se": cosine_se, "cosine_lo": lo, "cosine_hi": hi}
