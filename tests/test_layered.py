"""Estimators on latents in layers (estimators/layered.py), proved unbiased against the gradient of
a tiny two-layer model computed by enumerating every joint configuration.

The model (``Tiny``): layer 0 has logits a0, layer 1 has logits a1 + W z0 (a function of the
*sample* of layer 0), and f(z0, z1) = theta . (z0, z1) + (z0 - 0.3)^T Q (z1 - 0.6) + log q(z0) +
log q(z1 | z0): a parameter inside f (theta, Q), a quadratic coupling of the layers, and a direct
dependence of f on both layers' logits (the sampled KL of a VAE). Every parameter is held once per
row of the minibatch, so that the gradient with respect to row r's copy is the estimate of row r:
one call gives ``rows`` independent estimates, and every coordinate of every parameter of both
layers is z-tested (Bonferroni over all of them, with a power check: tests/test_estimators.py).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from discograd.estimators import REGISTRY, TauSchedule
from discograd.estimators import layered
from discograd.latents import all_configs, log_prob, uniform
from test_estimators import assert_mean, z_scores, z_crit

SHAPES = {"bernoulli": (3,), "categorical": (2, 3)}
ROWS = 100_000
NAMES = ("a0", "a1", "W", "theta", "Q")


def base_params(kind: str, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[kind]
    d = math.prod(shape)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale)
    return {"a0": r(*shape), "a1": r(*shape), "W": r(d, d, scale=1.5), "theta": r(2 * d),
            "Q": r(d, d)}


class Tiny(layered.Layers):
    depth = 2

    def __init__(self, kind: str, params: dict[str, torch.Tensor]):
        self.kind, self.shape, self.p = kind, SHAPES[kind], params

    def _p(self, frozen):
        return {k: v.detach() for k, v in self.p.items()} if frozen else self.p

    def logits(self, l, zs, frozen):
        p = self._p(frozen)
        if l == 0:
            return p["a0"].unsqueeze(0)                             # [1, B, *shape]
        z0 = zs[0].flatten(2)                                       # [R, B, d]
        lin = torch.einsum("rbi,bij->rbj", z0.to(p["W"].dtype), p["W"])
        return p["a1"].unsqueeze(0) + lin.view(*lin.shape[:2], *self.shape)

    def objective(self, zs, frozen):
        p = self._p(frozen)
        z0, z1 = zs
        R = max(z0.shape[0], z1.shape[0])
        z0, z1 = z0.expand(R, *z0.shape[1:]), z1.expand(R, *z1.shape[1:])
        flat = torch.cat([z0.flatten(2), z1.flatten(2)], -1)        # [R, B, 2d]
        lin = (flat * p["theta"]).sum(-1)
        quad = torch.einsum("rbi,bij,rbj->rb", z0.flatten(2) - 0.3, p["Q"], z1.flatten(2) - 0.6)
        lq = (log_prob(self.logits(0, [], frozen), z0, self.kind)
              + log_prob(self.logits(1, [z0], frozen), z1, self.kind))
        return lin + quad + lq


def rowwise(params, rows):
    return {k: v.expand(rows, *v.shape).clone().requires_grad_() for k, v in params.items()}


def joint_configs(kind):
    c = all_configs(kind, SHAPES[kind], "cpu", torch.float64)      # [M, *shape]
    pairs = list(itertools.product(range(c.shape[0]), repeat=2))
    i = torch.tensor([a for a, _ in pairs])
    j = torch.tensor([b for _, b in pairs])
    return c[i], c[j]                                               # [M^2, *shape] each


def exact_gradient(kind, params, multisample: int = 0):
    """d/dparams of E[f] (or, with ``multisample`` = S, of the S-sample bound
    E log 1/S sum_s exp(-f(z_s)) over S independent joint samples), by enumeration, float64."""
    p = rowwise(params, 1)
    model = Tiny(kind, p)
    z0, z1 = joint_configs(kind)
    z0, z1 = z0.unsqueeze(1), z1.unsqueeze(1)                       # [C, 1, *shape]
    logq = (log_prob(model.logits(0, [], False), z0, kind)
            + log_prob(model.logits(1, [z0], False), z1, kind))[:, 0]       # [C]
    assert torch.allclose(logq.exp().sum(), torch.ones((), dtype=torch.float64))
    fz = model.objective([z0, z1], False)[:, 0]                     # [C]
    if multisample:
        assert multisample == 2
        lw = -fz
        pair = torch.logaddexp(lw[:, None], lw[None, :]) - math.log(2)     # [C, C]
        value = -((logq[:, None] + logq[None, :]).exp() * pair).sum()      # minimised: -bound
    else:
        value = (logq.exp() * fz).sum()
    grads = torch.autograd.grad(value, [p[k] for k in NAMES])
    return {k: g[0] for k, g in zip(NAMES, grads)}


def estimates(est, kind, params, rows=ROWS, seed=0):
    torch.manual_seed(seed)
    p = rowwise({k: v.float() for k, v in params.items()}, rows)
    model = Tiny(kind, p)
    u = uniform(layered.noise_shape(est, 2, (rows, *SHAPES[kind])), p["a0"])
    out = layered.layered_estimate(est, model, u)
    grads = torch.autograd.grad(out.surrogate, [p[k] for k in NAMES], allow_unused=True)
    return {k: (torch.zeros_like(p[k]) if g is None else g * rows) for k, g in zip(NAMES, grads)}, out


def assert_unbiased(draws, exact, what):
    flat_d = torch.cat([draws[k].flatten(1) for k in NAMES], 1)
    flat_e = torch.cat([exact[k].flatten() for k in NAMES])
    rms = float(flat_e.pow(2).mean().sqrt())
    detect = 0.25 * flat_e.abs().clamp_min(rms)
    assert_mean(flat_d, flat_e, detect, what)


CASES = [  # (name, settings, kinds)
    ("reinforce", {}, ("bernoulli", "categorical")),
    ("reinforce", {"samples": 3}, ("bernoulli", "categorical")),
    ("rloo", {}, ("bernoulli", "categorical")),
    ("arm", {}, ("bernoulli",)),
    ("disarm", {}, ("bernoulli",)),
    ("arsm", {}, ("categorical",)),
    ("muprop", {}, ("bernoulli", "categorical")),
    ("rebar", {}, ("bernoulli", "categorical")),
    ("relax", {}, ("bernoulli", "categorical")),
    ("exact", {}, ("bernoulli", "categorical")),
]


@pytest.mark.parametrize("name, settings, kind",
                         [(n, s, k) for n, s, ks in CASES for k in ks],
                         ids=lambda v: str(v) if not isinstance(v, dict) else
                         ",".join(f"{a}={b}" for a, b in v.items()) or "default")
def test_unbiased_on_two_layers(name, settings, kind):
    """Every unbiased estimator, applied to two layers (rollout or per layer), has the enumerated
    gradient as its mean, for both layers' logit parameters and f's own parameters."""
    params = base_params(kind)
    est = REGISTRY[name](kind, SHAPES[kind], **settings)
    est.train()
    expected_mode = "rollout" if name in ("reinforce",) else "local"
    assert layered.mode(est) == expected_mode
    rows = 3 * ROWS if (name, settings) == ("reinforce", {}) else ROWS    # no baseline: noisy
    draws, out = estimates(est, kind, params, rows=rows)
    assert out.loss.shape == (rows,) and torch.isfinite(out.surrogate)
    assert_unbiased(draws, exact_gradient(kind, params), f"{name} {settings} {kind}")


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_vimco_unbiased_for_the_joint_two_sample_bound(kind):
    """VIMCO's S rollouts are joint samples of both layers: its mean is the gradient of the
    S-sample bound of the joint (enumerated over all pairs of joint configurations)."""
    params = base_params(kind)
    est = REGISTRY["vimco"](kind, SHAPES[kind], samples=2)
    assert layered.mode(est) == "rollout"
    draws, _ = estimates(est, kind, params)
    assert_unbiased(draws, exact_gradient(kind, params, multisample=2), f"vimco {kind}")


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_the_z_test_sees_a_biased_estimator_here(kind):
    """The tester's power on this model: straight-through and Gumbel-softmax (biased) are
    rejected, with the same statistics."""
    params = base_params(kind)
    exact = exact_gradient(kind, params)
    flat_e = torch.cat([exact[k].flatten() for k in NAMES])
    for name, kw in (("st", {}), ("gumbel", {"tau": TauSchedule(init=0.5, min=0.5, rate=0.0)})):
        est = REGISTRY[name](kind, SHAPES[kind], **kw)
        assert layered.mode(est) == "rollout"
        draws, _ = estimates(est, kind, params)
        z, _ = z_scores(torch.cat([draws[k].flatten(1) for k in NAMES], 1), flat_e)
        assert z.abs().max() > z_crit(flat_e.numel()), (name, kind, z.abs().max())


def test_f_own_parameters_get_one_gradient_not_one_per_layer():
    """In local mode f's own parameters are differentiated once, at the rollout (the layers'
    one-layer problems see them detached): the gradient of theta, which enters f linearly, is
    exactly the rollout's (z0, z1) per row."""
    kind = "bernoulli"
    params = base_params(kind)
    est = REGISTRY["disarm"](kind, SHAPES[kind])
    rows = 64
    torch.manual_seed(1)
    p = rowwise({k: v.float() for k, v in params.items()}, rows)
    model = Tiny(kind, p)
    u = uniform(layered.noise_shape(est, 2, (rows, 3)), p["a0"])
    out = layered.layered_estimate(est, model, u)
    g_theta, = torch.autograd.grad(out.surrogate, [p["theta"]])
    z0 = (p["a0"].detach() + torch.logit(u[0, 0]) > 0).float()
    lg1 = model.logits(1, [z0.unsqueeze(0)], True)[0]
    z1 = (lg1 + torch.logit(u[1, 0]) > 0).float()
    assert torch.equal(g_theta * rows, torch.cat([z0, z1], -1))


