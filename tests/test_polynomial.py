"""The polynomial-programming toy (ReinMax, Liu et al. 2023 section 6): f = mean |z - t|^p.
Closed forms against enumeration, the initialisation, the unbiased estimators against the exact
gradient (z-tests with power), and the preset trains from the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from discograd.models.toy import Toy
from test_estimators import Case, assert_mean, build, detect_for, enumerated_grads, row_estimates

T = 0.45


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_closed_forms_match_enumeration(latent, p):
    torch.manual_seed(0)
    m = Toy(dim=4, t=T, latent=latent, classes=2, power=p, init=0.8)
    logits = m.phi.detach()
    case = Case("poly", m.kind, logits, lambda z, th: m.objective(None, None)(z))
    enum = enumerated_grads(case)[0]
    torch.testing.assert_close(m.exact_grad().double(), enum, rtol=1e-5, atol=1e-9)
    from test_estimators import configurations
    from discograd.latents import log_prob
    z = configurations(m.kind, m.latent_shape).double().unsqueeze(1)
    q = log_prob(logits.double().unsqueeze(0), z, m.kind).exp()
    expected = (q * m.objective(None, None)(z)).sum()
    torch.testing.assert_close(m.exact_loss().double(), expected, rtol=1e-6, atol=1e-9)
    # the optimum (t < 1/2: every latent at 0) is t^p
    opt = torch.full_like(m.phi, -30.0)
    if latent == "categorical":
        opt[..., 0] = 30.0
    assert float(m.exact_loss(opt)) == pytest.approx(T ** p, rel=1e-6)


def test_init_is_uniform_in_the_interval_and_zero_by_default():
    torch.manual_seed(1)
    m = Toy(dim=128, latent="categorical", classes=2, init=0.01)
    assert m.phi.abs().max() <= 0.01 and m.phi.std() > 0.004
    assert torch.equal(Toy(dim=3).phi, torch.zeros(3))


@pytest.mark.parametrize("name", ["reinforce", "disarm", "rloo"])
@pytest.mark.parametrize("p", [1.5, 3.0])
def test_unbiased_estimators_on_the_polynomial(name, p):
    """The exact gradient of E|z - t|^p is the z-tested mean of each unbiased estimator; the test
    could see a bias of a quarter of the gradient."""
    torch.manual_seed(0)
    m = Toy(dim=4, t=T, power=p)
    with torch.no_grad():
        m.phi.copy_(torch.tensor([-1.2, -0.4, 0.5, 1.5]))
    case = Case("poly", "bernoulli", m.phi.detach().clone(),
                lambda z, th: m.objective(None, None)(z))
    exact = m.exact_grad().double()
    kw = {"samples": 2} if name == "rloo" else {}
    est = build(name, "bernoulli", (4,), **kw)
    rows = 2_000_000 if name == "reinforce" else 400_000   # no baseline: ~4x the variance
    g = row_estimates(est, case, rows // est.evals)[0]
    assert_mean(g, exact, detect_for(case, exact), f"{name} on |z - t|^{p}")


def test_polynomial_preset_trains_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "run.py", "+experiment=reinmax2023_poly", "model.power=1.5",
                        "estimator=reinmax", "train.steps=1000", f"hydra.run.dir={out}",
                        "report.run=false"], capture_output=True, text=True, timeout=300,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    start = 0.5 * (0.45 ** 1.5 + 0.55 ** 1.5)          # logits near 0: q = 1/2
    final = s["final"]["test/exact_loss"]
    assert 0.45 ** 1.5 < final < start - 0.015      # it learns towards the optimum (1000 steps)
