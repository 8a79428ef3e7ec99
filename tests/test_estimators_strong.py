"""Statistical and property tests of the strong estimators: arm, disarm, rloo, muprop, exact, arsm
(unbiased), reinmax, gst, gumbel_rao (biased). Method as in tests/test_estimators.py: z-tests from
measured standard errors, Bonferroni over the coordinates tested together, a power check next to
every statistical assertion, fixed seeds, no hand-tuned tolerance (deterministic identities are
compared up to float rounding only).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from discograd.estimators import REGISTRY, ConfigError, TauSchedule, hard_sample, log_prob, probs, uniform
from discograd.estimators.base import all_configs
from discograd.estimators.gumbel_rao import conditional_gumbel, conditional_logistic
from discograd.estimators.gst import gapped_logits
from test_estimators import (CASES, Case, assert_mean, detect_for, exact_grads, row_estimates,
                             z_crit)

ROOT = Path(__file__).resolve().parents[1]
MINE = ("arm", "disarm", "rloo", "muprop", "exact", "reinmax", "gst", "gumbel_rao", "arsm")
UNBIASED = ("arm", "disarm", "rloo", "muprop", "exact", "arsm")
SHAPES = {"bernoulli": (4,), "categorical": (2, 3)}
ROWS = 200_000
T = 0.45


def fixed_tau(tau: float) -> TauSchedule:
    return TauSchedule(init=tau, min=tau, rate=0.0, every=1)


def make(name: str, kind: str, shape, **kw):
    return REGISTRY[name](kind, tuple(shape), **kw)


def supports(name: str, kind: str) -> bool:
    return kind in REGISTRY[name].kinds


# ------------------------------------------------------------------------------------------------
# 1. Declared properties, evals and noise layout
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MINE)
def test_declared_properties(name):
    cls = REGISTRY[name]
    assert cls.unbiased == (name in UNBIASED)
    kinds = {"arm": ("bernoulli",), "disarm": ("bernoulli",), "gst": ("categorical",),
             "arsm": ("categorical",)}
    assert tuple(cls.kinds) == kinds.get(name, ("bernoulli", "categorical"))
    assert not cls.relaxed                    # every one of them evaluates f at exact samples


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_evals_and_noise_shape(kind):
    shape = SHAPES[kind]
    logits_shape = (5, *shape)
    expected = {  # name -> [(kwargs, evals, noise slices)]
        "arm": [({}, 2, 1), ({"samples": 3}, 6, 3)],
        "disarm": [({}, 2, 1), ({"samples": 2}, 4, 2)],
        "rloo": [({}, 2, 2), ({"samples": 4}, 4, 4)],
        "muprop": [({}, 3, 1), ({"samples": 2}, 4, 2)],
        "exact": [({}, 16 if kind == "bernoulli" else 9, 1)],
        "reinmax": [({}, 1, 1), ({"samples": 3}, 3, 3)],
        "gst": [({}, 1, 1), ({"samples": 2}, 2, 2)],
        "gumbel_rao": [({}, 1, 11), ({"samples": 2, "mc_samples": 3}, 2, 8)],
        # C = 3 classes: z and the C(C-1)/2 = 3 swapped samples, per sample
        "arsm": [({}, 4, 1), ({"samples": 2}, 8, 2)],
    }
    for name, rows in expected.items():
        if not supports(name, kind):
            continue
        for kw, evals, slices in rows:
            est = make(name, kind, shape, **kw)
            assert est.evals == evals and est.properties()["evals"] == evals, (name, kw)
            assert est.multi_eval == (evals > 1), (name, kw)
            assert est.noise_shape(logits_shape) == (slices, *logits_shape), (name, kw)


def _count_calls(est, logits):
    calls = []

    def f(z):
        calls.append(z.shape[0])
        return (z - 0.3).pow(2).flatten(2).sum(-1)
    est(logits, f)
    return calls


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_evals_count_the_points_f_is_evaluated_at(kind):
    """Rows of z passed to f per example equal evals (muprop: + its backward pass at the mean)."""
    torch.manual_seed(0)
    logits = torch.randn(3, *SHAPES[kind], requires_grad=True)
    for name in MINE:
        if not supports(name, kind):
            continue
        est = make(name, kind, SHAPES[kind], **({"samples": 2} if name != "exact" else {}))
        rows = sum(_count_calls(est, logits))
        assert rows == est.evals - (1 if name == "muprop" else 0), (name, rows, est.evals)


MINE_KINDS = [(n, k) for n in MINE for k in ("bernoulli", "categorical") if supports(n, k)]


@pytest.mark.parametrize("name, kind", MINE_KINDS)
def test_interface_and_common_random_numbers(name, kind):
    """Surrogate scalar, detached [B] loss, finite gradients; and the first noise slice draws the
    same discrete sample as every other estimator (common random numbers in diagnostics)."""
    torch.manual_seed(0)
    shape = SHAPES[kind]
    est = make(name, kind, shape)
    logits = torch.randn(6, *shape, requires_grad=True)
    theta = torch.randn(6, *shape, requires_grad=True)
    u = uniform(est.noise_shape(tuple(logits.shape)), logits)
    seen = []

    def f(z):
        seen.append(z.detach())
        return (z - theta).pow(2).flatten(2).sum(-1)
    out = est(logits, f, u)
    assert out.surrogate.dim() == 0
    assert out.loss.shape == (6,) and not out.loss.requires_grad
    out.surrogate.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(theta.grad).all()
    if name != "exact":
        first = seen[0][:1]
        assert torch.equal(first, hard_sample(logits, kind, u[:1])), "slice 0 must draw sample 0"
        if name not in ("arm", "disarm", "muprop", "arsm"):
            torch.testing.assert_close(out.loss, f(hard_sample(logits, kind, u[:est.samples])).detach().mean(0))


# ------------------------------------------------------------------------------------------------
# 2. The unbiased ones match the exact gradient (closed form and enumeration)
# ------------------------------------------------------------------------------------------------

UNBIASED_CASES = ["bernoulli-toy", "bernoulli-quadratic", "bernoulli-theta",
                  "categorical-nonlinear", "categorical-theta"]


@pytest.mark.parametrize("name, key", [(n, key) for n in UNBIASED for key in UNBIASED_CASES
                                        if supports(n, CASES[key].kind)])
def test_unbiased_on_closed_forms_and_enumeration(name, key):
    case = CASES[key]
    torch.manual_seed(0)
    est = make(name, case.kind, case.shape)
    rows = 256 if name == "exact" else ROWS // max(1, est.evals // 2)
    if (name, key) == ("muprop", "bernoulli-toy"):
        # f(b) - h(b) = sum_i (b_i - s_i)^2 / n: on this problem the Taylor residual is larger
        # than f itself, so MuProp has ~10x REINFORCE-LOO's variance here and needs more draws
        rows = 6 * ROWS
    estimates = row_estimates(est, case, rows)
    for label, g, e in zip(("logits", "theta"), estimates, exact_grads(case)):
        assert_mean(g, e, detect_for(case, e), f"{name} {key} d/d{label}")


def test_z_test_detects_a_biased_estimator_with_the_same_budget():
    """Power in practice: the same test rejects ST on the quadratic objective."""
    torch.manual_seed(0)
    case = CASES["bernoulli-quadratic"]
    g, = row_estimates(make("st", case.kind, case.shape), case, ROWS)
    with pytest.raises(AssertionError, match=r"\|z\|"):
        assert_mean(g, exact_grads(case)[0], detect_for(case, exact_grads(case)[0]), "st")


def _tiny_vae(kind: str):
    from discograd.models import VAE
    torch.manual_seed(3)
    shape = SHAPES[kind] if kind == "categorical" else (4,)
    vae = VAE(latent=kind, latent_dim=shape[0], classes=shape[-1], hidden=[], x_dim=12)
    with torch.no_grad():
        vae.prior_logits.normal_()
        for p in vae.encoder.parameters():
            p.mul_(3.0)                        # logits away from 0: a less symmetric problem
    x = (torch.rand(6, 12) < 0.4).float()
    return vae, x


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_unbiased_on_an_enumerable_vae_through_the_probe(kind):
    """The diagnostics probe (vmap over grad, common random numbers) on a VAE with 4 Bernoulli or
    2 x 3 categorical latents: every unbiased estimator's mean gradient, over all encoder and
    decoder coordinates, matches the enumerated exact gradient (z-test per coordinate, Bonferroni);
    bias2 of the exact estimator itself is ~0 and its variance is 0."""
    from discograd.diagnostics import Probe, Reference
    vae, x = _tiny_vae(kind)
    names = [n for n in UNBIASED if supports(n, kind)]
    K = 3000
    probe = Probe(vae, REGISTRY["exact"](kind, vae.latent_shape), names, Reference("exact"), K, x)
    probe.gen.manual_seed(0)
    logits_shape = (x.shape[0], *vae.latent_shape)
    nmax = max(e.noise_shape(logits_shape)[0] for e in probe.estimators.values())
    U = probe._noise(K, nmax, logits_shape)
    ref = probe.exact_reference()
    exact_vec = torch.cat([ref[n].flatten() for n in sorted(ref)])
    rms = exact_vec.pow(2).mean().sqrt()
    for name, est in probe.estimators.items():
        est.eval()
        with torch.enable_grad():
            mom = probe._moments(est, U[:, :est.noise_shape(logits_shape)[0]])
        mean = torch.cat([mom[n][0].flatten() for n in sorted(ref)])
        var = torch.cat([mom[n][1].flatten() for n in sorted(ref)])
        se = (var / K).sqrt()
        if name == "exact":
            torch.testing.assert_close(mean, exact_vec, rtol=1e-4, atol=1e-6 * float(rms))
            assert float(var.max()) <= 1e-10 * float(rms) ** 2
            continue
        # coordinates with no sampling noise (the prior's logits: analytic KL only) are float32
        # sums: they must match up to rounding, and are left out of the z-test
        eps = 64 * torch.finfo(torch.float32).eps
        det = se <= eps * rms
        assert torch.all((mean - exact_vec).abs()[det] <= eps * (exact_vec.abs() + rms)[det]), name
        zc = z_crit(int((~det).sum()))
        z = torch.where(det, torch.zeros_like(mean), (mean - exact_vec) / se.clamp_min(1e-30))
        assert torch.all(z.abs() < zc), f"{name}: max |z| = {float(z.abs().max()):.2f} >= {zc:.2f}"
        detect = 0.25 * exact_vec.abs().clamp_min(0.5 * rms)
        power = torch.where(det, torch.zeros_like(se), (zc + 3) * se)
        assert torch.all(power <= detect), f"{name}: lacks power ({float((power / detect).max()):.2f})"
    rows = probe.run(0)
    exact_rows = [r for r in rows if r[1] == "exact"]
    assert exact_rows and all(abs(r[7]) <= 1e-10 + 1e-6 * abs(r[5]) ** 2 for r in exact_rows)


# ------------------------------------------------------------------------------------------------
# 3. DisARM has no more variance than ARM (same uniforms)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["bernoulli-toy", "bernoulli-quadratic"])
def test_disarm_variance_below_arm(key):
    """DisARM = E[ARM | b, b~]: with the same u, E[ARM^2 - DisARM^2] = Var(ARM) - Var(DisARM) >= 0.
    One-sided paired z-test that the difference is positive, per coordinate."""
    torch.manual_seed(0)
    case = CASES[key]
    u = uniform((1, ROWS, *case.shape), case.logits)
    g_arm, = row_estimates(make("arm", "bernoulli", case.shape), case, ROWS, u=u)
    g_dis, = row_estimates(make("disarm", "bernoulli", case.shape), case, ROWS, u=u)
    d = g_arm.double().pow(2) - g_dis.double().pow(2)
    z = d.mean(0) / (d.std(0) / math.sqrt(ROWS))
    zc = z_crit(d.shape[1], alpha=2e-5)            # one-sided at 1e-5
    assert torch.all(z > zc), f"{key}: DisARM variance not significantly below ARM's: z={z.tolist()}"
    ratio = g_dis.double().var(0) / g_arm.double().var(0)
    assert torch.all(ratio < 1), ratio


# ------------------------------------------------------------------------------------------------
# 4. ReinMax: Heun's trapezoid is exact for quadratic f at tau = 1
# ------------------------------------------------------------------------------------------------

def forcing_uniforms(kind: str, configs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Uniforms that make hard_sample draw each configuration (row m draws configs[m])."""
    hi = torch.full_like(configs, 1 - 1e-12)
    lo = torch.full_like(configs, 1e-300 if configs.dtype == torch.float64 else 1e-30)
    u = torch.where(configs > 0, hi, lo)
    assert torch.equal(hard_sample(logits, kind, u.unsqueeze(0))[0], configs)
    return u.unsqueeze(0)


