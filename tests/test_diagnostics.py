"""Gradient diagnostics: definitions against closed forms and enumeration, batched = looped."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from estimators import REGISTRY, ConfigError, log_prob
from experiment.diagnostics import (GRAD_STATS_HEADER, Probe, Reference, _Surrogate, all_configs,
                                    parse_reference, resolve_estimators)
from models import VAE, Toy

ROOT = Path(__file__).resolve().parents[1]
COLS = {c: i for i, c in enumerate(GRAD_STATS_HEADER)}


def toy_at(phi: float, t: float = 0.45) -> Toy:
    toy = Toy(dim=1, t=t)
    with torch.no_grad():
        toy.phi.fill_(phi)
    return toy


def probe_rows(model, name, reference, K, B, seed, **kw):
    est = REGISTRY[name](model.kind, model.latent_shape, **kw)
    p = Probe(model, est, [name], reference, K, torch.empty(B, 0), seed=seed)
    return p


def repeated(model, name, reference, K, B, R, col, **kw):
    """R independent probes (different seeds) -> tensor of column ``col`` of the encoder row."""
    out = []
    p = probe_rows(model, name, reference, K, B, 0, **kw)
    for r in range(R):
        p.seed = r
        row = next(row for row in p.run(0) if row[COLS["param_group"]] == "encoder")
        out.append(row[COLS[col]])
    return torch.tensor(out, dtype=torch.float64)


def z_ok(values: torch.Tensor, expected: float, z: float = 4.0):
    se = values.std() / math.sqrt(len(values))
    return abs(values.mean().item() - expected) < z * se.item(), values.mean().item(), se.item()


# closed forms for one Bernoulli, f(b) = (b - t)^2, s = sigmoid(phi), a minibatch of B draws
def reinforce_variance(s, t, B):
    """Var of f(b)(b - s): E[f^2 (b - s)^2] - g*^2 with b = 1 w.p. s, then / B."""
    second = s * (1 - t) ** 4 * (1 - s) ** 2 + (1 - s) * t ** 4 * s ** 2
    g = (1 - 2 * t) * s * (1 - s)
    return (second - g ** 2) / B


def st_mean_and_variance(s, t, B):
    """ST gradient given b is f'(b) s (1 - s) = 2 (b - t) s (1 - s)."""
    return 2 * (s - t) * s * (1 - s), 4 * s ** 3 * (1 - s) ** 3 / B


@pytest.mark.parametrize("phi", [0.0, -1.0])
def test_reinforce_variance_matches_closed_form_and_bias2_is_zero(phi):
    toy, t, B, K, R = toy_at(phi), 0.45, 10, 200, 60
    s = 1 / (1 + math.exp(-phi))
    var = repeated(toy, "reinforce", Reference("exact"), K, B, R, "variance")
    ok, m, se = z_ok(var, reinforce_variance(s, t, B))
    assert ok, (m, reinforce_variance(s, t, B), se)
    assert se < 0.05 * reinforce_variance(s, t, B)          # power: the closed form is pinned to 5 %
    bias2 = repeated(toy, "reinforce", Reference("exact"), K, B, R, "bias2")
    ok, m, se = z_ok(bias2, 0.0)
    assert ok, (m, se)
    # power: a bias of 10 % of the true gradient would be 4 standard errors away
    g = (1 - 2 * t) * s * (1 - s)
    assert 4 * se < (0.1 * g) ** 2 + 1e-12 or 4 * se < 0.1 * reinforce_variance(s, t, B)


def test_st_bias_and_variance_match_their_closed_forms():
    toy, t, B, K, R = toy_at(-1.0), 0.45, 10, 200, 60
    s = 1 / (1 + math.exp(1.0))
    mean_st, var_st = st_mean_and_variance(s, t, B)
    g = (1 - 2 * t) * s * (1 - s)
    bias2 = repeated(toy, "st", Reference("exact"), K, B, R, "bias2")
    ok, m, se = z_ok(bias2, (mean_st - g) ** 2)
    assert ok, (m, (mean_st - g) ** 2, se)
    assert (mean_st - g) ** 2 > 20 * se                       # clearly non-zero: ST is biased here
    var = repeated(toy, "st", Reference("exact"), K, B, R, "variance")
    assert z_ok(var, var_st)[0]
    cos = repeated(toy, "st", Reference("exact"), K, B, 3, "cosine")
    # 1-d: for s < t the ST gradient 2(s - t)s(1 - s) points against the truth (1 - 2t)s(1 - s) > 0:
    # ST drives s towards t instead of towards the optimum 0
    assert (cos == -1.0).all()


