"""Certification of an estimator's mean: z-tests against the exact gradient on small problems
(docs/api.md, "Certification").

Any object with the estimator interface can be certified: ``est(logits, f)`` returning an
Estimate (or anything with a ``surrogate``, or the surrogate tensor itself), whose surrogate's
gradient is the estimate of d/dtheta mean_b E_{z ~ q(logits_b)}[f_b(z)]. The problems are small
enough to enumerate (3 Bernoulli latents; 2 categorical latents of 3 classes), and f has what
real models have: parameters of its own (``theta``) and a direct dependence on the logits (a term
log q(z | logits), as a sampled KL has), besides a nonlinear dependence on z.

Method (the one the test suite uses for every estimator, tests/test_estimators.py): a minibatch
of N identical rows, f acting per row, so row b of the gradient times N is one independent
estimate of the per-row gradient. Each coordinate is z-tested, |mean - exact| < z_crit * se, with
z_crit Bonferroni-corrected over every coordinate of the certificate (family-wise false alarm
``alpha``), and the test's power is stated: (z_crit + 3) * se <= detect, with detect a fraction
``detect`` of each coordinate's exact gradient (floored at half the root-mean-square
coordinate). Draws are added until that power is reached or ``max_draws`` are spent: a group
that passes without the power to see a deviation of that size is ``underpowered``, not
``pass``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from discograd.errors import ConfigError
from discograd.latents import all_configs, log_prob

POWER_MARGIN = 3.0          # a deviation of `detect` exceeds the threshold by >= 3 standard errors
FLOAT32_EPS = torch.finfo(torch.float32).eps


@dataclass
class CertProblem:
    name: str
    kind: str
    logits: Tensor              # one row: [n] or [n, K]
    theta: Tensor               # f's own parameters, one row

    def f(self, logits: Tensor, theta: Tensor) -> Callable[[Tensor], Tensor]:
        """f_b(z) = sum_i w_i (z_i - theta_i)^2 + 0.3 (w.z)(w'.z) + 0.5 log q(z|logits)
        + 0.4 z.tanh(logits): nonlinear in z, with parameters of its own, and a direct dependence
        on the logits both through log q (a sampled KL; its expected gradient is zero) and through
        a term whose expected gradient is not (a pathwise dependence an estimator can drop)."""
        kind = self.kind

        def f(z: Tensor) -> Tensor:
            w = torch.linspace(0.5, 1.5, z[0, 0].numel(), dtype=z.dtype, device=z.device)
            w = w.reshape(z.shape[2:])
            th = theta.to(z.dtype)
            dims = tuple(range(2, z.dim()))
            quad = (w * (z - th) ** 2).sum(dims)
            cross = (z * w).sum(dims) * (z * w.flip(-1)).sum(dims)
            lg = logits.to(z.dtype)
            return quad + 0.3 * cross + 0.5 * log_prob(lg, z, kind) + 0.4 * (z * torch.tanh(lg)).sum(dims)
        return f


PROBLEMS = (
    CertProblem("bernoulli", "bernoulli", torch.tensor([-0.8, 0.3, 1.1]),
                torch.tensor([0.2, 0.7, -0.3])),
    CertProblem("categorical", "categorical", torch.tensor([[-1.0, 0.3, 1.2], [0.8, -0.5, 0.1]]),
                torch.tensor([[0.2, 0.9, -0.4], [0.5, 0.1, 1.3]])),
)


def exact_gradient(problem: CertProblem) -> tuple[Tensor, Tensor]:
    """(d/dlogits, d/dtheta) of E_q[f] by enumeration, float64."""
    logits = problem.logits.double()[None].requires_grad_()
    theta = problem.theta.double()[None].requires_grad_()
    shape = tuple(problem.logits.shape)
    z = all_configs(problem.kind, shape, "cpu", torch.float64)[:, None]        # [C, 1, ...]
    q = log_prob(logits, z, problem.kind).exp()
    value = (q * problem.f(logits, theta)(z)).sum()
    g_logits, g_theta = torch.autograd.grad(value, [logits, theta])
    return g_logits[0], g_theta[0]


def _surrogate(out) -> Tensor:
    return out if torch.is_tensor(out) else out.surrogate


def _draw(est, problem: CertProblem, rows: int) -> tuple[Tensor, Tensor]:
    """``rows`` estimates of (d/dlogits, d/dtheta), each [rows, ...], float64."""
    logits = problem.logits.expand(rows, *problem.logits.shape).clone().requires_grad_()
    theta = problem.theta.expand(rows, *problem.theta.shape).clone().requires_grad_()
    s = _surrogate(est(logits, problem.f(logits, theta)))
    g = torch.autograd.grad(s, [logits, theta], allow_unused=True)
    return tuple((torch.zeros_like(x) if gi is None else gi * rows).double().flatten(1)
                 for gi, x in zip(g, (logits, theta)))


def _z_crit(m: int, alpha: float) -> float:
    return float(torch.special.ndtri(torch.tensor(1.0 - alpha / (2 * max(m, 1)), dtype=torch.float64)))


def certify(estimator, *, draws: int = 100_000, max_draws: int = 1_600_000, alpha: float = 1e-5,
            detect: float = 0.25, seed: int = 0, problems=None):
    """Certify that ``estimator``'s mean is the exact gradient on small Bernoulli and categorical
    problems, per coordinate group (``logits``: through the distribution, including f's direct
    dependence on them; ``f parameters``: f's own). Returns a pandas DataFrame, one row per
    problem and group: ``verdict`` (``pass``, ``biased``, ``underpowered``, or ``not
    applicable`` with the reason), ``max_abs_z``, ``z_crit``, ``draws``, the largest standard
    error relative to ``detect`` (``power_ratio`` <= 1: the test would flag a deviation of
    ``detect`` x |exact| with probability >= 99.9 %).

    ``estimator``: a registered name (``"disarm"``), or a factory ``(kind, latent_shape) ->``
    estimator (an Estimator class, or a function building another library's estimator behind
    an adapter). ``draws``: estimates per round; rounds double until the power is reached or
    ``max_draws``. Deterministic given ``seed`` (torch's global generator is forked, not
    moved). ``problems``: a sequence of CertProblem (default: the two above)."""
    import pandas as pd
    from discograd.estimators import REGISTRY, make
    problems = PROBLEMS if problems is None else problems
    if isinstance(estimator, str):
        if estimator not in REGISTRY:
            raise ConfigError(f"unknown estimator {estimator!r}; accepted: {', '.join(REGISTRY)}")
        name = estimator

        def factory(kind, shape):
            return make(name, kind=kind, latent_shape=shape)
    else:
        factory = estimator
    built = {}
    for p in problems:
        try:
            est = factory(p.kind, tuple(p.logits.shape))
        except ConfigError as e:
            built[p.name] = str(e)
            continue
        if getattr(est, "objective", "mean") != "mean":
            built[p.name] = ("it estimates the gradient of another objective "
                             f"({est.objective}), not of E[f]")
            continue
        built[p.name] = est
    m = sum(p.logits.numel() + p.theta.numel() for p in problems if not isinstance(built[p.name], str))
    zc = _z_crit(m, alpha)
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in problems:
            est = built[p.name]
            if isinstance(est, str):
                rows += [{"problem": p.name, "group": g, "verdict": "not applicable", "why": est}
                         for g in ("logits", "f parameters")]
                continue
            exact = exact_gradient(p)
            det = [_detect(e.flatten(), detect) for e in exact]
            sums = [torch.zeros_like(e.flatten()) for e in exact]
            squares = [torch.zeros_like(e.flatten()) for e in exact]
            n, chunk = 0, int(draws)
            while True:
                done = 0
                while done < chunk:
                    k = min(100_000, chunk - done)
                    for i, g in enumerate(_draw(est, p, k)):
                        sums[i] += g.sum(0)
                        squares[i] += g.square().sum(0)
                    done += k
                n += chunk
                stats = [_stats(s, q, n, e.flatten(), d, zc)
                         for s, q, e, d in zip(sums, squares, exact, det)]
                if all(st["power_ratio"] <= 1 for st in stats) or n >= max_draws:
                    break
                chunk = min(n, max_draws - n)
            for group, st in zip(("logits", "f parameters"), stats):
                verdict = "biased" if st["max_abs_z"] >= zc else \
                    ("pass" if st["power_ratio"] <= 1 else "underpowered")
                rows.append({"problem": p.name, "group": group, "verdict": verdict, "why": "",
                             "draws": n, "z_crit": zc, **st})
    cols = ["problem", "group", "verdict", "max_abs_z", "z_crit", "power_ratio", "draws", "why"]
    return pd.DataFrame(rows).reindex(columns=cols)


def _detect(exact: Tensor, rel: float) -> Tensor:
    rms = float(exact.square().mean().sqrt())
    return rel * exact.abs().clamp_min(0.5 * rms) if rms > 0 else torch.full_like(exact, rel)


def _stats(s: Tensor, q: Tensor, n: int, exact: Tensor, detect: Tensor, zc: float) -> dict:
    mean = s / n
    var = ((q - n * mean.square()) / (n - 1)).clamp_min(0)
    se = (var / n).sqrt()
    # float32 rounding of the estimates (an estimator with no noise, e.g. exact enumeration,
    # still differs from the float64 reference by it): an error floor, not a deviation
    rounding = 64 * FLOAT32_EPS * (mean.abs() + exact.abs()) + 1e-30
    z = (mean - exact) / (se.square() + rounding.square()).sqrt()
    power = ((zc + POWER_MARGIN) * se / detect).max()
    return {"max_abs_z": float(z.abs().max()), "power_ratio": float(power)}