def test_noise_layout():
    est = REGISTRY["arm"]("bernoulli", (3,), samples=2)
    assert layered.noise_shape(est, 2, (5, 3)) == (2, 2 + 4, 5, 3)       # N = 2, E = evals = 4
    st = REGISTRY["st"]("bernoulli", (3,))
    assert layered.noise_shape(st, 2, (5, 3)) == (2, 1, 5, 3)
    rl = REGISTRY["rebar"]("categorical", (2, 3))
    assert layered.noise_shape(rl, 3, (5, 2, 3)) == (3, 2 + 3, 5, 2, 3)


# ------------------------------------------------------------------------------------------------
# The layered models: model=vae model.layers=2 and model=sbn
# ------------------------------------------------------------------------------------------------

SMALL = ["train.batch_size=20", "train.steps=12", "train.log_every=6", "train.eval_every=12",
         "train.checkpoint_every=12", "eval.samples=3", "eval.final_samples=0",
         "diagnostics.every=0", "report.run=false"]


def model_for(kind: str) -> list[str]:
    if kind == "bernoulli":
        return ["model=vae", "model.layers=2", "model.kl=sampled", "model.latent_dim=8"]
    return ["model=sbn", "model.latent=categorical", "model.latent_dim=3", "model.classes=4"]


def _every_estimator_kind():
    return [(n, k) for n in sorted(REGISTRY) for k in REGISTRY[n].kinds]