def test_mc_reference_removes_its_own_variance():
    """With a sampled reference, bias2 of an unbiased estimator is still centred on zero, while
    the naive ||g_bar - g*||^2 / P - var / K would be biased upwards by var_ref / M."""
    toy, B, K, R = toy_at(0.5), 10, 100, 60
    ref = Reference("mc", "reinforce", 20)
    bias2 = repeated(toy, "reinforce", ref, K, B, R, "bias2")
    ok, m, se = z_ok(bias2, 0.0)
    assert ok, (m, se)


def test_batched_probe_equals_a_loop_of_backward_passes():
    torch.manual_seed(0)
    vae = VAE(latent="categorical", latent_dim=3, classes=3, hidden=[8], x_dim=12)
    x = (torch.rand(4, 12) < 0.4).float()
    for name in ("reinforce", "gumbel", "st", "st_gumbel"):
        est = REGISTRY[name]("categorical", (3, 3), samples=2)
        est.eval()
        p = Probe(vae, est, [name], Reference("exact"), 5, x)
        U = p._noise(5, 2, (4, 3, 3))
        mom = p._moments(est, U)
        grads = []
        for k in range(5):
            vae.zero_grad()
            _Surrogate(vae, est)(x, U[k]).backward()
            grads.append({n: q.grad.detach().clone() for n, q in vae.named_parameters()})
        for n, _ in vae.named_parameters():
            stack = torch.stack([g[n] for g in grads]).double()
            assert torch.allclose(mom[n][0], stack.mean(0), atol=1e-5), (name, n)
            assert torch.allclose(mom[n][1], stack.var(0), atol=1e-5, rtol=1e-4), (name, n)


@pytest.mark.parametrize("kind, shape", [("bernoulli", (4,)), ("categorical", (2, 3))])
def test_exact_reference_is_the_gradient_of_the_enumerated_objective(kind, shape):
    torch.manual_seed(1)
    vae = VAE(latent=kind, latent_dim=shape[0], classes=shape[-1], hidden=[6], x_dim=10).double()
    with torch.no_grad():
        vae.prior_logits.normal_()
    x = (torch.rand(3, 10, dtype=torch.float64) < 0.5).double()
    est = REGISTRY["reinforce"](kind, shape)
    g = Probe(vae, est, ["reinforce"], Reference("exact"), 2, x).exact_reference()
    # independent enumeration written out here: -ELBO(x) = sum_z q(z|x) [-log p(x|z) - log p(z) + log q(z|x)]
    import itertools
    if kind == "bernoulli":
        zs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=shape[0])), dtype=torch.float64)
    else:
        eye = torch.eye(shape[1], dtype=torch.float64)
        zs = torch.stack([eye[list(c)] for c in itertools.product(range(shape[1]), repeat=shape[0])])
    logits = vae.logits(x)
    z = zs[:, None].expand(-1, 3, *shape)
    logq = log_prob(logits, z, kind)
    logp = log_prob(vae.prior_logits.expand_as(logits), z, kind)
    neg_elbo = (logq.exp() * (vae.neg_log_lik(z, x) - logp + logq)).sum(0).mean()
    expected = torch.autograd.grad(neg_elbo, list(vae.parameters()))
    for (n, _), e in zip(vae.named_parameters(), expected):
        assert torch.allclose(g[n], e, atol=1e-9), n
    assert len(all_configs(kind, shape, "cpu", torch.float64)) == len(zs)


