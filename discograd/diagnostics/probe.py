"""The gradient probe: at a probe step, with the parameters frozen and a fixed diagnostic
minibatch, each probed estimator draws K = ``diagnostics.samples`` independent gradient estimates
of the training objective (the estimator's gradient of E[f] plus the model's direct terms, e.g.
the analytic KL: exactly the gradient the training step would apply), and the statistics of
diagnostics/stats.py compare them with a reference (diagnostics/reference.py). One row of
grad_stats.csv per estimator and parameter group.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from discograd.estimators import ConfigError, Estimator, log_prob, uniform
from discograd.estimators.base import all_configs
from discograd.optim import Adam
from discograd.step import Step
from .reference import (PILOT_DRAWS, Reference, build_comparator, reference_candidates,
                        reference_estimator)
from .stats import GROUPS, JACKKNIFE_GROUPS, grad_stats_row, group_stats

CHUNK_FLOATS = 1 << 22          # per-chunk budget of stacked gradient floats (16 MiB in float32:
                                # measured fastest on CPU: the chunk stays in cache)


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
    ``aux=fitted:N`` says it had N inner steps in all; ``aux=none``: nothing to fit. An entry of
    ``names`` may also be an Estimator instance (a user's, :func:`probe`): measured as it is
    (``aux=given``), never fitted or moved; or a pair (label, instance), the label then naming its
    rows (a label already taken gets ``#i``).

    ``model``: what the probe reads of a model (a LatentModel, or :class:`~.api.Problem` around a
    user's functions): ``logits(x)``, ``objective(x, logits)``, ``extra_loss(x, logits)``,
    ``encoder_parameters()``, ``decoder_parameters()``, ``kind``, ``latent_shape``, ``name``,
    ``sequential``, and optionally ``exact_objective(x)``."""

    def __init__(self, model, trained: Estimator | None, names: list, reference: Reference,
                 samples: int, x: Tensor, seed: int = 0, trained_cfg=None, fit_steps: int = 0,
                 fit_lr: float = 1e-3, fit_batch=None):
        if samples < 2:
            # the runner refuses diagnostics.samples < 2 in its own words first (validate.py)
            raise ConfigError(f"samples={samples} is invalid: it must be an integer >= 2 (the "
                              "gradient estimates per probed estimator: a variance needs two)")
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
            self.given = set()              # estimators handed over as instances: measured as they are
            for n in names:
                if isinstance(n, (Estimator, tuple)):      # (label, estimator) or an estimator
                    label, est = n if isinstance(n, tuple) else (n.name, n)
                    if label in self.estimators:
                        label = f"{label}#{len(self.estimators) + 1}"
                    self.estimators[label] = est
                    self.given.add(label)
                elif trained is not None and n == trained.name:
                    self.estimators[n] = trained
                else:
                    self.estimators[n] = build_comparator(n, model.kind, model.latent_shape, trained_cfg)
            if reference.mode == "mc":
                self.ref_estimator = reference_estimator(reference.estimator, model)
            self.candidates = reference_candidates(model) if reference.mode == "pick" else {}
        device = x.device
        for n, e in [*self.estimators.items(), ("", self.ref_estimator), *self.candidates.items()]:
            if e is not None and e is not trained and n not in self.given:
                e.to(device)
        self.fitted = {n: 0 for n, e in self.estimators.items()
                       if e is not trained and n not in self.given and e.adaptive}
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
        if name in self.given:
            return "given"
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
        module = Step(self.model, est)
        params = {f"model.{n}": p.detach() for n, p in self.model.named_parameters()}
        x = self.x

        def loss(p, u):
            return functional_call(module, p, (x, u))[0]       # the surrogate

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
        for n, e in self.estimators.items():
            e.eval()
            if n not in self.given:            # a user's estimator keeps its own step (schedule)
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
                    rows.append(grad_stats_row({
                        "step": step, "estimator": name, "param_group": group, "samples": self.K,
                        "reference": str(reference), "evals": est.evals,
                        "seconds_per_estimate": per_estimate, "aux": self.aux(name),
                        "batch_size": self.x.shape[0], **st}))
        model.train(was_training[0])
        for e, t in zip(self.estimators.values(), was_training[1:]):
            e.train(t)
        return rows
