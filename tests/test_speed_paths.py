"""The fast paths of the harness compute what the plain ones do: the fused Adam against
torch.optim.Adam, train.compile against eager, the binarization draw, the loss check."""
from __future__ import annotations

import math
import sys
import subprocess
from pathlib import Path

import pytest
import torch

from discograd.optim import Adam

ROOT = Path(__file__).resolve().parents[1]


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((7, 3), (3,), (5,))]


def _run(opt, params, steps, seed=1, skip_last_at=()):
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        opt.zero_grad()
        for i, p in enumerate(params):
            if not (i == len(params) - 1 and t in skip_last_at):    # a parameter without gradient
                p.grad = torch.randn(p.shape, generator=g) * (1 + t)
        opt.step()


def test_adam_equals_torch_fused_adam_bitwise_and_plain_adam_closely():
    mine, fused, plain = _params(), _params(), _params()
    skip = {3, 4, 9}
    _run(Adam([{"params": mine[:2]}, {"params": mine[2:]}], lr=0.01), mine, 20, skip_last_at=skip)
    _run(torch.optim.Adam([{"params": fused[:2]}, {"params": fused[2:]}], lr=0.01, fused=True),
         fused, 20, skip_last_at=skip)
    _run(torch.optim.Adam(plain, lr=0.01), plain, 20, skip_last_at=skip)
    for a, b, c in zip(mine, fused, plain):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    assert not torch.equal(mine[0], _params()[0])          # it moved


def test_adam_state_dict_round_trips_with_torch_adam():
    a, b = _params(), _params()
    opt_a = Adam(a, lr=0.01)
    _run(opt_a, a, 5, skip_last_at={0, 1})
    torch_opt = torch.optim.Adam(b, lr=0.01, fused=True)
    torch_opt.load_state_dict(opt_a.state_dict())           # ours -> torch
    for p, q in zip(a, b):
        q.data.copy_(p.data)
    opt_c = Adam(c := _params(), lr=0.01)
    opt_c.load_state_dict(torch_opt.state_dict())           # torch -> ours
    for p, q in zip(a, c):
        q.data.copy_(p.data)
    _run(opt_a, a, 4, seed=3)
    _run(torch_opt, b, 4, seed=3)
    _run(opt_c, c, 4, seed=3)
    for p, q, r in zip(a, b, c):
        assert torch.equal(p, q) and torch.equal(p, r)
    with pytest.raises(ValueError, match="parameter groups of sizes"):
        Adam(_params()[:2], lr=0.01).load_state_dict(opt_a.state_dict())


def test_dynamic_binarization_draws_bernoulli_pixels():
    """u < p with u ~ U[0, 1) is Bernoulli(p): the mean over many draws of a fixed image matches
    the grey levels within 5 standard errors."""
    from discograd.data import MNISTData
    grey = (torch.arange(784) % 256).to(torch.uint8).reshape(1, 784).repeat(2, 1).numpy()
    splits = {s: (grey, torch.zeros(2, dtype=torch.long).numpy()) for s in ("train", "valid", "test")}
    data = MNISTData(splits, "dynamic", "cpu", 0)
    n = 4000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([data.batch("train", torch.tensor([0]), generator=g)[0] for _ in range(n)])
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    p = torch.arange(784).remainder(256).float() / 256
    se = (p * (1 - p) / n).sqrt().clamp_min(1e-3)
    z = (draws.mean(0) - p) / se
    assert z.abs().max() < 5, z.abs().max()
    assert draws[:, p == 0].sum() == 0                     # grey level 0 never lights up


def _trainer(tmp_path, *overrides):
    from benchmarks.common import compose
    from discograd.experiment.train import Trainer
    return Trainer(compose(list(overrides)), tmp_path)


def test_compiled_step_matches_eager_and_does_not_recompile_when_tau_changes(tmp_path):
    """train.compile=true: same random stream, same losses as eager (to float tolerance), and the
    temperature schedule changing every 5 steps does not trigger recompilation."""
    from torch._dynamo.utils import counters
    counters.clear()
    common = ["model=vae", "model.latent_dim=8", "estimator=gumbel", "estimator.tau.every=5",
              "estimator.tau.rate=0.05", "train.batch_size=16", "train.steps=30"]
    runs = {}
    for flag in ("false", "true"):
        t = _trainer(tmp_path / flag, *common, f"train.compile={flag}")
        losses = []
        for _ in range(30):
            loss, _ = t.train_step(t.next_batch())
            t.step += 1
            losses.append(float(loss))
        runs[flag] = (losses, t)
    eager, compiled = runs["false"][0], runs["true"][0]
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-4)
    assert runs["true"][1].estimator.tau < 0.99                # the schedule did move
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_compile_is_refused_where_it_cannot_work(tmp_path):
    from discograd.estimators import ConfigError
    with pytest.raises(ConfigError, match=r"train.compile=true cannot compile estimator 'relax'.*"
                                          r"accepted: train.compile=false"):
        _trainer(tmp_path, "model=toy", "estimator=relax", "train.compile=true")