def test_unbiased_estimator_on_an_enumerable_vae_and_biased_one_detected():
    torch.manual_seed(2)
    vae = VAE(latent="bernoulli", latent_dim=4, hidden=[], x_dim=16)
    x = (torch.rand(8, 16) < 0.5).float()
    est = REGISTRY["reinforce"]("bernoulli", (4,), samples=2)
    ref = Reference("exact")
    p = Probe(vae, est, ["reinforce", "st_gumbel"], ref, 400, x)
    b_rf, b_sg, var_rf = [], [], []
    for r in range(20):
        p.seed = r
        rows = [row for row in p.run(0) if row[COLS["param_group"]] == "encoder"]
        b_rf.append(rows[0][COLS["bias2"]])
        var_rf.append(rows[0][COLS["variance"]])
        b_sg.append(rows[1][COLS["bias2"]])
    ok, m, se = z_ok(torch.tensor(b_rf, dtype=torch.float64), 0.0)
    assert ok, (m, se)
    sg = torch.tensor(b_sg, dtype=torch.float64)
    assert sg.mean() > 10 * sg.std() / math.sqrt(len(sg))   # st_gumbel is biased: detected


def test_resolve_estimators_and_references():
    assert resolve_estimators(None, "gumbel", "bernoulli", False) == ["gumbel"]
    assert set(resolve_estimators("all", "gumbel", "bernoulli", False)) >= {"st", "reinforce", "gumbel", "st_gumbel"}
    assert resolve_estimators("st,gumbel", "gumbel", "bernoulli", False) == ["st", "gumbel"]
    with pytest.raises(ConfigError, match="nope"):
        resolve_estimators(["st", "nope"], "st", "bernoulli", False)
    vae = VAE()
    assert str(parse_reference("auto", vae)) == "mc:reinforce:100"
    assert str(parse_reference("auto", Toy(dim=30))) == "exact"          # closed form, any dim
    assert str(parse_reference("auto", VAE(latent_dim=10, x_dim=5))) == "exact"
    assert str(parse_reference("mc:reinforce:50", vae)) == "mc:reinforce:50"
    for bad, msg in [("exact", "not feasible"), ("mc:st:10", "not an unbiased"),
                     ("mc:reinforce:1", "M=1"), ("sometimes", "auto, exact, mc:NAME:M")]:
        with pytest.raises(ConfigError, match=msg):
            parse_reference(bad, vae)


def run(*args, cwd):
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True,
                       text=True, timeout=600)
    return r


def test_run_writes_grad_stats_for_all_estimators(tmp_path):
    out = tmp_path / "run"
    r = run("model=toy", "estimator=gumbel", "train.steps=40", "diagnostics.every=20",
            "diagnostics.estimators=all", "diagnostics.samples=20", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(out / "grad_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == GRAD_STATS_HEADER
    # every estimator of E[f] for Bernoulli latents (vimco's target is the multi-sample bound)
    names = {n for n, c in REGISTRY.items()
             if "bernoulli" in c.kinds and getattr(c, "objective", "mean") == "mean"}
    assert {(r["step"], r["estimator"]) for r in rows} == {(s, n) for s in ("0", "20", "40") for n in names}
    assert {r["reference"] for r in rows} == {"exact"}


def test_diagnostics_do_not_change_training(tmp_path):
    common = ["model=toy", "estimator=reinforce", "train.steps=60", "model.dim=3"]
    a = run(*common, f"hydra.run.dir={tmp_path}/a", cwd=tmp_path)
    b = run(*common, "diagnostics.every=20", f"hydra.run.dir={tmp_path}/b", cwd=tmp_path)
    assert a.returncode == 0 and b.returncode == 0, b.stderr
    import json
    fa = json.loads((tmp_path / "a" / "summary.json").read_text())["final"]
    fb = json.loads((tmp_path / "b" / "summary.json").read_text())["final"]
    assert fa == fb


def test_bad_diagnostics_input_fails_before_training(tmp_path):
    r = run("model=vae", "diagnostics.every=10", "diagnostics.reference=exact",
            f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert r.returncode == 2 and "diagnostics.reference=exact" in r.stderr
    r = run("model=toy", "diagnostics.every=10", "diagnostics.samples=1", f"hydra.run.dir={tmp_path}/s",
            cwd=tmp_path)
    assert r.returncode == 2 and "diagnostics.samples=1" in r.stderr