def reinmax_expectation(case: Case, tau: float, fn=None) -> torch.Tensor:
    """E_D[ReinMax gradient] by enumerating D (ReinMax draws no other noise), float64."""
    fn = fn or case.fn
    configs = all_configs(case.kind, case.shape, "cpu", torch.float64)         # [M, ...]
    M = configs.shape[0]
    logits = case.logits.double().expand(M, *case.shape).clone().requires_grad_()
    u = forcing_uniforms(case.kind, configs, logits)
    est = make("reinmax", case.kind, case.shape, tau=fixed_tau(tau))
    out = est(logits, lambda z: fn(z, None), u)
    g, = torch.autograd.grad(out.surrogate * M, logits)                        # per-row gradients
    q = log_prob(case.logits.double(), configs, case.kind).exp()               # [M]
    return (q.view(M, *[1] * len(case.shape)) * g).sum(0)


def quadratic_case(kind: str) -> Case:
    torch.manual_seed(5)
    shape = SHAPES[kind] if kind == "categorical" else (3,)
    logits = torch.randn(shape)
    dim = math.prod(shape)
    A, c = torch.randn(dim, dim).double(), torch.randn(dim).double()

    def fn(z, th):
        flat = z.flatten(-len(shape))
        return torch.einsum("...i,ij,...j->...", flat, A.to(z.dtype), flat) + flat @ c.to(z.dtype)
    return Case(f"quadratic-{kind}", kind, logits, fn)