@pytest.mark.parametrize("name, kind", _every_estimator_kind())
def test_every_estimator_trains_a_layered_model(name, kind, cfg_of, tmp_path):
    """Every estimator trains the two-layer VAE (Bernoulli) or the SBN (categorical) on real MNIST
    from the run entry point's config: both layers' encoders move, the final metrics are finite."""
    from discograd.experiment.train import Trainer
    over = [f"estimator={name}", *model_for(kind), *SMALL]
    if name == "vimco":
        over += ["estimator.samples=2"] + (["model.objective=iwae"] if kind == "bernoulli" else [])
    t = Trainer(cfg_of(*over), tmp_path / "run")
    try:
        nets = t.model.encoders if kind == "bernoulli" else t.model.nets
        before = [m.weight.detach().clone() for m in (nets[0][0] if kind == "bernoulli" else nets[0],
                                                     nets[1][0] if kind == "bernoulli" else nets[1])]
        final = t.fit()["final"]
        after = [m.weight.detach() for m in (nets[0][0] if kind == "bernoulli" else nets[0],
                                             nets[1][0] if kind == "bernoulli" else nets[1])]
    finally:
        t.close()
    assert final and all(math.isfinite(v) for v in final.values()), final
    for b, a in zip(before, after):
        assert not torch.equal(b, a), f"{name}: a layer's encoder did not move"


def _enumerated(model, x, kind):
    """log p(x) (VAE) or log p(lower | upper) (SBN), and the exact ELBO / E[log p(y|h)], by
    enumerating both layers, float64."""
    from discograd.latents import all_configs
    c = all_configs(kind, model.latent_shape, "cpu", torch.float64)
    M = c.shape[0]
    z0 = c.repeat_interleave(M, 0).unsqueeze(1).expand(M * M, x.shape[0], *c.shape[1:])
    z1 = c.repeat(M, *([1] * (c.dim() - 1))).unsqueeze(1).expand_as(z0)
    zs = [z0, z1]
    logq = sum(log_prob(model.layer_logits(x, l, zs[:l]), zs[l], kind) for l in range(2))
    f = model.layered_objective(x, zs)                     # [C, B]
    if model.name == "vae":                                # f = -log p(x, z) + log q(z | x)
        log_joint = -f + logq
        return torch.logsumexp(log_joint, 0), (logq.exp() * -f).sum(0)
    return torch.logsumexp(logq - f, 0), (logq.exp() * -f).sum(0)


