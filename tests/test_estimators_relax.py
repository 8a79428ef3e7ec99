"""REBAR, RELAX and VIMCO: unbiasedness against exact gradients, the learned control variates,
numerics, memory, configuration and the command line.

Method (as in tests/test_estimators.py): many independent estimates in one call, one per row of a
minibatch of identical logits (and parameters inside f), the gradient of row b times the number of
rows being one estimate; every statistical assertion is a z-test from the measured standard error,
Bonferroni-corrected over the coordinates tested together (family-wise false alarm ``ALPHA``), with
a power check ((z_crit + 3) se <= detect, ``detect`` a quarter of the exact gradient); fixed seeds.
Exact references: Tucker's closed form for the toy problem, and autograd of the enumerated
expectation (over latent configurations, or over S-tuples of them for VIMCO's S-sample bound).
"""
from __future__ import annotations

import gc
import itertools
import json
import math
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from torch import Tensor

from discograd.estimators import REGISTRY, ConfigError, hard_sample, log_prob, uniform
from discograd.estimators.rebar import conditional_perturbed, perturbed
from discograd.estimators.vimco import leave_one_out_bounds, multisample_bound
from discograd.models import VAE, Toy

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 1e-5
POWER_MARGIN = 3.0
T = 0.45


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def z_crit(m: int) -> float:
    return float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * max(m, 1)), dtype=torch.float64)))


def assert_mean(draws: Tensor, expected: Tensor, detect, what: str) -> None:
    """z-test that the rows of ``draws`` have mean ``expected``, with power to see ``detect``."""
    draws = draws.detach().double().flatten(1)
    expected = torch.as_tensor(expected).detach().double().flatten().expand(draws.shape[1])
    detect = torch.as_tensor(detect, dtype=torch.float64).flatten().expand(draws.shape[1])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    zc = z_crit(draws.shape[1])
    assert torch.all(se > 0), f"{what}: degenerate draws"
    z = (mean - expected) / se
    assert torch.all(z.abs() < zc), f"{what}: z={z.tolist()} mean={mean.tolist()} exact={expected.tolist()}"
    assert torch.all((zc + POWER_MARGIN) * se <= detect), (
        f"{what}: no power: se={se.tolist()} detect={detect.tolist()}")


def detect_for(exact: Tensor, rel: float = 0.25) -> Tensor:
    rms = float(exact.pow(2).mean().sqrt())
    return rel * exact.abs().clamp_min(0.5 * rms)


def configurations(kind: str, shape) -> Tensor:
    if kind == "bernoulli":
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=shape[0])), dtype=torch.float64)
    n, k = shape
    idx = torch.tensor(list(itertools.product(range(k), repeat=n)))
    return torch.nn.functional.one_hot(idx, k).double()


def row_grads(est, logits_row: Tensor, theta_row: Tensor, fn, rows: int, u=None) -> list[Tensor]:
    """``rows`` estimates of the gradient w.r.t. the logits and a parameter theta inside f."""
    logits = logits_row.expand(rows, *logits_row.shape).clone().requires_grad_()
    theta = theta_row.expand(rows, *theta_row.shape).clone().requires_grad_()
    out = est(logits, lambda z: fn(z, logits, theta), u)
    gl, gt = torch.autograd.grad(out.surrogate, [logits, theta], allow_unused=True)
    return [gl * rows, torch.zeros_like(theta) if gt is None else gt * rows]


# objectives f(z, logits, theta) -> [S, B]: nonlinear in z, a parameter theta inside f, and a direct
# dependence on the logits (log q(z), as in a sampled KL), which estimators must differentiate too
def f_bern(z, logits, theta):
    lin = (z * theta).sum(-1)
    return torch.sin(2 * lin) + (z[..., 0] - z[..., 1] * z[..., 2]) ** 2 + 0.3 * log_prob(logits, z, "bernoulli")


def f_cat(z, logits, theta):
    v = (z * theta).sum(-1)                                # [S, B, n]
    return (v.prod(-1) + torch.cos(v.sum(-1)) ** 2) + 0.3 * log_prob(logits, z, "categorical")


