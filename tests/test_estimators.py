"""Statistical tests of the gradient estimators (docs/design.md, "Estimators: guidance").

Method
------
- Many independent gradient estimates in one call: a minibatch of N identical rows of logits (and of
  any parameter inside ``f``), ``f`` acting per example. The surrogate is the mean over the rows, so
  row b of the gradient, times N, is one independent estimate of the per-example gradient.
- Exact references: closed forms where they exist (Tucker's toy problem, linear f) and otherwise the
  gradient of the enumerated expectation sum_z q(z) f(z), computed by autograd in float64.
- Every statistical assertion is a z-test, |mean - reference| < z_crit * se with se the measured
  standard error and z_crit Bonferroni-corrected over the coordinates tested together, for a
  family-wise false-alarm rate ``ALPHA`` at a fixed seed. No hand-tuned tolerance.
- Every statistical assertion also checks its own power: ``(z_crit + 3) * se <= detect``, i.e. a
  deviation of size ``detect`` would be flagged with probability >= Phi(3) = 99.9%. ``detect`` is
  stated next to each test (typically a quarter of the exact gradient).
- Deterministic properties (ST exact for linear f, zero gradient of a constant f for pathwise
  estimators, one-hot forward values) are checked sample by sample, up to float rounding only.
"""
from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import Tensor

from discograd.estimators import (KINDS, REGISTRY, ConfigError, TauSchedule, hard_sample, log_prob, probs,
                        uniform)

ALPHA = 1e-5            # family-wise false-alarm probability of one statistical assertion
POWER_MARGIN = 3.0      # a deviation of `detect` exceeds the threshold by >= 3 standard errors
F32_EPS = torch.finfo(torch.float32).eps
PATHWISE = ("st", "gumbel", "st_gumbel")   # gradient only through z: exactly 0 for a constant f
T = 0.45                # Tucker's toy target


# ------------------------------------------------------------------------------------------------
# Statistics helpers
# ------------------------------------------------------------------------------------------------

def z_crit(m: int, alpha: float = ALPHA) -> float:
    """Two-sided normal critical value for ``m`` simultaneous z-tests (Bonferroni)."""
    return float(torch.special.ndtri(torch.tensor(1.0 - alpha / (2 * max(m, 1)),
                                                  dtype=torch.float64)))


def assert_mean(draws: Tensor, expected: Tensor, detect, what: str) -> None:
    """z-test that the i.i.d. rows of ``draws`` [N, ...] have mean ``expected`` [...], and that the
    test could see a deviation of ``detect`` (scalar or [...]) in every coordinate.

    Coordinates whose draws are all equal (se == 0) must equal ``expected`` up to float rounding.
    """
    draws = draws.detach().double().flatten(1)
    expected = torch.as_tensor(expected).detach().double().flatten().expand(draws.shape[1])
    detect = torch.as_tensor(detect, dtype=torch.float64).flatten().expand(draws.shape[1])
    n = draws.shape[0]
    mean = draws.mean(0)
    se = draws.std(0) / math.sqrt(n)
    zc = z_crit(draws.shape[1])
    degenerate = se == 0
    rounding = 64 * F32_EPS * (draws.abs().amax(0) + expected.abs())
    assert torch.all((mean - expected).abs()[degenerate] <= rounding[degenerate]), (
        f"{what}: deterministic coordinates differ: mean={mean.tolist()} "
        f"expected={expected.tolist()}")
    z = torch.where(degenerate, torch.zeros_like(mean), (mean - expected) / se)
    assert torch.all(z.abs() < zc), (
        f"{what}: |z| >= {zc:.2f}: z={z.tolist()}, mean={mean.tolist()}, "
        f"expected={expected.tolist()}, se={se.tolist()}")
    power = (zc + POWER_MARGIN) * se
    assert torch.all(power <= detect), (
        f"{what}: test lacks power: (z_crit+{POWER_MARGIN})*se={power.tolist()} "
        f"> detect={detect.tolist()}")


