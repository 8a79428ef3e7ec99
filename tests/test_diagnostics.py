"""Gradient diagnostics: definitions against closed forms and enumeration, batched = looped."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from discograd.estimators import REGISTRY, ConfigError, log_prob
from discograd.diagnostics import (COSINE_HALF_WIDTH, GRAD_STATS_HEADER, Probe, Reference,
                                   parse_reference, reference_candidates, resolve_estimators)
from discograd.latents import all_configs
from discograd.step import Step
from discograd.models import VAE, Toy

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
            Step(vae, est)(x, U[k])[0].backward()
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
    assert resolve_estimators("basic", "arm", "bernoulli", False, (3,)) == \
        ["arm", "st", "reinforce", "gumbel", "st_gumbel"]
    # vimco's target is another objective: the basic estimators are probed at its states, not it
    assert resolve_estimators("basic", "vimco", "bernoulli", False, (3,)) == \
        ["st", "reinforce", "gumbel", "st_gumbel"]
    assert set(resolve_estimators("all", "gumbel", "bernoulli", False)) >= {"st", "reinforce", "gumbel", "st_gumbel"}
    assert resolve_estimators("st,gumbel", "gumbel", "bernoulli", False) == ["st", "gumbel"]
    with pytest.raises(ConfigError, match="nope"):
        resolve_estimators(["st", "nope"], "st", "bernoulli", False)
    vae = VAE()
    assert str(parse_reference("auto", vae)) == "mc:most-precise:1000-evals"   # picked per probe
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
    common = ["model=toy", "estimator=reinforce", "train.steps=60", "model.dim=3", "report.run=false"]
    a = run(*common, "diagnostics.every=0", f"hydra.run.dir={tmp_path}/a", cwd=tmp_path)
    b = run(*common, "diagnostics.every=20", "diagnostics.estimators=all", "diagnostics.fit_steps=3",
            f"hydra.run.dir={tmp_path}/b", cwd=tmp_path)
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


# --- noise-corrected statistics, standard errors, comparators (issue: diagnostics that do not
# mislead) ----------------------------------------------------------------------------------------
def encoder_rows(p: Probe, seeds) -> dict[str, list[dict]]:
    """estimator -> one dict (column -> value) of its encoder row per probe seed."""
    out: dict[str, list[dict]] = {}
    for r in seeds:
        p.seed = r
        for row in p.run(0):
            if row[COLS["param_group"]] == "encoder":
                out.setdefault(row[COLS["estimator"]], []).append(dict(zip(GRAD_STATS_HEADER, row)))
    return out


def col(rows: list[dict], name: str) -> torch.Tensor:
    return torch.tensor([r[name] for r in rows], dtype=torch.float64)


def test_corrected_norm_and_snr_match_the_closed_form_where_the_raw_ones_do_not():
    """1-d toy, REINFORCE without baseline, B = 10, K = 10: E g and Var g in closed form. The
    corrected ||E g||^2 (mean_norm2) is unbiased, the raw ||g_bar||^2 is off by Var / K; the SNR
    pooled over probes from the corrected values is the true one, the raw one is not."""
    toy, t, B, K, R = toy_at(0.0), 0.45, 10, 10, 400
    s = 0.5
    g = (1 - 2 * t) * s * (1 - s)
    var = reinforce_variance(s, t, B)
    est = REGISTRY["reinforce"](toy.kind, toy.latent_shape)
    rows = encoder_rows(Probe(toy, est, ["reinforce"], Reference("exact"), K, torch.empty(B, 0)),
                        range(R))["reinforce"]
    norm2, raw2, v = col(rows, "mean_norm2"), col(rows, "mean_norm_raw") ** 2, col(rows, "variance")
    ok, m, se = z_ok(norm2, g ** 2)
    assert ok, (m, g ** 2, se)
    assert not z_ok(raw2, g ** 2)[0]                      # the raw one: g^2 + var / K
    assert z_ok(raw2, g ** 2 + var / K)[0]
    assert var / K > 4 * se                               # power: the offset is 4 SE or more
    true_snr = abs(g) / math.sqrt(var)
    pooled = math.sqrt(norm2.mean()) / math.sqrt(v.mean())
    pooled_raw = math.sqrt(raw2.mean()) / math.sqrt(v.mean())
    # the pooled corrected SNR is within 3 % of the truth, the raw one is 12 % above it
    assert abs(pooled / true_snr - 1) < 0.05, (pooled, true_snr)
    assert pooled_raw / true_snr - 1 > 0.08, (pooled_raw, true_snr)
    # the clip is visible: a probe whose mean_norm2 < 0 reports mean_norm = snr = 0, cosine NaN
    neg = [r for r in rows if r["mean_norm2"] < 0]
    assert neg and all(r["mean_norm"] == 0 and r["snr"] == 0 and math.isnan(r["cosine"]) for r in neg)
    assert all(r["mean_norm_raw"] > 0 for r in neg)


@pytest.mark.parametrize("case", ["exact", "mc"])
def test_jackknife_standard_errors_match_the_spread_over_repeated_probes(case):
    """bias2_se and mean_norm2_se (delete-a-group jackknife; with a sampled reference, its groups
    too) against the standard deviation of bias2 and mean_norm2 over independent probes."""
    torch.manual_seed(3)
    vae = VAE(latent="bernoulli", latent_dim=4, hidden=[], x_dim=16)
    x = (torch.rand(6, 16) < 0.5).float()
    ref = Reference("exact") if case == "exact" else Reference("mc", "reinforce", 20)
    est = REGISTRY["st"]("bernoulli", (4,))
    rows = encoder_rows(Probe(vae, est, ["st"], ref, 40, x), range(100))["st"]
    for stat in ("bias2", "mean_norm2"):
        spread = col(rows, stat).std().item()
        se = col(rows, f"{stat}_se").mean().item()
        # R = 100 probes: the spread is known to ~7 %; the jackknife is slightly conservative
        assert 0.75 < se / spread < 1.35, (stat, se, spread)


def test_fitted_relax_beats_unfitted_relax_and_differs_from_rebar():
    """On the toy (t = 0.45, B = 1, the Tucker et al. setting), a RELAX comparator fitted with its
    own variance objective has a lower variance than an unfitted one (common random numbers);
    fitted REBAR and RELAX rows differ; unfitted they coincide (RELAX's net starts at zero)."""
    from discograd.experiment.config import estimator_defaults
    from omegaconf import OmegaConf
    toy = toy_at(0.0)
    cfg = OmegaConf.merge(estimator_defaults("reinforce"), {"baseline": "ema"})
    trained = REGISTRY["reinforce"](toy.kind, toy.latent_shape, baseline="ema")
    res = {}
    for fit in (0, 300):
        p = Probe(toy, trained, ["reinforce", "rebar", "relax"], Reference("exact"), 1000,
                  torch.empty(1, 0), seed=0, trained_cfg=cfg, fit_steps=fit, fit_lr=0.05)
        res[fit] = {n: r[0] for n, r in encoder_rows(p, [0]).items()}
    assert res[0]["relax"]["aux"] == "fitted:0" and res[300]["relax"]["aux"] == "fitted:300"
    assert res[300]["reinforce"]["aux"] == "trained"
    assert res[0]["relax"]["variance"] == res[0]["rebar"]["variance"]
    assert res[300]["relax"]["variance"] != res[300]["rebar"]["variance"]
    assert res[300]["relax"]["variance"] < 0.5 * res[0]["relax"]["variance"], res
    # still unbiased after fitting (bias2 within 4 SE of zero)
    assert abs(res[300]["relax"]["bias2"]) < 4 * res[300]["relax"]["bias2_se"]


def test_comparators_take_the_trained_estimators_shared_settings():
    from discograd.experiment.config import estimator_defaults
    from discograd.diagnostics import build_comparator
    from omegaconf import OmegaConf
    gumbel = OmegaConf.merge(estimator_defaults("gumbel"), {"tau": {"init": 2.0, "rate": 0.0}})
    assert build_comparator("st_gumbel", "bernoulli", (3,), gumbel).tau == 2.0
    # reinmax needs tau >= 1: a shared tau.min = 0.5 is invalid for it, so it keeps its defaults
    low = OmegaConf.merge(estimator_defaults("gumbel"), {"tau": {"init": 0.5}})
    assert build_comparator("reinmax", "bernoulli", (3,), low).tau == 1.0
    rloo = OmegaConf.merge(estimator_defaults("rloo"), {"samples": 4})
    assert build_comparator("reinforce", "bernoulli", (3,), rloo).samples == 4
    reinforce = OmegaConf.merge(estimator_defaults("reinforce"), {"baseline": "ema"})
    assert build_comparator("rloo", "bernoulli", (3,), reinforce).samples == 2   # its own minimum
    rebar = OmegaConf.merge(estimator_defaults("rebar"), {"tau_init": 0.3, "eta_init": 0.5})
    relax = build_comparator("relax", "bernoulli", (3,), rebar)
    assert float(relax.eta.detach()) == 0.5 and math.isclose(float(relax.log_tau.detach().exp()), 0.3, rel_tol=1e-6)
    st = OmegaConf.merge(estimator_defaults("reinforce"), {"baseline": "learned"})
    comp = build_comparator("reinforce", "bernoulli", (3,), st)
    assert comp.baseline == "learned" and comp.adaptive


def test_references_are_built_unbiased_and_other_objectives_are_refused():
    toy = toy_at(0.5)
    ref = parse_reference("mc:rloo:20", toy)
    est = REGISTRY["st"](toy.kind, toy.latent_shape)
    p = Probe(toy, est, ["st"], ref, 20, torch.empty(4, 0))
    assert p.ref_estimator.samples == 2                           # rloo needs two samples
    assert {r[COLS["reference"]] for r in p.run(0)} == {"mc:rloo:20"}
    for bad, why in [("mc:vimco:10", "another objective"), ("mc:gumbel:10", "not an unbiased")]:
        with pytest.raises(ConfigError, match=why) as e:
            parse_reference(bad, toy)
        assert "diagnostics.reference" in str(e.value) and "reinforce" in str(e.value)
        assert "vimco," not in str(e.value).split("accepted")[1]


def test_default_run_probes_the_training_batch_with_the_basic_estimators_and_resumes(tmp_path):
    """model=toy defaults: diagnostics on, the trained estimator + st, reinforce, gumbel,
    st_gumbel, diagnostic batch = train.batch_size; fitted comparators resume bit-identically."""
    common = ["model=toy", "estimator=st", "train.batch_size=3", "diagnostics.samples=10",
              "diagnostics.estimators=[st,reinforce,relax]", "diagnostics.fit_steps=5",
              "diagnostics.every=20", "report.run=false"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(*common, "train.steps=60", f"hydra.run.dir={a}", cwd=tmp_path).returncode == 0
    assert run(*common, "train.steps=20", f"hydra.run.dir={b}", cwd=tmp_path).returncode == 0
    r = run(*common, "train.steps=60", f"hydra.run.dir={b}", cwd=tmp_path)
    assert r.returncode == 0 and "resumed" in r.stderr + r.stdout, r.stderr

    def stats(folder):
        with open(folder / "grad_stats.csv", newline="") as fh:
            return [{k: v for k, v in row.items() if k != "seconds_per_estimate"}
                    for row in csv.DictReader(fh)]
    sa = stats(a)
    assert sa == stats(b)
    assert {r["batch_size"] for r in sa} == {"3"}
    assert {(r["estimator"], r["aux"]) for r in sa if r["step"] == "60"} == \
        {("st", "trained"), ("reinforce", "none"), ("relax", "fitted:20")}
    d = run("model=toy", "train.steps=10", "report.run=false", f"hydra.run.dir={tmp_path / 'd'}",
            cwd=tmp_path)
    assert d.returncode == 0, d.stderr
    with open(tmp_path / "d" / "grad_stats.csv", newline="") as fh:
        names = {row["estimator"] for row in csv.DictReader(fh)}
    assert names == {"gumbel", "st", "reinforce", "st_gumbel"}          # trained: gumbel


def test_bad_fit_settings_fail_before_training(tmp_path):
    for arg in ("diagnostics.fit_steps=-1", "diagnostics.fit_lr=0"):
        r = run("model=toy", arg, f"hydra.run.dir={tmp_path}/{arg.split('=')[0]}", cwd=tmp_path)
        assert r.returncode == 2 and arg in r.stderr, r.stderr


def test_cosine_is_never_clipped_and_is_reported_only_when_resolved():
    """A weak sampled reference (M = 2 reinforce draws) makes ||E g*||^2 noisy: the ratio of
    unbiased estimates then leaves [-1, 1]. The old code clipped it to a false 1.000; now a
    cosine is written only with an interval of half-width <= COSINE_HALF_WIDTH inside [-1, 1],
    and the interval (cosine_lo, cosine_hi) is always written. With the exact reference and a
    low-variance estimator (st) the cosine is resolved."""
    torch.manual_seed(0)
    vae = VAE(latent="bernoulli", latent_dim=8, hidden=[], x_dim=20)
    x = (torch.rand(8, 20) < 0.4).float()
    est = REGISTRY["st"]("bernoulli", (8,))
    weak = encoder_rows(Probe(vae, est, ["st", "reinforce"], Reference("mc", "reinforce", 2), 20, x),
                        range(30))
    rows = weak["st"] + weak["reinforce"]
    # the old clip: the raw ratio leaves [-1, 1] in some probes (the case the fix is about)
    assert any(abs(r["cosine_raw"]) < 1 and not (r["cosine_lo"] <= r["cosine_hi"] < 1) for r in rows)
    for r in rows:
        c = r["cosine"]
        assert not (abs(c) == 1.0), r                # never a clipped value
        if not math.isnan(c):
            assert 2 * r["cosine_se"] <= COSINE_HALF_WIDTH and -1 <= r["cosine_lo"] <= c <= r["cosine_hi"] <= 1
    unresolved = [r for r in rows if math.isnan(r["cosine"])]
    assert len(unresolved) > len(rows) // 2           # a 2-draw reference resolves few cosines
    exact = encoder_rows(Probe(vae, est, ["st"], Reference("exact"), 50, x), range(5))["st"]
    assert all(not math.isnan(r["cosine"]) and r["cosine"] < 1 for r in exact)


def test_auto_reference_picks_the_most_precise_candidate_and_stays_unbiased():
    """``auto`` without enumeration measures every candidate's variance x evals and draws the
    best one budget / evals times. Checked independently: with 400 draws each (exact reference,
    enumerable model), the picked estimator's encoder variance x evals is the smallest of the
    candidates up to the pilot's noise (here muprop, 3-10x below the others), below reinforce's; bias2 of an unbiased estimator against
    the picked reference is centred on zero (z-test over 40 probes)."""
    torch.manual_seed(1)
    vae = VAE(latent="bernoulli", latent_dim=6, hidden=[], x_dim=20)
    x = (torch.rand(8, 20) < 0.4).float()
    cands = reference_candidates(vae)
    assert {"reinforce", "disarm", "arm", "rloo"} <= set(cands)
    est = REGISTRY["st"]("bernoulli", (6,))
    cost = {}
    for name, c in cands.items():
        p = Probe(vae, est, ["st"], Reference("exact"), 2, x)
        U = p._noise(400, c.noise_shape((8, 6))[0], (8, 6))
        mom = p._moments(c.eval(), U)
        cost[name] = sum(mom[n][1].sum().item() for n in p.groups["encoder"]) * c.evals
    p = Probe(vae, est, ["st"], Reference("pick", "", 1000), 2, x)
    picked, _ = p.pick_reference((8, 6))
    assert picked.estimator in cands and picked.draws == 1000 // cands[picked.estimator].evals
    assert cost[picked.estimator] <= 1.5 * min(cost.values()), (picked, cost)
    assert cost[picked.estimator] < cost["reinforce"], cost
    unb = REGISTRY["disarm"]("bernoulli", (6,))
    rows = encoder_rows(Probe(vae, unb, ["disarm"], Reference("pick", "", 200), 20, x), range(40))["disarm"]
    assert {r["reference"].split(":")[0] for r in rows} == {"mc"}
    ok, m, se = z_ok(torch.tensor([r["bias2"] for r in rows], dtype=torch.float64), 0.0)
    assert ok, (m, se)