@pytest.mark.parametrize("which", ["vae", "sbn"])
def test_evaluation_bounds_match_enumeration(which):
    """evaluate(): the K-sample bound approaches the enumerated log-likelihood as K grows, and the
    ELBO (VAE) / single-sample term (SBN) has the enumerated mean."""
    from discograd.models import SBN, LayeredVAE
    torch.manual_seed(0)
    if which == "vae":
        model = LayeredVAE(layers=2, latent="bernoulli", latent_dim=3, x_dim=784).double()
        key_single = "elbo"
    else:
        model = SBN(layers=2, latent="categorical", latent_dim=2, classes=3).double()
        key_single = "loss"
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)                                    # a posterior far from uniform
    x = (torch.rand(4, 784, generator=torch.Generator().manual_seed(1)) < 0.3).double()
    logp, single = _enumerated(model, x, model.kind)
    g = torch.Generator().manual_seed(2)
    big = model.evaluate(x, 20_000, generator=g)["bound_20000"]
    # consistent as K grows (one draw: noise of a tenth of a nat); a wrong log w is off by nats
    assert torch.all((logp - big).abs() < 0.25), (big, logp)
    draws = torch.stack([model.evaluate(x, 1, generator=g)[key_single] for _ in range(4000)])
    draws = draws if which == "vae" else -draws             # SBN loss = -log p(y|h)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - single).abs() < z_crit(4) * se), (draws.mean(0), single, se)


def test_layered_refusals_name_the_key(cfg_of, tmp_path):
    from discograd.estimators import ConfigError
    from discograd.experiment.train import Trainer
    from discograd.experiment.build import validate
    with pytest.raises(ConfigError, match="model.kl=analytic.*accepted: model.kl=sampled"):
        validate(cfg_of("model=vae", "model.layers=2", "model.kl=analytic"))
    with pytest.raises(ConfigError, match="model.layers=0"):
        validate(cfg_of("model=sbn", "model.layers=0"))
    with pytest.raises(ConfigError, match="diagnostics.every"):
        Trainer(cfg_of(*model_for("bernoulli"), *SMALL[:-2], "diagnostics.every=5"), tmp_path / "a")
    assert not (tmp_path / "a" / "metrics.csv").exists()
    with pytest.raises(ConfigError, match="estimator 'rloo'.*'attention'"):
        Trainer(cfg_of("model=attention", "model.recurrent=true", "estimator=rloo", *SMALL),
                tmp_path / "b")


@pytest.mark.parametrize("over", [["estimator=reinforce", "estimator.samples=3"],
                                  ["estimator=vimco", "estimator.samples=2"]])
def test_recurrent_attention_takes_s_whole_rollouts(over, cfg_of, tmp_path):
    """The same rollout mode serves the recurrent attention model: REINFORCE with the leave-one-
    out baseline and VIMCO run on S rollouts side by side (their unbiasedness on rollouts is
    tested on the tiny two-layer model above); the location network is trained."""
    from discograd.experiment.train import Trainer
    t = Trainer(cfg_of("model=attention", "model.recurrent=true", "model.hidden=32", *over,
                       *SMALL), tmp_path / "run")
    try:
        before = t.model.where.weight.detach().clone()
        final = t.fit()["final"]
        assert not torch.equal(before, t.model.where.weight.detach())
    finally:
        t.close()
    assert final and all(math.isfinite(v) for v in final.values()), final


def test_cost_and_mode_are_logged(cfg_of, tmp_path):
    """summary.json and metrics.csv give a layered run's real cost: 1 + L x evals in local mode."""
    import csv
    import json
    from discograd.experiment.train import Trainer
    t = Trainer(cfg_of("estimator=disarm", *model_for("bernoulli"), *SMALL), tmp_path / "run")
    try:
        t.fit()
    finally:
        t.close()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["estimator"]["layered_mode"] == "local" and summary["estimator"]["layers"] == 2
    assert summary["estimator"]["evals"] == 1 + 2 * 2
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        evals = {float(r["value"]) for r in csv.DictReader(fh) if r["metric"] == "evals"}
    assert evals == {5.0}


def test_presets_train_from_the_command_line(tmp_path):
    """The SBN preset (categorical, ARSM per layer) and the two-layer VAE preset (REBAR per layer)
    run through run.py and Hydra, and a rerun of the finished folder resumes it (nothing redone)."""
    from test_run import check_run_folder, run, summary
    short = ["train.steps=10", "train.log_every=5", "train.eval_every=10",
             "train.checkpoint_every=10", "eval.samples=2", "eval.final_samples=4",
             "train.batch_size=16", "report.run=false"]
    for preset, est, extra in (("jang2016_sbn_categorical", "arsm", []),
                               ("arm2019_two_layer", "rebar", ["model.latent_dim=20"])):
        out = tmp_path / preset
        run(f"+experiment={preset}", f"estimator={est}", *extra, *short,
            f"hydra.run.dir={out}", cwd=tmp_path)
        check_run_folder(out)
        s = summary(out)
        assert s["status"] == "completed" and s["estimator"]["layered_mode"] == "local"
        assert math.isfinite(s["final"]["test/bound_4"])
        run(f"+experiment={preset}", f"estimator={est}", *extra, *short,
            f"hydra.run.dir={out}", cwd=tmp_path)
        assert summary(out)["final"] == s["final"]