CASES = {
    "bernoulli": (torch.tensor([-1.0, 0.3, 1.2]), torch.tensor([0.7, -1.1, 0.4]), f_bern),
    "categorical": (torch.tensor([[-1.0, 0.3, 1.2], [0.8, -0.5, 0.1]]),
                    torch.tensor([[0.2, 0.9, -0.4], [0.5, 0.1, 1.3]]), f_cat),
}


def exact_mean_grads(kind, logits_row, theta_row, fn) -> list[Tensor]:
    logits = logits_row.double().unsqueeze(0).requires_grad_()
    theta = theta_row.double().unsqueeze(0).requires_grad_()
    z = configurations(kind, tuple(logits_row.shape)).unsqueeze(1)          # [C, 1, ...]
    q = log_prob(logits, z, kind).exp()
    grads = torch.autograd.grad((q * fn(z, logits, theta)).sum(), [logits, theta], allow_unused=True)
    return [torch.zeros_like(x[0]) if g is None else g[0] for g, x in zip(grads, [logits, theta])]


def exact_bound_grads(kind, logits_row, theta_row, fn, S) -> list[Tensor]:
    """Gradient of -E[log 1/S sum_s exp(-f(z_s))] by enumerating all S-tuples."""
    logits = logits_row.double().unsqueeze(0).requires_grad_()
    theta = theta_row.double().unsqueeze(0).requires_grad_()
    configs = configurations(kind, tuple(logits_row.shape))
    C = configs.shape[0]
    idx = torch.tensor(list(itertools.product(range(C), repeat=S)))          # [C^S, S]
    z = configs[idx.T].unsqueeze(2)                                          # [S, C^S, 1, ...]
    z = z.reshape(S, C ** S, *logits_row.shape)                              # rows = tuples
    lg = logits.expand(C ** S, *logits_row.shape)
    th = theta.expand(C ** S, *theta_row.shape)
    logq = log_prob(lg, z, kind)                                             # [S, C^S]
    weight = logq.sum(0).exp()
    bound = multisample_bound(-fn(z, lg, th))
    grads = torch.autograd.grad(-(weight * bound).sum(), [logits, theta], allow_unused=True)
    return [torch.zeros_like(x[0]) if g is None else g[0] for g, x in zip(grads, [logits, theta])]


def build(name, kind, shape, **kw):
    return REGISTRY[name](kind, tuple(shape), **kw)


def randomised(est):
    """Non-default control-variate parameters: unbiasedness must not depend on them."""
    with torch.no_grad():
        est.eta.fill_(0.7)
        est.log_tau.fill_(math.log(0.3))
        if hasattr(est, "net"):
            g = torch.Generator().manual_seed(5)
            for p in est.net.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return est


# ------------------------------------------------------------------------------------------------
# declared properties
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rebar", "relax", "vimco"])
def test_declared_properties(name):
    cls = REGISTRY[name]
    assert cls.unbiased and set(cls.kinds) == {"bernoulli", "categorical"}
    est = build(name, "bernoulli", (4,), samples=3)
    shape = (5, 4)
    if name == "vimco":
        assert not cls.relaxed
        assert est.evals == 3 and est.noise_shape(shape) == (3, 5, 4)
        assert est.properties()["objective"] == "multisample"
    else:
        assert est.evals == 9 and est.multi_eval and est.noise_shape(shape) == (6, 5, 4)
        assert cls.relaxed            # models must accept relaxed latents: f(sigma(z)) in c(z)
        assert {n for n, _ in est.named_parameters()} >= {"eta", "log_tau"}


# ------------------------------------------------------------------------------------------------
# REBAR / RELAX
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_conditional_sample_has_the_right_marginal_and_argmax(kind):
    """z~ | b: H(z~) = b exactly, and b ~ q, z~ | b has the marginal of z (a z-test on moments of
    the relaxation at tau = 0.5, independent draws)."""
    torch.manual_seed(0)
    row = CASES[kind][0] * 2
    rows = 200_000
    logits = row.expand(rows, *row.shape)
    u = uniform((3, rows, *row.shape), logits)
    b = hard_sample(logits, kind, u[:1])
    zt = conditional_perturbed(logits, kind, b, u[1:2])
    if kind == "bernoulli":
        assert torch.equal((zt > 0).float(), b)
        sig = lambda z: torch.stack([torch.sigmoid(z / 0.5), torch.sigmoid(z / 0.5) ** 2], -1)
    else:
        assert torch.equal(hard_sample(logits, kind, u[:1]), b)
        assert torch.equal(zt.argmax(-1), b.argmax(-1))
        sig = lambda z: torch.softmax(z / 0.5, -1)
    z_indep = perturbed(logits, kind, u[2:3])
    diff = (sig(zt) - sig(z_indep))[0].flatten(1)
    assert_mean(diff, torch.zeros(diff.shape[1]), 0.01, f"{kind}: E[sigma(z~)] vs E[sigma(z)]")