def test_non_finite_loss_is_reported_at_its_step(tmp_path):
    """The losses are checked at log steps, not per step; the step reported is still the first bad
    one, and a non-finite parameter without a bad loss is reported at the check's step when there
    is no earlier good state to replay from (with one, tests/test_messages.py: the first bad
    step)."""
    from discograd.experiment.lifecycle import Diverged
    t = _trainer(tmp_path, "model=toy", "estimator=reinforce")
    for s in range(1, 8):
        t.step = s
        t._losses.append((s, torch.tensor(math.nan if s in (5, 7) else 1.0)))
    with pytest.raises(Diverged) as e:
        t.check_finite()
    assert (e.value.step, e.value.quantity) == (5, "training loss")
    t._losses.clear()
    with torch.no_grad():
        t.model.phi.fill_(math.inf)
    with pytest.raises(Diverged) as e:
        t.check_finite()
    assert (e.value.step, e.value.quantity) == (7, "parameter")


def test_training_path_imports_no_dynamo_pandas_or_matplotlib(tmp_path):
    """The training path (toy, three steps; without the gradient probe, whose torch.func imports
    torch._dynamo, and without the end-of-run report) never imports torch._dynamo (0.9 s of
    start-up), pandas or matplotlib."""
    code = ("import sys, runpy; sys.argv = ['run.py', 'model=toy', 'train.steps=3', "
            "'diagnostics.every=0', 'report.run=false', "
            f"'hydra.run.dir={tmp_path}']; sys.path.insert(0, {str(ROOT)!r})\n"
            "try:\n    runpy.run_path('run.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch._dynamo', 'pandas', 'matplotlib') if m in sys.modules]\n"
            "print('IMPORTED', bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "IMPORTED []" in r.stdout, r.stdout + r.stderr


def test_help_imports_no_torch():
    """``python run.py --help`` reads the config files only: no torch (2 s of start-up)."""
    code = ("import sys, runpy; sys.argv = ['run.py', '--help']; "
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "try:\n    runpy.run_path('run.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "TORCH False" in r.stdout and "estimator=NAME" in r.stdout, r.stdout + r.stderr


def test_benchmark_cases_run_and_results_keep_other_sections(tmp_path):
    """The benchmark module works end to end on the toy (numbers are not checked: timings belong
    to benchmarks/results, not to tests), and rewriting one section keeps the others."""
    from benchmarks import __main__ as bench
    from benchmarks.train import run_case
    row = run_case("toy", "disarm", torch.device("cpu"), repeats=1)
    assert row["harness_steps_s"] > 0 and row["plain_steps_s"] > 0 and row["peak_mb"] > 0
    path = tmp_path / "r.md"
    bench.write_results(path, {"train": "## train\n\nold train\n", "probe": "## probe\n\np\n"}, "# h\n")
    bench.write_results(path, {"train": "## train\n\nnew train\n"}, "# h\n")
    text = path.read_text()
    assert "new train" in text and "old train" not in text and "\np\n" in text
    assert text.index("## train") < text.index("## probe")
    r = subprocess.run([sys.executable, "-m", "benchmarks", "train", "--repeats", "0"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--repeats=0" in r.stderr and ">= 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "benchmarks", "trian"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "trian" in r.stderr and "train" in r.stderr


def test_plain_disarm_baseline_is_unbiased_on_the_toy():
    """The plain loops compute the estimators they are named after: DisARM's plain surrogate, on
    the toy problem with t = 0.45, averages to the exact gradient (z-test, fixed seed)."""
    from benchmarks.plain import _grad_of
    torch.manual_seed(0)
    t, n = 0.45, 200000
    phi = torch.full((n, 1), 0.3, requires_grad=True)
    surrogate, _ = _grad_of("disarm", phi, lambda z: (z - t).pow(2).mean(-1))
    g, = torch.autograd.grad(surrogate.sum(), phi)
    s = torch.sigmoid(torch.tensor(0.3))
    exact = (1 - 2 * t) * s * (1 - s)
    z = (g.mean() - exact) / (g.std() / math.sqrt(n))
    assert abs(float(z)) < 4, (float(g.mean()), float(exact))
    assert g.std() > 0
