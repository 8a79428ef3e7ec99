"""Variance normalization (reinforce / muprop ``normalize=true``; estimators/normalize.py): what
stays unbiased, proved by z-tests against enumeration at a fixed scale s, and the update rule."""
from __future__ import annotations

import pytest
import torch

import discograd
from discograd.diagnostics.certify import PROBLEMS, _detect, _draw, _stats, _z_crit
from discograd.latents import all_configs, log_prob


def split_exact(problem):
    """(the gradient of E_q[f] through q, through f's direct dependence on the logits, through
    f's own parameters) by enumeration, float64."""
    logits = problem.logits.double()[None].requires_grad_()
    theta = problem.theta.double()[None].requires_grad_()
    z = all_configs(problem.kind, tuple(problem.logits.shape), "cpu", torch.float64)[:, None]
    q = log_prob(logits, z, problem.kind).exp()
    through_q, = torch.autograd.grad((q * problem.f(logits.detach(), theta.detach())(z)).sum(), logits)
    direct, g_theta = torch.autograd.grad((q.detach() * problem.f(logits, theta)(z)).sum(),
                                          [logits, theta])
    return through_q[0], direct[0], g_theta[0]


@pytest.mark.parametrize("name", ["reinforce", "muprop"])
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_normalized_signal_is_unbiased_up_to_its_scale(name, problem):
    """At a scale s = 3 fixed by earlier steps (eval mode: nothing updates), the logits' estimate
    has mean (gradient through q) / 3 + (gradient through f's direct dependence), f's parameters
    their exact gradient: z-tests with power, Bonferroni over all coordinates."""
    est = discograd.make(name, kind=problem.kind, latent_shape=tuple(problem.logits.shape),
                         normalize=True, **({"baseline": "ema"} if name == "reinforce" else {}))
    est.signal_var.fill_(9.0)
    est.signal_count.fill_(5)
    if name == "reinforce":
        est.ema.fill_(1.0)
        est.ema_count.fill_(5)
    est.eval()
    assert float(est.signal_scale()) == 3.0
    through_q, direct, g_theta = split_exact(problem)
    expected = [(through_q / 3 + direct).flatten(), g_theta.flatten()]
    zc = _z_crit(sum(e.numel() for e in expected), 1e-5)
    torch.manual_seed(0)
    n = 400_000
    sums = [torch.zeros_like(e) for e in expected]
    squares = [torch.zeros_like(e) for e in expected]
    for _ in range(n // 100_000):
        for i, g in enumerate(_draw(est, problem, 100_000)):
            sums[i] += g.sum(0)
            squares[i] += g.square().sum(0)
    for what, s, q, e in zip(("logits", "theta"), sums, squares, expected):
        st = _stats(s, q, n, e, _detect(e, 0.25), zc)
        assert st["max_abs_z"] < zc, (name, problem.name, what, st)
        assert st["power_ratio"] <= 1, (name, problem.name, what, st)
    # and the scale matters: the unscaled gradient is rejected for the logits
    st = _stats(sums[0], squares[0], n, (through_q + direct).flatten(), _detect(expected[0], 0.25), zc)
    assert st["max_abs_z"] > zc


def test_the_scale_comes_from_earlier_steps_and_follows_nvil():
    """Step 1 uses s = 1 and sets v to its minibatch variance of the signal; later steps use
    s = max(1, sqrt(v)) and then v <- 0.8 v + 0.2 var (NVIL, Algorithm 1, alpha = 0.8); eval mode
    never updates; a scale below 1 is never applied."""
    logits = torch.zeros(64, 3, requires_grad=True)
    est = discograd.make("reinforce", logits, normalize=True)
    f = lambda z: 40 * (z - 0.45).pow(2).sum(-1)                 # noqa: E731
    seen = []
    for _ in range(3):
        seen.append((float(est.signal_scale()), float(est.signal_var)))
        est(logits, f, generator=torch.Generator().manual_seed(len(seen)))
    assert seen[0] == (1.0, 0.0) and seen[1][1] > 1 and seen[1][0] == pytest.approx(seen[1][1] ** 0.5)
    before = float(est.signal_var)
    est.eval()
    est(logits, f)
    assert float(est.signal_var) == before
    small = discograd.make("reinforce", logits, normalize=True)
    small(logits, lambda z: 0.01 * z.sum(-1))
    assert 0 < float(small.signal_var) < 1 and float(small.signal_scale()) == 1.0
    assert est.properties()["unbiased"] is False and discograd.make("reinforce", logits).properties()["unbiased"]


def test_normalization_settings_are_checked_and_off_by_default():
    assert discograd.make("muprop", torch.zeros(2, 3)).normalize is False
    with pytest.raises(discograd.ConfigError, match=r"^norm_decay=1.0 is invalid"):
        discograd.make("reinforce", torch.zeros(2, 3), normalize=True, norm_decay=1.0)
    from discograd.estimators import build_estimator
    with pytest.raises(discograd.ConfigError, match=r"^estimator\.norm_decay=-0.1 is invalid"):
        build_estimator({"name": "muprop", "normalize": True, "norm_decay": -0.1}, "bernoulli", (3,))


@pytest.mark.parametrize("name", ["reinforce", "muprop"])
@pytest.mark.parametrize("kl", ["analytic", "sampled"])
def test_the_models_analytic_kl_is_scaled_with_the_score_part(name, kl):
    """With variance normalization the whole gradient reaching the encoder is scaled by 1/s: a
    training step (discograd.step.step_forward) gives the logits the estimator's own gradient plus
    the analytic KL's gradient times 1/s, exactly (same uniforms, nothing updated in eval mode).
    Left unscaled, the KL would weigh s times more than the reconstruction, a beta-VAE with
    beta = s, and the encoder collapses to the prior (estimators/normalize.py)."""
    from discograd.models.vae import VAE
    from discograd.step import step_forward
    torch.manual_seed(0)
    model = VAE(latent_dim=4, x_dim=12, kl=kl, prior="uniform").double()
    x = torch.bernoulli(torch.full((5, 12), 0.4, dtype=torch.float64))
    est = discograd.make(name, kind="bernoulli", latent_shape=(4,), normalize=True,
                         **({"baseline": "ema"} if name == "reinforce" else {})).double()
    est.signal_var.fill_(16.0)                 # s = 4, from "earlier steps"
    est.signal_count.fill_(3)
    est.eval()
    u = torch.rand(1, 5, 4, dtype=torch.float64)
    logits = model.logits(x).detach().requires_grad_()
    model.logits = lambda _x: logits            # the step's logits are this leaf
    surrogate, _, _ = step_forward(model, est, x, u)
    step_grad, = torch.autograd.grad(surrogate, logits)
    own = est(logits, model.objective(x, logits), u=u)
    assert float(own.direct_scale) == 0.25
    own_grad, = torch.autograd.grad(own.surrogate, logits)
    extra = model.extra_loss(x, logits)
    if kl == "sampled":                          # the KL is inside the signal: nothing to add
        assert extra is None
        torch.testing.assert_close(step_grad, own_grad, rtol=0, atol=0)
        return
    kl_grad, = torch.autograd.grad(extra.mean(), logits)
    assert kl_grad.abs().max() > 1e-3
    torch.testing.assert_close(step_grad, own_grad + kl_grad / 4, rtol=1e-12, atol=1e-12)
    # without normalization nothing is scaled
    plain = discograd.make(name, kind="bernoulli", latent_shape=(4,)).double().eval()
    assert plain(logits, model.objective(x, logits), u=u).direct_scale is None