@pytest.mark.parametrize("name", ["rebar", "relax"])
@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_rebar_relax_unbiased_by_enumeration(name, kind):
    torch.manual_seed(1)
    row, theta, fn = CASES[kind]
    est = randomised(build(name, kind, row.shape)).eval()
    got = row_grads(est, row, theta, fn, 200_000)
    for label, g, e in zip(("logits", "theta"), got, exact_mean_grads(kind, row, theta, fn)):
        assert_mean(g, e, detect_for(e), f"{name} {kind} d/d{label}")


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_rebar_relax_unbiased_on_the_toy_closed_form(name):
    torch.manual_seed(2)
    row = torch.tensor([-1.2, -0.4, 0.5, 1.5])
    s = torch.sigmoid(row.double())
    exact = (1 - 2 * T) * s * (1 - s) / 4
    est = build(name, "bernoulli", (4,)).eval()           # the defaults: eta = 1, tau = 0.5
    g, _ = row_grads(est, row, torch.zeros(4), lambda z, l, th: (z - T).pow(2).mean(-1), 400_000)
    assert_mean(g, exact, detect_for(exact), f"{name} toy")


@pytest.mark.parametrize("kind, shape", [("bernoulli", (3,)), ("categorical", (2, 3))])
def test_rebar_relax_unbiased_on_a_small_vae(kind, shape):
    """Gradient w.r.t. the encoder's output (the logits) of E_q[f] with the VAE's sampled-KL
    objective (f depends on the logits directly through log q), against enumeration."""
    torch.manual_seed(3)
    vae = VAE(latent=kind, latent_dim=shape[0], classes=shape[-1], hidden=[], kl="sampled", x_dim=6)
    with torch.no_grad():
        vae.prior_logits.normal_()
        vae.decoder[-1].weight.normal_(0.0, 1.5)         # a decoder for which z matters
    x = (torch.rand(1, 6) < 0.5).float()
    row = vae.logits(x).detach()[0]
    z = configurations(kind, shape).float().unsqueeze(1)
    lg = row.unsqueeze(0).double().requires_grad_()
    vd = VAE(latent=kind, latent_dim=shape[0], classes=shape[-1], hidden=[], kl="sampled", x_dim=6).double()
    vd.load_state_dict(vae.state_dict())
    q = log_prob(lg, z.double(), kind).exp()
    exact, = torch.autograd.grad((q * vd.objective(x.double(), lg)(z.double())).sum(), lg)
    rows = 200_000
    xs = x.expand(rows, 6)
    for name in ("rebar", "relax"):
        est = randomised(build(name, kind, shape)).eval()
        logits = row.expand(rows, *shape).clone().requires_grad_()
        with torch.no_grad():
            for p in vae.parameters():
                p.requires_grad_(False)
        out = est(logits, vae.objective(xs, logits))
        g, = torch.autograd.grad(out.surrogate, logits)
        assert_mean(g * rows, exact[0], detect_for(exact[0]), f"{name} vae {kind}")