def cubic(case: Case):
    base = case.fn
    w = torch.linspace(-1.0, 2.0, math.prod(case.shape), dtype=torch.float64)
    return lambda z, th: base(z, th) + (z.flatten(-len(case.shape)) @ w.to(z.dtype)) ** 3


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_reinmax_is_exact_for_quadratic_f_at_tau_one(kind):
    """Liu et al. 2023, section 5: ReinMax replaces f(I_i) - f(I_j) by the trapezoid
    (f'(I_i) + f'(I_j))^T (I_i - I_j) / 2 (Heun), exact for quadratic f, so at tau = 1 its
    expectation is the true gradient for any quadratic f (cross terms between latents included).
    Deterministic: the expectation over D is enumerated. The same computation shows the property is
    not vacuous: it fails for a cubic f, for tau != 1, and for ST (the Euler step)."""
    case = quadratic_case(kind)
    exact = enumerated(case)
    got = reinmax_expectation(case, 1.0)
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=1e-12 * float(exact.abs().max()))
    gap = float((exact - reinmax_expectation(case, 2.0)).abs().max())
    assert gap > 1e-3 * float(exact.abs().max()), "tau = 2 should not be exact"
    cub = Case(case.name, kind, case.logits, cubic(case))
    gap = float((enumerated(cub) - reinmax_expectation(cub, 1.0)).abs().max())
    assert gap > 1e-3 * float(enumerated(cub).abs().max()), "a cubic f should not be exact"