def z_scores(draws: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    draws = draws.detach().double().flatten(1)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    return (draws.mean(0) - reference.double().flatten()) / se, se


# ------------------------------------------------------------------------------------------------
# Objectives with exact gradients
# ------------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One objective at one point. ``fn(z, theta)``: z [S, B, *shape] -> [S, B]; theta [B, ...] (or
    None) is a parameter inside f, per row."""

    name: str
    kind: str
    logits: Tensor                                   # one row: [n] or [n, K]
    fn: Callable[[Tensor, Tensor | None], Tensor]
    theta: Tensor | None = None                      # one row
    closed_form: Callable[[], list[Tensor]] | None = None   # exact [d/dlogits, (d/dtheta)]
    zero_scale: float = 0.0                          # scale of `detect` when the gradient is 0
    rows: int = 200_000                              # estimates drawn per test

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.logits.shape)

    def objective(self, theta: Tensor | None) -> Callable[[Tensor], Tensor]:
        return lambda z: self.fn(z, theta)


def configurations(kind: str, shape: tuple[int, ...]) -> Tensor:
    """Every latent value, [C, *shape]."""
    if kind == "bernoulli":
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=shape[0])))
    n, k = shape
    idx = torch.tensor(list(itertools.product(range(k), repeat=n)))
    return torch.nn.functional.one_hot(idx, k).double()


def enumerated_grads(case: Case) -> list[Tensor]:
    """Gradient of sum_z q(z | logits) f(z) by autograd, float64: [d/dlogits, (d/dtheta)]."""
    logits = case.logits.double().unsqueeze(0).requires_grad_()
    leaves = [logits]
    theta = None
    if case.theta is not None:
        theta = case.theta.double().unsqueeze(0).requires_grad_()
        leaves.append(theta)
    z = configurations(case.kind, case.shape).double().unsqueeze(1)      # [C, 1, *shape]
    q = log_prob(logits, z, case.kind).exp()                             # [C, 1]
    assert torch.allclose(q.sum(), torch.ones((), dtype=torch.float64))
    expectation = (q * case.fn(z, theta)).sum()
    return [g[0] for g in torch.autograd.grad(expectation, leaves, allow_unused=True)]


def _bern(values) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def bernoulli_cases() -> list[Case]:
    toy_logits = _bern([-1.2, -0.4, 0.5, 1.5])
    lin_logits, a = _bern([-2.0, -0.3, 0.7, 1.8]), _bern([1.0, -2.0, 0.5, 3.0])
    quad_logits = _bern([-0.8, 0.3, 1.1])
    w = _bern([[0.5, -1.0, 2.0], [-1.0, 1.5, 0.7], [2.0, 0.7, -0.6]])
    lin3 = _bern([0.4, -1.3, 0.9])
    theta_logits, theta0 = _bern([-1.0, 0.2, 0.8, 2.0]), _bern([0.2, 0.7, -0.3, 1.1])

    def sig(x):
        return torch.sigmoid(x.double())

    return [
        Case("toy", "bernoulli", toy_logits, lambda z, th: (z - T).pow(2).mean(-1),
             closed_form=lambda: [(1 - 2 * T) * sig(toy_logits) * (1 - sig(toy_logits)) / 4],
             rows=2_000_000),
        Case("constant", "bernoulli", _bern([-1.0, 0.4, 2.0]),
             lambda z, th: z.sum(-1) * 0.0 + 3.0, closed_form=lambda: [torch.zeros(3)],
             zero_scale=0.25 * 3.0),
        Case("linear", "bernoulli", lin_logits, lambda z, th: (z * a).sum(-1) + 0.5,
             closed_form=lambda: [a * sig(lin_logits) * (1 - sig(lin_logits))]),
        Case("quadratic", "bernoulli", quad_logits,
             lambda z, th: (torch.einsum("...i,ij,...j->...", z, w.to(z.dtype), z)
                            + (z * lin3).sum(-1))),
        Case("theta", "bernoulli", theta_logits, lambda z, th: (z - th).pow(2).mean(-1),
             theta=theta0,
             closed_form=lambda: [
                 sig(theta_logits) * (1 - sig(theta_logits)) * (1 - 2 * theta0) / 4,
                 2 * (theta0 - sig(theta_logits)) / 4]),
    ]


def categorical_cases() -> list[Case]:
    logits = torch.tensor([[-1.0, 0.3, 1.2], [0.8, -0.5, 0.1]])
    a = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.2, -1.0]])
    v = torch.tensor([[0.3, 1.4, -0.9], [-1.1, 0.6, 2.0]])
    theta0 = torch.tensor([[0.2, 0.9, -0.4], [0.5, 0.1, 1.3]])

    def linear_closed():
        p = torch.softmax(logits.double(), -1)
        return [p * (a - (p * a).sum(-1, keepdim=True))]

    def theta_closed():
        # E f = 1/n sum_i sum_k p_ik (1 - th_ik)^2 + (1 - p_ik) th_ik^2
        p = torch.softmax(logits.double(), -1)
        c = (1 - 2 * theta0.double())                      # d/dp_ik of the inner term
        return [p * (c - (p * c).sum(-1, keepdim=True)) / 2, 2 * (theta0 - p) / 2]

    return [
        Case("constant", "categorical", logits, lambda z, th: z.sum((-1, -2)) * 0.0 + 3.0,
             closed_form=lambda: [torch.zeros(2, 3)], zero_scale=0.25 * 3.0),
        Case("linear", "categorical", logits, lambda z, th: (z * a).sum((-1, -2)) + 0.5,
             closed_form=linear_closed),
        Case("nonlinear", "categorical", logits,
             lambda z, th: (z * a).sum(-1).prod(-1) + torch.sin((z * v).sum((-1, -2))) ** 2),
        Case("theta", "categorical", logits, lambda z, th: (z - th).pow(2).sum(-1).mean(-1),
             theta=theta0, closed_form=theta_closed),
    ]


CASES = {f"{c.kind}-{c.name}": c for c in bernoulli_cases() + categorical_cases()}


def exact_grads(case: Case) -> list[Tensor]:
    grads = case.closed_form() if case.closed_form else enumerated_grads(case)
    return [g.double() for g in grads]


def detect_for(case: Case, exact: Tensor, rel: float = 0.25) -> Tensor:
    """``rel`` times each coordinate's exact gradient, floored at half the root-mean-square
    coordinate (a near-zero coordinate is held to the scale of the others), or ``rel *
    zero_scale`` when the exact gradient vanishes."""
    rms = float(exact.pow(2).mean().sqrt())
    if rms == 0.0:
        return torch.full_like(exact, rel * case.zero_scale)
    return rel * exact.abs().clamp_min(0.5 * rms)


# ------------------------------------------------------------------------------------------------
# Drawing estimates
# ------------------------------------------------------------------------------------------------

def row_estimates(est, case: Case, rows: int, u: Tensor | None = None) -> list[Tensor]:
    """``rows`` gradient estimates at ``case.logits`` (and ``case.theta``): [rows, *shape] each."""
    logits = case.logits.expand(rows, *case.shape).clone().requires_grad_()
    leaves = [logits]
    theta = None
    if case.theta is not None:
        theta = case.theta.expand(rows, *case.theta.shape).clone().requires_grad_()
        leaves.append(theta)
    out = est(logits, case.objective(theta), u)
    grads = torch.autograd.grad(out.surrogate, leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g * rows for g, x in zip(grads, leaves)]


def build(name: str, kind: str, shape, **kw):
    return REGISTRY[name](kind, tuple(shape), **kw)


REINFORCE_VARIANTS = ("none", "ema", "learned", "loo2", "loo4")


def make_reinforce(variant: str, case: Case):
    if variant.startswith("loo"):
        return build("reinforce", case.kind, case.shape, samples=int(variant[3:]))
    if variant == "none":
        return build("reinforce", case.kind, case.shape, baseline="none")
    if variant == "ema":
        est = build("reinforce", case.kind, case.shape, baseline="ema", ema_decay=0.9)
    else:
        est = build("reinforce", case.kind, case.shape, baseline="learned", baseline_hidden=16)
        with torch.no_grad():        # a non-trivial, input-dependent baseline
            torch.nn.init.normal_(est.net[-1].weight, std=0.2)
            est.net[-1].bias.fill_(0.5)
    est.train()
    for _ in range(5):               # warm the moving average up on a few small batches
        row_estimates(est, case, 16)
    return est


# ------------------------------------------------------------------------------------------------
# 0. The references themselves
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [k for k, c in CASES.items() if c.closed_form is not None])
def test_closed_forms_match_enumeration(key):
    case = CASES[key]
    for closed, enum in zip(case.closed_form(), enumerated_grads(case)):
        torch.testing.assert_close(closed.double(), enum, rtol=1e-6, atol=1e-12)


def test_z_test_rejects_a_biased_mean():
    """The helper fails on a shift of `detect`, and on a test without power."""
    torch.manual_seed(0)
    draws = torch.randn(100_000, 3)
    assert_mean(draws, torch.zeros(3), detect=0.05, what="standard normal")
    with pytest.raises(AssertionError, match=r"\|z\|"):
        assert_mean(draws + 0.05, torch.zeros(3), detect=0.05, what="shifted")
    with pytest.raises(AssertionError, match="power"):
        assert_mean(draws[:100], torch.zeros(3), detect=0.05, what="too few")


# ------------------------------------------------------------------------------------------------
# 1. REINFORCE is unbiased, for every baseline, both kinds, and for parameters inside f
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", REINFORCE_VARIANTS)
@pytest.mark.parametrize("key", list(CASES))
def test_reinforce_unbiased(key, variant):
    torch.manual_seed(0)
    case = CASES[key]
    est = make_reinforce(variant, case)
    if variant == "ema":
        est.eval()                   # frozen moving average: a constant baseline
        ema = est.ema.clone()
        assert int(est.ema_count) > 0 and float(ema) != 0.0
    if variant == "learned":
        net_part = float(est.net(case.logits.flatten().unsqueeze(0)).detach())
        assert abs(net_part) > 0.25, "the learned part of the baseline should be far from zero"
    estimates = row_estimates(est, case, case.rows // est.samples)   # same number of f evaluations
    if variant == "ema":
        assert torch.equal(est.ema, ema), "eval mode must not update the moving average"
    exact = exact_grads(case)
    for label, g, e in zip(("logits", "theta"), estimates, exact):
        assert_mean(g, e, detect_for(case, e), f"reinforce[{variant}] {key} d/d{label}")


@pytest.mark.parametrize("key", ["bernoulli-toy", "categorical-nonlinear"])
def test_reinforce_ema_unbiased_in_train_mode(key):
    """In training mode the moving average moves after every step; the baseline of a step must come
    from past steps only. Small minibatches (B=2) make a baseline that includes the current batch
    visibly biased: with decay d it scales the expected gradient by 1 - (1 - d)/B = 0.6."""
    torch.manual_seed(0)
    case = CASES[key]
    est = build("reinforce", case.kind, case.shape, baseline="ema", ema_decay=0.2).train()
    batch, steps = 2, 12_000
    draws = []
    moved = 0
    for _ in range(steps):
        before = est.ema.clone()
        draws.append(row_estimates(est, case, batch)[0])
        moved += int(not torch.equal(before, est.ema))
    assert int(est.ema_count) == steps
    assert moved > steps // 2, "the moving average should move in training mode"
    exact = exact_grads(case)[0]
    assert_mean(torch.cat(draws), exact, detect_for(case, exact, rel=0.4),
                f"reinforce[ema, train] {key}")


def test_reinforce_learned_baseline_regression_gradient():
    """The baseline net is trained by regressing f on b(x): its gradient is that of mean (f - b)^2,
    and the regression term leaves the logits' gradient alone (checked above as unbiasedness)."""
    torch.manual_seed(0)
    case = CASES["categorical-nonlinear"]
    est = make_reinforce("learned", case)
    logits = case.logits.expand(64, *case.shape).clone().requires_grad_()
    u = uniform((1, *logits.shape), logits)
    ema = est.ema.clone()            # the baseline of this step uses the average before it
    out = est(logits, case.objective(None), u)
    assert not torch.equal(ema, est.ema), "training mode: the moving average moves"
    params = list(est.net.parameters())
    got = torch.autograd.grad(out.surrogate, params)
    fz = case.fn(hard_sample(logits, case.kind, u), None)
    b = ema + est.net(logits.detach().flatten(1)).squeeze(-1)
    want = torch.autograd.grad((fz - b).pow(2).mean(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert "baseline_loss" in out.stats and not out.stats["baseline_loss"].requires_grad
    assert any(float(g.abs().max()) > 0 for g in got)


# ------------------------------------------------------------------------------------------------
# 2. Straight-through: exact for linear f, biased on the toy problem
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_st_exact_for_linear_f_every_sample(kind, samples):
    torch.manual_seed(0)
    shape = (5,) if kind == "bernoulli" else (4, 3)
    rows = 2000
    logits = (3 * torch.randn(rows, *shape)).requires_grad_()    # a different point per row
    a = torch.randn(shape)
    est = build("st", kind, shape, samples=samples)
    out = est(logits, lambda z: (z * a).flatten(2).sum(-1) - 1.0)
    got, = torch.autograd.grad(out.surrogate, logits)
    want, = torch.autograd.grad((probs(logits, kind) * a).sum(), logits)   # d/dl f(E z) = d/dl E f
    torch.testing.assert_close(got * rows, want, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_st_biased_on_toy_problem():
    """ST on f(b) = mean_i (b_i - t)^2: per sample the gradient is f'(b) s(1-s) = 2(b - t) s(1-s)/n,
    so its mean is 2(s - t) s(1-s)/n, not the true (1 - 2t) s(1-s)/n (they differ by
    (2s - 1) s(1-s)/n)."""
    torch.manual_seed(0)
    logits_row = _bern([-2.0, -1.0, 1.0, 2.0])
    n, rows = 4, 200_000
    case = Case("toy", "bernoulli", logits_row, lambda z, th: (z - T).pow(2).mean(-1))
    est = build("st", "bernoulli", (n,))
    logits = logits_row.expand(rows, n)
    u = uniform((1, rows, n), logits)
    g, = row_estimates(est, case, rows, u=u)
    s = torch.sigmoid(logits_row.double())
    b = hard_sample(logits, "bernoulli", u)[0].double()
    # deterministic, sample by sample
    torch.testing.assert_close(g.double(), 2 * (b - T) * s * (1 - s) / n, rtol=1e-5, atol=1e-9)
    # its mean is the ST closed form ...
    st_mean = 2 * (s - T) * s * (1 - s) / n
    bias = (2 * s - 1) * s * (1 - s) / n
    assert_mean(g, st_mean, 0.25 * bias.abs(), "st toy vs its closed form")
    # ... which is many standard errors away from the true gradient
    true = (1 - 2 * T) * s * (1 - s) / n
    z, _ = z_scores(g, true)
    assert torch.all(z.abs() > 10 * z_crit(n)), f"ST should be visibly biased: z={z.tolist()}"


# ------------------------------------------------------------------------------------------------
# 3. Gumbel-softmax and straight-through Gumbel
# ------------------------------------------------------------------------------------------------

def fixed_tau(tau: float) -> TauSchedule:
    return TauSchedule(init=tau, min=tau, rate=0.0, every=1)


def capture(fn=None):
    """An objective that records the samples it is evaluated at."""
    seen = []

    def f(z):
        seen.append(z.detach())
        return fn(z) if fn else z.flatten(2).sum(-1) * 0.0
    return f, seen


def category(z: Tensor, kind: str) -> Tensor:
    """The discrete value of a (relaxed) sample: 1[y > 1/2] or argmax(y) as a one-hot."""
    if kind == "bernoulli":
        return (z > 0.5).double()
    return torch.nn.functional.one_hot(z.argmax(-1), z.shape[-1]).double()


ROW = {"bernoulli": _bern([-2.0, -0.5, 0.4, 1.5]),
       "categorical": torch.tensor([[-1.0, 0.3, 1.2, 0.0], [0.8, -0.7, 0.1, 2.0]])}


@pytest.mark.parametrize("name", ["gumbel", "st_gumbel"])
@pytest.mark.parametrize("kind", KINDS)
def test_relaxed_sample_discretises_to_q(kind, name):
    """argmax of the Gumbel-softmax sample (1[y > 1/2] for the binary Concrete) ~ q(logits), at a
    temperature != 1, which would expose noise added to logits / tau instead of logits."""
    torch.manual_seed(0)
    row, tau, rows = ROW[kind], 0.5, 200_000
    est = build(name, kind, row.shape, tau=fixed_tau(tau))
    f, seen = capture()
    est(row.expand(rows, *row.shape).clone().requires_grad_(), f)
    freq = category(seen[0][0], kind)
    p = probs(row.double(), kind)
    wrong = probs(row.double() / tau, kind)
    assert_mean(freq, p, (p - wrong).abs().max(), f"{name} discretised sample vs q")


@pytest.mark.parametrize("name", ["st", "st_gumbel"])
@pytest.mark.parametrize("kind", KINDS)
def test_straight_through_forward_is_exactly_discrete(kind, name):
    torch.manual_seed(0)
    row, rows = ROW[kind], 10_000
    kw = {"tau": fixed_tau(0.7)} if name == "st_gumbel" else {}
    est = build(name, kind, row.shape, samples=2, **kw)
    logits = row.expand(rows, *row.shape).clone().requires_grad_()
    u = uniform((2, *logits.shape), logits)
    f, seen = capture()
    est(logits, f, u)
    z = seen[0]
    assert torch.equal(z, hard_sample(logits, kind, u)), "forward value must be the exact sample"
    assert torch.all((z == 0) | (z == 1))
    if kind == "categorical":
        assert torch.all(z.sum(-1) == 1)


@pytest.mark.parametrize("kind", KINDS)
def test_gumbel_relaxed_sample_formula_and_st_gumbel_backward(kind):
    """With common uniforms: gumbel's y = softmax((l + g)/tau) / sigmoid((l + L)/tau) at the
    scheduled tau, its discretisation is the exact hard sample, and st_gumbel's gradient equals
    gumbel's for a linear f (both differentiate y)."""
    torch.manual_seed(0)
    row, rows = ROW[kind], 1000
    sched = TauSchedule(init=2.0, min=0.3, rate=0.01, every=10)
    logits = (row + torch.randn(rows, *row.shape)).requires_grad_()
    u = uniform((2, *logits.shape), logits)
    a = torch.randn(row.shape)
    grads = {}
    for name in ("gumbel", "st_gumbel"):
        est = build(name, kind, row.shape, samples=2, tau=sched)
        est.set_step(57)
        assert est.tau == sched(57) == pytest.approx(2.0 * math.exp(-0.01 * 50))
        f, seen = capture(lambda z: (z * a).flatten(2).sum(-1))
        out = est(logits, f, u)
        grads[name], = torch.autograd.grad(out.surrogate, logits)
        if name == "gumbel":
            y = seen[0]
            if kind == "bernoulli":
                want = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / est.tau)
            else:
                want = torch.softmax((logits - torch.log(-torch.log(u))) / est.tau, -1)
            torch.testing.assert_close(y, want.detach())
            assert torch.equal(category(y, kind), hard_sample(logits, kind, u).double())
    torch.testing.assert_close(grads["st_gumbel"], grads["gumbel"])


def vertex_distance(y: Tensor, kind: str) -> Tensor:
    """||y - H(y)||_inf, per latent."""
    return torch.minimum(y, 1 - y) if kind == "bernoulli" else 1 - y.amax(-1)


def far_from_vertex_bound(tau: float, eps: float, kind: str, k: int) -> float:
    """Upper bound on P(||y - H(y)||_inf > eps) for one latent.

    Bernoulli: y = sigmoid(a / tau) is eps-far iff |a| < tau * logit(1 - eps) =: d, and a = l + L
    has a Logistic density <= 1/4, so P <= d / 2. Categorical: 1 - max y <= (K-1) exp(-gap/tau), so
    eps-far implies gap < d := tau log((K-1)/eps); each pairwise difference of perturbed logits has
    a Logistic density <= 1/4, so P <= C(K, 2) d / 2.
    """
    if kind == "bernoulli":
        return tau * math.log((1 - eps) / eps) / 2
    return math.comb(k, 2) * tau * math.log((k - 1) / eps) / 2


@pytest.mark.parametrize("kind", KINDS)
def test_gumbel_concentrates_at_vertices_as_tau_shrinks(kind):
    torch.manual_seed(0)
    row, rows, eps = ROW[kind], 100_000, 0.01
    taus = (1.0, 0.1, 0.01, 0.001)
    fractions = []
    for tau in taus:
        f, seen = capture()
        build("gumbel", kind, row.shape, tau=fixed_tau(tau))(row.expand(rows, *row.shape), f)
        far = (vertex_distance(seen[0][0], kind) > eps).double()          # [rows, n]
        fractions.append(far.mean(0))
        bound = far_from_vertex_bound(tau, eps, kind, row.shape[-1])
        if bound < 1:                 # one-sided binomial test against the analytic bound
            se = math.sqrt(bound * (1 - bound) / rows)
            assert torch.all(far.mean(0) <= bound + z_crit(far.shape[1]) * se), (
                f"tau={tau}: far-from-vertex fraction {far.mean(0).tolist()} > bound {bound}")
    fr = torch.stack(fractions)                                             # [taus, n]
    se = torch.sqrt(fr * (1 - fr) / rows)
    drop = fr[:-1] - fr[1:]
    assert torch.all(drop > z_crit(drop.numel()) * torch.sqrt(se[:-1] ** 2 + se[1:] ** 2)), (
        f"samples should move towards the vertices as tau shrinks: {fr.tolist()}")
    assert torch.all(fr[-1] < fr[0])


def takes_tau(name: str) -> bool:
    return "tau" in inspect.signature(REGISTRY[name].__init__).parameters


EXTREME = {"bernoulli": _bern([50.0, -50.0, 1e3, -1e3, 0.0]),
           "categorical": torch.tensor([[1e3, -1e3, 0.0], [50.0, -50.0, 0.0], [1e3, 1e3, -1e3]])}


SUPPORTED = [(n, k) for n in sorted(REGISTRY) for k in KINDS if k in REGISTRY[n].kinds]


@pytest.mark.parametrize("name, kind", SUPPORTED)
def test_extreme_logits_and_tiny_tau_stay_finite(kind, name):
    torch.manual_seed(0)
    row, rows = EXTREME[kind], 20_000
    # the smallest temperature each estimator accepts (ReinMax requires tau >= 1)
    kw = {"tau": fixed_tau(1.0 if name == "reinmax" else 1e-3)} if takes_tau(name) else {}
    samples = 1 if name == "exact" else 2
    est = build(name, kind, row.shape, samples=samples, **kw)
    tiny, top = torch.finfo(torch.float32).tiny, 1 - F32_EPS
    noise_shape = est.noise_shape((rows, *row.shape))
    for u in (None, torch.full(noise_shape, tiny), torch.full(noise_shape, top)):
        logits = row.expand(rows, *row.shape).clone().requires_grad_()
        theta = torch.full((rows, *row.shape), 0.3, requires_grad=True)
        f, seen = capture(lambda z: (z - theta).pow(2).flatten(2).mean(-1))
        out = est(logits, f, u)
        gl, gt = torch.autograd.grad(out.surrogate, [logits, theta])
        for label, x in (("samples", seen[0]), ("loss", out.loss), ("surrogate", out.surrogate),
                         ("d/dlogits", gl), ("d/dtheta", gt)):
            where = "drawn" if u is None else float(u.flatten()[0])
            assert torch.isfinite(x).all(), f"{name} {kind}: non-finite {label} (u={where})"


def test_uniform_clamps_the_ends_of_the_unit_interval(monkeypatch):
    """torch.rand can return exactly 0 (and a float64 draw rounded to float32 can be 1): uniform()
    must move both away, so that every noise transform of it is finite."""
    ends = torch.tensor([0.0, 1.0, 0.5])
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: ends.clone().to(kw.get("dtype")))
    u = uniform((3,), torch.empty(()))
    assert torch.all((u > 0) & (u < 1)), u
    for noise in (torch.log(u) - torch.log1p(-u), -torch.log(-torch.log(u))):
        assert torch.isfinite(noise).all(), noise


# ------------------------------------------------------------------------------------------------
# Temperature schedule
# ------------------------------------------------------------------------------------------------

def test_tau_schedule_values():
    s = TauSchedule(init=2.0, min=0.5, rate=1e-3, every=100)
    assert s(0) == 2.0
    assert s(99) == 2.0
    assert s(100) == pytest.approx(2.0 * math.exp(-0.1), rel=1e-12)
    assert s(199) == s(100)
    assert s(1000) == pytest.approx(2.0 * math.exp(-1.0), rel=1e-12)
    assert s(1050) == s(1000)
    assert s(10_000) == 0.5                      # 2 e^-10 < min
    values = [s(k) for k in range(0, 5000, 7)]
    assert all(v >= 0.5 for v in values)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert TauSchedule(init=1.0, min=0.5, rate=0.0, every=1)(10**9) == 1.0
    est = build("gumbel", "bernoulli", (3,), tau=s)
    assert est.tau == 2.0 and est.scalars() == {"tau": 2.0}
    est.set_step(1050)
    assert est.tau == s(1050) and est.scalars()["tau"] == s(1050)


@pytest.mark.parametrize("key,value", [
    ("init", 0.0), ("init", -1.0), ("init", float("nan")), ("init", float("inf")),
    ("min", 0.0), ("min", -0.5), ("min", float("nan")),
    ("rate", -1e-3), ("rate", float("nan")), ("rate", float("inf")),
    ("every", 0), ("every", -5),
])
def test_tau_schedule_rejects_invalid(key, value):
    kw = dict(init=1.0, min=0.5, rate=1e-4, every=1000)
    kw[key] = value
    with pytest.raises(ConfigError) as err:
        TauSchedule(**kw)
    msg = str(err.value)
    assert f"tau.{key}=" in msg and "estimator." not in msg and str(value) in msg, msg


# ------------------------------------------------------------------------------------------------
# 4. Interface
# ------------------------------------------------------------------------------------------------

SHAPES = {"bernoulli": (4,), "categorical": (2, 3)}


BASE = ["st", "reinforce", "gumbel", "st_gumbel"]


@pytest.mark.parametrize("name", BASE)
def test_design_estimators_registered_for_both_kinds(name):
    assert name in REGISTRY
    assert set(REGISTRY[name].kinds) == set(KINDS)
    assert REGISTRY[name].unbiased == (name == "reinforce")
    assert REGISTRY[name].relaxed == (name == "gumbel")


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_interface(name, kind, samples):
    shape = SHAPES[kind]
    cls = REGISTRY[name]
    if kind not in cls.kinds:
        with pytest.raises(ConfigError, match=name):
            cls(kind, shape, samples=samples)
        return
    torch.manual_seed(0)
    try:
        est = cls(kind, shape, samples=samples)
    except ConfigError as e:          # e.g. rloo needs samples >= 2, exact takes no samples
        assert "samples" in str(e) and str(samples) in str(e)
        return
    assert est.evals >= samples and est.properties()["evals"] == est.evals
    if name in BASE:
        assert est.evals == samples
    assert est.multi_eval == (est.evals > 1)
    B = 5
    logits = torch.randn(B, *shape, requires_grad=True)
    theta = torch.randn(B, *shape, requires_grad=True)

    def f(z):
        return (z - theta).pow(2).flatten(2).sum(-1)

    u = uniform(est.noise_shape(tuple(logits.shape)), logits)
    out = est(logits, f, u)
    assert out.surrogate.dim() == 0
    assert out.loss.shape == (B,) and not out.loss.requires_grad
    assert all(v.dim() == 0 and not v.requires_grad for v in out.stats.values())
    if name in BASE and not cls.relaxed:      # f is evaluated at exact samples
        torch.testing.assert_close(out.loss, f(hard_sample(logits, kind, u)).detach().mean(0))
    out.surrogate.backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape
    assert torch.isfinite(logits.grad).all() and torch.isfinite(theta.grad).all()


@pytest.mark.parametrize("name, kind", SUPPORTED)
def test_constant_f_gives_zero_gradient(name, kind):
    torch.manual_seed(0)
    case = CASES[f"{kind}-constant"]
    est = build(name, kind, case.shape)
    g, = row_estimates(est, case, 200_000)
    if name in PATHWISE:              # the gradient only flows through z: exactly zero
        assert torch.all(g == 0), f"{name}: constant f must give exactly zero gradient"
    assert_mean(g, torch.zeros(case.shape), 0.25 * case.zero_scale, f"{name} constant f")


def test_reinforce_config_errors():
    """A Python caller reads the constructor's argument names; a config (build_estimator, what the
    runner calls) reads its keys, estimator.NAME."""
    from discograd.estimators import build_estimator
    with pytest.raises(ConfigError, match=r"^baseline=ema.* samples=2"):
        build("reinforce", "bernoulli", (3,), samples=2, baseline="ema")
    with pytest.raises(ConfigError, match=r"estimator\.baseline=ema.*estimator\.samples=2"):
        build_estimator({"name": "reinforce", "samples": 2, "baseline": "ema"}, "bernoulli", (3,))
    with pytest.raises(ConfigError, match=r"^baseline=learned.* samples=4"):
        build("reinforce", "categorical", (2, 3), samples=4, baseline="learned")
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=rf"^samples\D*{bad}"):
            build("reinforce", "bernoulli", (3,), samples=bad)
        with pytest.raises(ConfigError, match=rf"^estimator\.samples\D*{bad}"):
            build_estimator({"name": "reinforce", "samples": bad}, "bernoulli", (3,))
    with pytest.raises(ConfigError, match=r"^baseline.*mean"):
        build("reinforce", "bernoulli", (3,), baseline="mean")
    with pytest.raises(ConfigError, match=r"^ema_decay.*1\.0"):
        build("reinforce", "bernoulli", (3,), baseline="ema", ema_decay=1.0)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_unknown_kind_is_refused(name):
    with pytest.raises(ConfigError, match="gaussian"):
        REGISTRY[name]("gaussian", (3,))


# ------------------------------------------------------------------------------------------------
# 5. Exact samplers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_hard_sample_marginals(kind):
    torch.manual_seed(0)
    row = ROW[kind]
    rows = 200_000
    u = uniform((rows, *row.shape), row)
    z = hard_sample(row, kind, u)
    assert torch.equal(z, hard_sample(row, kind, u)), "deterministic given u"
    if kind == "categorical":
        assert torch.all(z.sum(-1) == 1)
    assert_mean(z, probs(row.double(), kind), 0.01, f"hard_sample {kind} frequencies")


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_matches_torch_distributions(kind):
    torch.manual_seed(0)
    logits = 2 * torch.randn(6, *SHAPES[kind])
    z = hard_sample(logits, kind, uniform((3, *logits.shape), logits))
    if kind == "bernoulli":
        want = torch.distributions.Bernoulli(logits=logits).log_prob(z).sum(-1)
    else:
        want = torch.distributions.OneHotCategorical(logits=logits).log_prob(z).sum(-1)
    torch.testing.assert_close(log_prob(logits, z, kind), want)