def test_train_mode_gives_the_same_model_gradient_and_touches_only_own_parameters():
    """With the variance objective on (training mode), the surrogate's model gradient equals the
    eval-mode one for the same noise, surrogate.backward() adds nothing to the estimator's own
    parameters, and what the forward pass wrote there is the gradient of the variance objective
    (checked by central finite differences of that objective, which is deterministic given u)."""
    torch.manual_seed(4)
    kind, (row, theta, fn) = "categorical", CASES["categorical"]
    rows = 64
    for name in ("rebar", "relax"):
        est = randomised(build(name, kind, row.shape)).double()
        u = uniform(est.noise_shape((rows, *row.shape)), torch.empty((), dtype=torch.float64))
        est.eval()
        ref = row_grads(est, row.double(), theta.double(), fn, rows, u)
        est.train()
        est.zero_grad(set_to_none=True)
        logits = row.double().expand(rows, *row.shape).clone().requires_grad_()
        th = theta.double().expand(rows, *theta.shape).clone().requires_grad_()
        out = est(logits, lambda z: fn(z, logits, th), u)
        written = {n: p.grad.clone() for n, p in est.named_parameters()}
        out.surrogate.backward()
        for n, p in est.named_parameters():
            assert torch.equal(p.grad, written[n]), f"{name}: surrogate.backward() reached {n}"
            assert p.grad.grad_fn is None
        for a, b in zip(ref, [logits.grad * rows, th.grad * rows]):
            torch.testing.assert_close(a, b)
        assert any(w.abs().sum() > 0 for w in written.values())
        # finite differences of the variance objective
        params = dict(est.named_parameters())
        checks = ["eta", "log_tau"] + (["net.2.bias", "net.0.weight"] if name == "relax" else [])
        for n in checks:
            p = params[n]
            i = (0,) * p.dim()
            h = 1e-5
            vals = []
            for sign in (1, -1):
                with torch.no_grad():
                    p[i] += sign * h
                lg = row.double().expand(rows, *row.shape).clone().requires_grad_()
                vals.append(est(lg, lambda z: fn(z, lg, th.detach()), u).stats["cv_variance"].item())
                with torch.no_grad():
                    p[i] -= sign * h
            fd = (vals[0] - vals[1]) / (2 * h)
            assert fd == pytest.approx(written[n][i].item(), rel=1e-4, abs=1e-9), (name, n)


def _variance_draws(est, phi: float, rows: int) -> Tensor:
    """rows independent single-example estimates of the toy gradient (t = T, one latent)."""
    est.eval()
    g, _ = row_grads(est, torch.tensor([phi]), torch.zeros(1), lambda z, l, th: (z - T).pow(2).mean(-1), rows)
    return g[:, 0].double()


def _var_and_se(g: Tensor) -> tuple[float, float]:
    """Sample variance and its standard error (delta method: the squared deviations' mean)."""
    d = (g - g.mean()).pow(2)
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item()


def train_toy(name: str, steps: int = 500, batch: int = 8):
    """The training loop's step on the toy (one Adam over model and estimator, lr 0.01, grads
    zeroed before the forward pass)."""
    torch.manual_seed(6)
    toy, est = Toy(dim=1, t=T), build(name, "bernoulli", (1,))
    before = {n: p.detach().clone() for n, p in est.named_parameters()}
    opt = torch.optim.Adam([{"params": toy.parameters()}, {"params": est.parameters()}], lr=0.01)
    x = torch.empty(batch, 0)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        logits = toy.logits(x)
        est(logits, toy.objective(x, logits)).surrogate.backward()
        opt.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in est.named_parameters()}
    return toy, est, moved


def test_relax_learns_a_variance_below_reinforce_loo_at_equal_evaluations():
    """Toy problem, t = 0.45: after 500 training steps RELAX (3 evaluations of f) has a lower
    gradient variance than REINFORCE with the leave-one-out baseline over 3 samples, at the same
    parameters; and its learned parameters moved away from their initial values."""
    toy, est, moved = train_toy("relax")
    assert moved["eta"] > 0.01 and moved["log_tau"] > 0.01 and moved["net.2.weight"] > 0.01, moved
    phi = toy.phi.item()
    rows = 100_000
    torch.manual_seed(7)
    v_relax, se_relax = _var_and_se(_variance_draws(est, phi, rows))
    v_loo, se_loo = _var_and_se(_variance_draws(build("reinforce", "bernoulli", (1,), samples=3), phi, rows))
    assert est.evals == 3
    z = (v_loo - v_relax) / math.sqrt(se_relax ** 2 + se_loo ** 2)
    assert z > z_crit(1), (v_relax, v_loo, z)
    assert v_relax < 0.5 * v_loo, (v_relax, v_loo)