def enumerated(case: Case) -> torch.Tensor:
    from test_estimators import enumerated_grads
    return enumerated_grads(case)[0].double()


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_reinmax_sampled_mean_matches_its_enumerated_expectation(kind):
    """Through the ordinary sampling path (random u): the mean of ReinMax at tau = 1.5 is its
    enumerated expectation (z-test with power), and at tau = 1 on a quadratic f the exact
    gradient."""
    torch.manual_seed(0)
    case = quadratic_case(kind)
    for tau, want in ((1.5, reinmax_expectation(case, 1.5)), (1.0, enumerated(case))):
        g, = row_estimates(make("reinmax", kind, case.shape, tau=fixed_tau(tau)), case, ROWS)
        assert_mean(g, want, detect_for(case, want), f"reinmax tau={tau} {kind}")


def test_reinmax_gradient_formula_per_sample():
    """Per sample: grad = 2 J(pi_1) g - J(pi_0) g / 2, pi_1 = (D + softmax(theta/tau)) / 2,
    J(p) = diag(p) - p p^T, g = df/dz (Algorithm 2); Bernoulli = the 2-class case [0, phi]."""
    torch.manual_seed(0)
    tau = 1.3

    def J(p):
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    logits = torch.randn(50, 2, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 4, dtype=torch.float64)
    est = make("reinmax", "categorical", (2, 4), tau=fixed_tau(tau))
    u = uniform((1, *logits.shape), logits)
    g, = torch.autograd.grad(est(logits, lambda z: (z * a).sum((-1, -2)), u).surrogate * 50, logits)
    D = hard_sample(logits, "categorical", u)[0]
    p0 = torch.softmax(logits.detach(), -1)
    p1 = 0.5 * (D + torch.softmax(logits.detach() / tau, -1))
    want = 2 * (J(p1) @ a.unsqueeze(-1)).squeeze(-1) - 0.5 * (J(p0) @ a.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    # Bernoulli: the same formula on [0, phi] with sample [1 - b, b], read at class 1
    phi = torch.randn(50, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64)
    est = make("reinmax", "bernoulli", (3,), tau=fixed_tau(tau))
    u = uniform((1, *phi.shape), phi)
    g, = torch.autograd.grad(est(phi, lambda z: (z * w).sum(-1), u).surrogate * 50, phi)
    b = hard_sample(phi, "bernoulli", u)[0]
    th = torch.stack([torch.zeros_like(phi), phi], -1).detach()
    D2 = torch.stack([1 - b, b], -1)
    a2 = torch.stack([torch.zeros_like(w), w], -1)                  # df/dz2 = (0, w)
    p0, p1 = torch.softmax(th, -1), 0.5 * (D2 + torch.softmax(th / tau, -1))
    full = 2 * (J(p1) @ a2.unsqueeze(-1)).squeeze(-1) - 0.5 * (J(p0) @ a2.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(g, full[..., 1], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# 5. Gumbel-Rao: conditional sampler, K = 1 is ST-Gumbel in law, lower variance for K > 1
# ------------------------------------------------------------------------------------------------

EULER = 0.5772156649015329


def test_conditional_gumbel_and_logistic_samplers():
    """X = theta + G given argmax X = D: argmax is D always, and (D, G) has the unconditional law,
    so G's marginal over D is Gumbel(0, 1) (mean Euler's gamma, variance pi^2/6). Bernoulli: the
    conditional logistic noise has the sign of the sample, and its marginal is Logistic(0, 1)
    (mean 0, variance pi^2/3)."""
    torch.manual_seed(0)
    theta = torch.tensor([[-1.0, 0.3, 1.2, 0.0], [2.5, -0.7, 0.1, -3.0]], dtype=torch.float64)
    rows = ROWS
    u = uniform((2, rows, *theta.shape), theta)
    D = hard_sample(theta, "categorical", u[:1])[0]
    X = conditional_gumbel(theta, D, u[1])
    assert torch.equal(X.argmax(-1), D.argmax(-1)), "conditional sample inconsistent with D"
    G = (X - theta).flatten(1)
    assert_mean(G, torch.full((8,), EULER), 0.03, "conditional Gumbel mean")
    assert_mean((G - EULER) ** 2, torch.full((8,), math.pi ** 2 / 6), 0.1, "conditional Gumbel var")
    phi = torch.tensor([-3.0, -0.5, 0.0, 0.8, 4.0], dtype=torch.float64)
    u = uniform((2, rows, 5), phi)
    b = hard_sample(phi, "bernoulli", u[:1])[0]
    L = conditional_logistic(phi, b, u[1])
    assert torch.equal((phi + L > 0).double(), b), "conditional logistic inconsistent with b"
    assert_mean(L, torch.zeros(5), 0.04, "conditional logistic mean")
    assert_mean(L ** 2, torch.full((5,), math.pi ** 2 / 3), 0.15, "conditional logistic var")


GR_CASES = {"bernoulli": "bernoulli-quadratic", "categorical": "categorical-nonlinear"}


def two_sample_z(a: torch.Tensor, b: torch.Tensor):
    a, b = a.double().flatten(1), b.double().flatten(1)
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)) / se, se


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_gumbel_rao_one_draw_is_st_gumbel_in_distribution(kind):
    """Paulus et al. 2021: with K = 1 the conditional draw makes (D, G_1) distributed as (D, G), so
    GR-1 and ST-Gumbel have the same gradient distribution: equal means and equal second moments
    (two-sample z-tests with power), and equal forward values."""
    torch.manual_seed(0)
    case = CASES[GR_CASES[kind]]
    tau = fixed_tau(0.7)
    g_gr, = row_estimates(make("gumbel_rao", kind, case.shape, tau=tau, mc_samples=1), case, ROWS)
    g_st, = row_estimates(make("st_gumbel", kind, case.shape, tau=tau), case, ROWS)
    scale = g_st.double().flatten(1).pow(2).mean(0).sqrt()
    for label, a, b in (("mean", g_gr, g_st), ("second moment", g_gr ** 2, g_st ** 2)):
        z, se = two_sample_z(a, b)
        zc = z_crit(z.numel())
        assert torch.all(z.abs() < zc), f"{label}: z={z.tolist()}"
        ref = scale if label == "mean" else scale ** 2
        assert torch.all((zc + 3) * se <= 0.1 * ref), f"{label}: lacks power"


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_gumbel_rao_same_mean_lower_variance_than_st_gumbel(kind):
    """Rao-Blackwellisation: for K = 10 the mean is ST-Gumbel's (two-sample z-test) and the
    variance is lower (one-sided z-test on the difference of variances, per coordinate)."""
    torch.manual_seed(0)
    case = CASES[GR_CASES[kind]]
    tau = fixed_tau(0.7)
    rows = ROWS // 2
    g_gr, = row_estimates(make("gumbel_rao", kind, case.shape, tau=tau, mc_samples=10), case, rows)
    g_st, = row_estimates(make("st_gumbel", kind, case.shape, tau=tau), case, rows)
    z, se = two_sample_z(g_gr, g_st)
    zc = z_crit(z.numel())
    assert torch.all(z.abs() < zc), f"means differ: z={z.tolist()}"
    a, b = g_gr.double().flatten(1), g_st.double().flatten(1)
    da, db = (a - a.mean(0)) ** 2, (b - b.mean(0)) ** 2
    zv, _ = two_sample_z(db, da)                     # Var(ST) - Var(GR) > 0
    assert torch.all(zv > z_crit(zv.numel(), alpha=2e-5)), f"variance not lower: z={zv.tolist()}"


# ------------------------------------------------------------------------------------------------
# 6. GST: consistent, gapped, minimal perturbation
# ------------------------------------------------------------------------------------------------

def test_gst_perturbed_logits_are_consistent_gapped_and_minimal():
    torch.manual_seed(0)
    logits = 2 * torch.randn(20_000, 3, 5)
    for gap in (0.5, 1.0, 3.0):
        D = hard_sample(logits, "categorical", uniform((1, *logits.shape), logits))
        tp = gapped_logits(logits, D, gap)[0]
        i = D[0].argmax(-1, keepdim=True)
        assert torch.equal(tp.argmax(-1, keepdim=True), i), "argmax theta' must be the sample"
        top = tp.gather(-1, i)
        others = torch.where(D[0] > 0, torch.full_like(tp, -math.inf), tp)
        assert torch.all(top - others.amax(-1, keepdim=True) >= gap * (1 - 1e-6)), "gap"
        assert torch.equal(top, logits.amax(-1, keepdim=True)), "sampled class -> max logit"
        moved = tp != logits
        # a non-sampled logit moves only if it was within `gap` of the max
        within = logits > logits.amax(-1, keepdim=True) - gap
        assert torch.all(~moved | (D[0] > 0) | within)


def test_gst_gradient_is_the_tempered_softmax_jacobian_at_the_gapped_logits():
    """Per sample, grad = (1/tau) J(y)^T a for f = <a, z>, y = softmax(theta'/tau); and where the
    sample is already the argmax with every other logit >= gap below, theta' = theta, so GST's
    gradient is that of softmax(theta/tau)."""
    torch.manual_seed(0)
    tau, rows = 0.8, 200
    logits = (2 * torch.randn(rows, 2, 4, dtype=torch.float64)).requires_grad_()
    a = torch.randn(2, 4, dtype=torch.float64)
    est = make("gst", "categorical", (2, 4), tau=fixed_tau(tau))
    u = uniform((1, *logits.shape), logits)
    g, = torch.autograd.grad(est(logits, lambda z: (z * a).sum((-1, -2)), u).surrogate * rows, logits)
    D = hard_sample(logits, "categorical", u)
    y = torch.softmax(gapped_logits(logits, D, 1.0)[0] / tau, -1)
    Jy = torch.diag_embed(y) - y.unsqueeze(-1) * y.unsqueeze(-2)
    torch.testing.assert_close(g, (Jy @ a.unsqueeze(-1)).squeeze(-1) / tau, rtol=1e-10, atol=1e-12)
    wide = torch.tensor([[5.0, 0.0, -1.0, 2.0]], dtype=torch.float64).requires_grad_()
    Dw = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(gapped_logits(wide, Dw, 1.0)[0], wide.detach())


# ------------------------------------------------------------------------------------------------
# 7. Numerics: |logit| up to 30 (and 1e3), smallest temperatures, extreme uniforms
# ------------------------------------------------------------------------------------------------

EXTREME = {"bernoulli": torch.tensor([30.0, -30.0, 1e3, -1e3, 0.0]),
           "categorical": torch.tensor([[30.0, -30.0, 0.0], [1e3, -1e3, 0.0], [30.0, 30.0, -30.0]])}


@pytest.mark.parametrize("name, kind", MINE_KINDS)
def test_extreme_logits_and_small_tau_stay_finite(name, kind):
    torch.manual_seed(0)
    row, rows = EXTREME[kind], 2000
    kw = {}
    if name in ("gst", "gumbel_rao"):
        kw["tau"] = fixed_tau(1e-3)
    if name == "reinmax":
        kw["tau"] = fixed_tau(1.0)                  # its smallest allowed temperature
    if name != "exact":
        kw["samples"] = 2
    est = make(name, kind, row.shape, **kw)
    shape = est.noise_shape((rows, *row.shape))
    tiny, top = torch.finfo(torch.float32).tiny, 1 - torch.finfo(torch.float32).eps
    for u in (None, torch.full(shape, tiny), torch.full(shape, top)):
        logits = row.expand(rows, *row.shape).clone().requires_grad_()
        theta = torch.full((rows, *row.shape), 0.3, requires_grad=True)
        out = est(logits, lambda z: (z - theta).pow(2).flatten(2).mean(-1), u)
        gl, gt = torch.autograd.grad(out.surrogate, [logits, theta])
        for label, x in (("loss", out.loss), ("surrogate", out.surrogate), ("d/dlogits", gl),
                         ("d/dtheta", gt)):
            assert torch.isfinite(x).all(), f"{name} {kind}: non-finite {label}"


# ------------------------------------------------------------------------------------------------
# 8. Refusals: before training, naming the key and the value
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, pattern", [
    (lambda: make("arm", "categorical", (2, 3)), r"'arm' does not support categorical"),
    (lambda: make("disarm", "categorical", (2, 3)), r"'disarm' does not support categorical"),
    (lambda: make("gst", "bernoulli", (3,)), r"'gst' does not support bernoulli"),
    (lambda: make("reinmax", "categorical", (2, 3), tau=TauSchedule(0.5, 0.5, 0.0, 1)),
     r"tau\.init=0\.5 .*reinmax.*>= 1"),
    (lambda: make("reinmax", "bernoulli", (3,), tau=TauSchedule(1.5, 0.9, 1e-3, 10)),
     r"tau\.min=0\.9 .*reinmax"),
    (lambda: make("rloo", "bernoulli", (3,), samples=1), r"samples=1 .*rloo.*at least 2"),
    (lambda: make("rloo", "bernoulli", (3,), samples=0), r"samples=0"),
    (lambda: make("exact", "bernoulli", (17,)), r"'exact'.*\(17,\).*2\^17.*65536"),
    (lambda: make("exact", "categorical", (6, 10)), r"'exact'.*\(6, 10\).*10\^6.*65536"),
    (lambda: make("exact", "bernoulli", (3,), samples=2), r"samples=2 .*exact"),
    (lambda: make("gumbel_rao", "bernoulli", (3,), mc_samples=0), r"mc_samples=0"),
    (lambda: make("gst", "categorical", (2, 3), gap=0.0), r"gap=0\.0"),
    (lambda: make("gst", "categorical", (2, 3), tau=TauSchedule(0.0, 0.5, 0.0, 1)),
     r"tau\.init=0\.0"),
])
def test_refusals(build, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build()


def test_largest_enumerable_shapes_are_accepted():
    assert make("exact", "bernoulli", (16,)).evals == 65536
    assert make("exact", "categorical", (4, 16)).evals == 65536


def test_reinmax_keeps_its_own_temperature_in_diagnostics():
    """The probe shares `schedule` between relaxed estimators; ReinMax must not inherit a gumbel
    schedule that goes below 1."""
    from discograd.diagnostics import Probe, Reference
    from discograd.models import Toy
    toy = Toy(dim=2)
    trained = make("gumbel", "bernoulli", (2,), tau=TauSchedule(1.0, 0.1, 1.0, 1))
    probe = Probe(toy, trained, ["gumbel", "reinmax"], Reference("exact"), 4, torch.empty(3, 0))
    probe.run(100)
    assert probe.estimators["reinmax"].tau == 1.0 and trained.tau == 0.1


# ------------------------------------------------------------------------------------------------
# 9. Command line: every estimator trains the toy problem (two short sweeps)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, names", [
    ("bernoulli", "arm,disarm,rloo,muprop,exact,reinmax,gumbel_rao"),
    ("categorical", "rloo,muprop,exact,reinmax,gst,gumbel_rao"),
])
def test_estimators_train_the_toy_problem_from_the_command_line(tmp_path, kind, names):
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", f"estimator={names}", "model=toy",
                        f"model.latent={kind}", "model.dim=3", "train.steps=30", "train.log_every=10",
                        "train.eval_every=10", "train.progress=log", f"hydra.sweep.dir={sweep}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep.rglob("summary.json")]
    assert len(summaries) == len(names.split(","))
    for s in summaries:
        assert s["status"] == "completed", s
    text = json.dumps(summaries)
    for name in names.split(","):
        assert f'"{name}"' in text