def test_rebar_learns_to_reduce_its_variance():
    """REBAR's eta and temperature move, and its variance at the trained parameters is
    significantly below its variance with the initial eta = 1, tau = 0.5 at the same model
    parameters. (REBAR's control variate eta f(sigma(z)) has no constant offset, so on this toy it
    cannot reach REINFORCE-LOO's variance; the report gives the numbers.)"""
    toy, est, moved = train_toy("rebar")
    assert moved["eta"] > 0.05 and moved["log_tau"] > 0.01, moved
    phi, rows = toy.phi.item(), 100_000
    torch.manual_seed(8)
    v_trained, se_t = _var_and_se(_variance_draws(est, phi, rows))
    v_init, se_i = _var_and_se(_variance_draws(build("rebar", "bernoulli", (1,)), phi, rows))
    z = (v_init - v_trained) / math.sqrt(se_t ** 2 + se_i ** 2)
    assert z > z_crit(1), (v_trained, v_init, z)


# ------------------------------------------------------------------------------------------------
# VIMCO
# ------------------------------------------------------------------------------------------------

def test_vimco_leave_one_out_baseline_formula():
    torch.manual_seed(9)
    lw = torch.randn(4, 3, dtype=torch.float64) * 5
    got = leave_one_out_bounds(lw)
    for s in range(4):
        others = [j for j in range(4) if j != s]
        geo = lw[others].mean(0)
        want = torch.log((lw[others].exp().sum(0) + geo.exp()) / 4)
        torch.testing.assert_close(got[s], want)
    torch.testing.assert_close(multisample_bound(lw), torch.log(lw.exp().mean(0)))


@pytest.mark.parametrize("kind, S", [("bernoulli", 3), ("categorical", 2)])
def test_vimco_unbiased_for_the_multisample_bound(kind, S):
    """Against the exact gradient of -E[log 1/S sum_s exp(-f(z_s))], enumerated over S-tuples;
    also shows that the bound's gradient is not E[f]'s (the test could tell them apart)."""
    torch.manual_seed(10)
    row, theta, fn = CASES[kind]
    est = build("vimco", kind, row.shape, samples=S)
    got = row_grads(est, row, theta, fn, 200_000)
    exact = exact_bound_grads(kind, row, theta, fn, S)
    other = exact_mean_grads(kind, row, theta, fn)
    for label, g, e, o in zip(("logits", "theta"), got, exact, other):
        assert_mean(g, e, detect_for(e), f"vimco {kind} d/d{label}")
    if kind == "bernoulli":      # the two targets differ by more than the test's resolution
        assert ((exact[0] - other[0]).abs() > detect_for(exact[0])).any()


def test_vimco_unbiased_on_a_small_iwae_vae():
    """model.objective=iwae: f is -log w (sampled KL, no extra term) and vimco's mean gradient
    w.r.t. the logits is the gradient of the S-sample bound (enumerated over S-tuples)."""
    torch.manual_seed(11)
    S, shape = 2, (3,)
    vae = VAE(latent="bernoulli", latent_dim=3, hidden=[], x_dim=6, objective="iwae")
    with torch.no_grad():
        vae.prior_logits.normal_()
    x = (torch.rand(1, 6) < 0.5).float()
    row = vae.logits(x).detach()[0]
    assert vae.extra_loss(x, vae.logits(x)) is None
    sampled = VAE(latent="bernoulli", latent_dim=3, hidden=[], x_dim=6, kl="sampled")
    sampled.load_state_dict(vae.state_dict())
    zz = configurations("bernoulli", shape).float().unsqueeze(1)
    lg0 = row.unsqueeze(0)
    torch.testing.assert_close(vae.objective(x, lg0)(zz), sampled.objective(x, lg0)(zz))
    vae = vae.double()
    xd = x.double()

    def fn(z, logits, theta):
        return vae.objective(xd.expand(logits.shape[0], 6), logits)(z)

    with torch.no_grad():
        for p in vae.parameters():
            p.requires_grad_(False)
    exact, _ = exact_bound_grads("bernoulli", row.double(), torch.zeros(1), fn, S)
    g, _ = row_grads(build("vimco", "bernoulli", shape, samples=S), row.double(), torch.zeros(1), fn, 200_000)
    assert_mean(g, exact, detect_for(exact), "vimco iwae vae d/dlogits")


def test_vimco_refuses_one_sample_and_constant_f_gives_zero():
    with pytest.raises(ConfigError, match=r"vimco.* needs samples >= 2"):
        build("vimco", "bernoulli", (3,), samples=1)
    est = build("vimco", "categorical", (2, 3), samples=4)
    g, t = row_grads(est, CASES["categorical"][0], CASES["categorical"][1],
                     lambda z, l, th: (z * th).sum((-1, -2)) * 0 + 3.0, 1000)
    assert torch.all(g == 0) and torch.all(t == 0)


# ------------------------------------------------------------------------------------------------
# numerics, diagnostics, memory
# ------------------------------------------------------------------------------------------------

EXTREME = {"bernoulli": torch.tensor([30.0, -30.0, 0.0, 29.0]),
           "categorical": torch.tensor([[30.0, -30.0, 0.0], [-30.0, -30.0, 30.0], [0.0, 0.0, 0.0]])}


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
@pytest.mark.parametrize("name, kw", [("rebar", {"tau_init": 1e-3}), ("relax", {"tau_init": 1e-3}),
                                      ("rebar", {"tau_init": 1e3}), ("vimco", {"samples": 3})])
def test_extreme_logits_and_temperatures_stay_finite(kind, name, kw):
    torch.manual_seed(12)
    row, rows = EXTREME[kind], 500
    est = build(name, kind, row.shape, **kw).train()
    tiny, top = torch.finfo(torch.float32).tiny, 1 - torch.finfo(torch.float32).eps
    shape = est.noise_shape((rows, *row.shape))
    for u in (None, torch.full(shape, tiny), torch.full(shape, top)):
        est.zero_grad(set_to_none=True)
        logits = row.expand(rows, *row.shape).clone().requires_grad_()
        theta = torch.full(row.shape, 0.3).expand(rows, *row.shape).clone().requires_grad_()
        # large losses (hundreds of nats) for vimco's log-sum-exp, with a direct log q term
        out = est(logits, lambda z: 300 * (z - theta).pow(2).flatten(2).sum(-1) + log_prob(logits, z, kind), u)
        gl, gt = torch.autograd.grad(out.surrogate, [logits, theta])
        for label, v in [("loss", out.loss), ("d/dlogits", gl), ("d/dtheta", gt),
                         *[(f"stat {k}", s) for k, s in out.stats.items()],
                         *[(f"grad {n}", p.grad) for n, p in est.named_parameters() if p.grad is not None]]:
            assert torch.isfinite(v).all(), f"{name} {kind} {kw}: non-finite {label}"


def test_probe_bias_of_rebar_and_relax_is_consistent_with_zero():
    """The diagnostics probe (eval mode, vmap(grad), noise passed in, common random numbers) on an
    enumerable VAE: bias2 of rebar (defaults) and of relax (a random control-variate net) is
    consistent with zero, both for the encoder and the decoder."""
    from discograd.diagnostics import GRAD_STATS_HEADER, Probe, Reference
    col = {c: i for i, c in enumerate(GRAD_STATS_HEADER)}
    torch.manual_seed(13)
    vae = VAE(latent="bernoulli", latent_dim=4, hidden=[], x_dim=16)
    x = (torch.rand(8, 16) < 0.5).float()
    relax = randomised(build("relax", "bernoulli", (4,)))
    p = Probe(vae, relax, ["rebar", "relax"], Reference("exact"), 150, x)
    bias = {}
    for r in range(10):
        p.seed = r
        for row in p.run(0):
            if row[col["param_group"]] in ("encoder", "decoder"):
                bias.setdefault((row[col["estimator"]], row[col["param_group"]]), []).append(row[col["bias2"]])
                assert row[col["evals"]] == 3
    assert len(bias) == 4
    zc = z_crit(len(bias))
    for key, vals in bias.items():
        v = torch.tensor(vals, dtype=torch.float64)
        z = v.mean() / (v.std() / math.sqrt(len(v)))
        assert abs(z) < zc, (key, vals)
    assert relax.training, "the probe restores the training mode"


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def test_no_memory_growth_across_steps():
    """storchastic issue 26: graphs kept alive across steps by create_graph / retain_graph. Over 200
    training steps the number of live tensors stays flat, every step's graph is freed (a weak
    reference to the previous surrogate dies), and no .grad carries a graph."""
    torch.manual_seed(14)
    vae = VAE(latent="bernoulli", latent_dim=8, hidden=[16], x_dim=20, kl="sampled")
    est = build("relax", "bernoulli", (8,))        # REBAR's machinery plus the net
    opt = torch.optim.Adam([{"params": vae.parameters()}, {"params": est.parameters()}], lr=1e-3)
    x = (torch.rand(10, 20) < 0.5).float()
    counts, previous = [], None
    for step in range(200):
        opt.zero_grad(set_to_none=True)
        logits = vae.logits(x)
        out = est(logits, vae.objective(x, logits))
        out.surrogate.backward()
        opt.step()
        if previous is not None:
            assert previous() is None, "the previous step's graph is still alive"
        previous = weakref.ref(out.surrogate)
        del logits, out
        if step in (20, 199):
            counts.append(_live_tensors())
    assert counts[1] <= counts[0], counts
    for p in [*vae.parameters(), *est.parameters()]:
        assert p.grad is None or p.grad.grad_fn is None


# ------------------------------------------------------------------------------------------------
# configuration and the command line
# ------------------------------------------------------------------------------------------------



@pytest.mark.parametrize("overrides, message", [
    (["estimator=vimco", "model=vae"], "model.objective=iwae"),
    (["estimator=rebar", "model=vae", "model.objective=iwae"], "estimator 'rebar'.*use estimator=vimco"),
    (["estimator=vimco", "model=vae", "model.objective=iwae", "estimator.samples=1"], "estimator.samples=1"),
    (["estimator=vimco", "model=vae", "model.objective=iwae", "diagnostics.every=10",
      "diagnostics.estimators=null"], "diagnostics.estimators=null"),
    (["estimator=relax", "model=toy", "estimator.tau_init=0"], "estimator.tau_init=0"),
    (["estimator=relax", "model=toy", "estimator.hidden=0"], "estimator.hidden=0"),
])
def test_refusals_before_training(overrides, message, cfg_of):
    from discograd.experiment.build import validate
    with pytest.raises(ConfigError, match=message):
        validate(cfg_of(*overrides))


@pytest.mark.parametrize("overrides", [
    ["estimator=vimco", "model=vae", "model.objective=iwae"],
    ["estimator=relax", "model=vae", "model.latent=categorical", "estimator.samples=2"],
    ["estimator=rebar", "model=toy", "estimator.learn=false"],
])
def test_valid_combinations_compose_and_build(overrides, cfg_of):
    from discograd.estimators import build_estimator
    from discograd.experiment.build import validate
    cfg = cfg_of(*overrides)
    validate(cfg)
    kind = getattr(cfg.model.latent, "value", cfg.model.latent)
    shape = (4,) if kind == "bernoulli" else (4, 3)
    est = build_estimator(cfg.estimator, kind, shape)
    assert est.name == cfg.estimator.name and est.samples == cfg.estimator.samples


def test_vae_rejects_an_unknown_objective():
    with pytest.raises(ConfigError, match="model.objective"):
        VAE(latent_dim=3, x_dim=4, objective="elbo2")


def test_trainer_builds_the_iwae_vae(cfg_of):
    from discograd.experiment.build import build_model
    model = build_model(cfg_of("estimator=vimco", "model=vae", "model.objective=iwae"))
    assert model.train_objective == "iwae"


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_command_line_trains_the_toy(name, tmp_path):
    """(vimco is refused on the toy: it estimates the S-sample bound, not E[f];
    tests/test_messages.py.)"""
    out = tmp_path / name
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), f"estimator={name}", "model=toy",
                        "train.steps=50", "train.log_every=25", f"hydra.run.dir={out}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["estimator"]["evals"] == 3
    assert math.isfinite(summary["final"]["test/exact_loss"])
    metrics = (out / "metrics.csv").read_text()
    assert ",train,tau," in metrics and ",train,eta," in metrics and ",train,cv_variance," in metrics
