"""discograd as a library (docs/api.md): the public surface, make(), the examples run with the
public API alone, the probe is the runner's, and the certification passes every unbiased
estimator, rejects the biased ones and catches a planted bug."""
from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import discograd
from discograd import estimators as E

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("discograd", "discograd.estimators", "discograd.diagnostics")
SNAPSHOT = ROOT / "tests" / "public_api.txt"


def surface() -> list[str]:
    """Every public name with its signature (classes: their constructor's)."""
    out = []
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        for name in sorted(mod.__all__):
            obj = getattr(mod, name)
            if inspect.isclass(obj) or callable(obj):
                try:
                    sig = str(inspect.signature(obj))
                except (TypeError, ValueError):
                    sig = "(...)"
                kind = "class " if inspect.isclass(obj) else "def "
                out.append(f"{kind}{modname}.{name}{sig}")
            else:
                out.append(f"{type(obj).__name__} {modname}.{name}")
    return out


def test_the_public_surface_changes_only_when_announced():
    """A change of a public name or signature must update tests/public_api.txt (this test prints
    the new surface) and say so in CHANGELOG.md, under the version the package declares."""
    assert surface() == SNAPSHOT.read_text().splitlines(), "\n" + "\n".join(surface())
    version = discograd.__version__
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text()
    assert f'version = "{version}"' in (ROOT / "pyproject.toml").read_text()


def test_make_takes_the_latents_from_the_logits_and_words_errors_for_python():
    est = discograd.make("disarm", torch.zeros(5, 3))
    assert isinstance(est, E.DisARM) and est.kind == "bernoulli" and est.latent_shape == (3,)
    cat = discograd.make("rloo", torch.zeros(5, 2, 4), samples=3)
    assert cat.kind == "categorical" and cat.latent_shape == (2, 4) and cat.evals == 3
    assert discograd.make("gumbel", kind="bernoulli", latent_shape=(7,)).latent_shape == (7,)
    with pytest.raises(discograd.ConfigError, match=r"^samples=0 is invalid"):
        discograd.make("reinforce", torch.zeros(2, 3), samples=0)
    with pytest.raises(discograd.ConfigError, match=r"unknown setting\(s\) sample .*accepted: samples"):
        discograd.make("reinforce", torch.zeros(2, 3), sample=2)
    with pytest.raises(discograd.ConfigError, match=r"neither \[B, n\].*kind= and latent_shape="):
        discograd.make("st", torch.zeros(3))
    with pytest.raises(discograd.ConfigError, match=r"kind='categorical' does not match"):
        discograd.make("st", torch.zeros(2, 3), kind="categorical")
    with pytest.raises(discograd.ConfigError, match=r"unknown estimator 'dis_arm'; accepted: .*disarm"):
        discograd.make("dis_arm", torch.zeros(2, 3))


def test_noise_comes_from_the_callers_generator():
    logits = torch.zeros(4, 3, requires_grad=True)
    est = discograd.make("reinforce", logits)

    def grad(seed):
        out = est(logits, lambda z: (z - 0.45).pow(2).sum(-1),
                  generator=torch.Generator().manual_seed(seed))
        return torch.autograd.grad(out.surrogate, logits)[0]
    torch.manual_seed(0)
    a = grad(1)
    torch.manual_seed(123)                     # the global stream does not matter
    assert torch.equal(a, grad(1)) and not torch.equal(a, grad(2))


def _run_public(script: str, *args: str) -> str:
    """Run an example as a user would, then check that nothing but the public modules (and
    what they import) was loaded: no discograd.experiment, no discograd.analysis."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, *{list(args)!r}]\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('discograd.experiment', "
            "'discograd.analysis')))\n"
            "print('HARNESS', bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "HARNESS []" in r.stdout, r.stdout
    return r.stdout


def test_the_example_vae_trains_with_the_public_api_alone():
    out = _run_public("examples/vae.py", "disarm", "--steps", "60")
    first = float(re.search(r"step 0 train -ELBO ([\d.]+)", out).group(1))
    test = float(re.search(r"test -ELBO ([\d.]+) nats", out).group(1))
    assert first > 500 and test < first - 150, out       # 543 nats at the start; ~240 after 60 steps


def test_the_example_mixture_probes_five_estimators():
    out = _run_public("examples/mixture.py")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in ("reinforce", "rloo", "arsm", "gumbel", "st")]
    assert [r[0] for r in rows] == ["reinforce", "rloo", "arsm", "gumbel", "st"], out
    assert all(r[-1] == "exact" for r in rows)


def test_the_public_probe_is_the_runners_probe():
    """discograd.probe on a LatentModel's own functions gives the runner's grad_stats rows (same
    seed, same state, same batch), column for column."""
    from discograd.diagnostics import Probe, parse_reference
    from discograd.models import VAE
    torch.manual_seed(0)
    vae = VAE(latent_dim=6, hidden=[])
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    names = ["st", "reinforce", "disarm"]
    table = discograd.probe(vae, vae.logits, vae.objective, names, x, samples=20, seed=3,
                            extra=vae.extra_loss, encoder=vae.encoder_parameters())
    trained = discograd.make("st", kind="bernoulli", latent_shape=(6,))
    rows = Probe(vae, trained, names, parse_reference("auto", vae), 20, x, seed=3).run(0)
    ours = table.drop(columns=["aux", "seconds_per_estimate"])
    theirs = [r[1:12] + r[13:] for r in rows]             # no step, seconds_per_estimate
    theirs = [[v for i, v in enumerate(r) if i != 11] for r in theirs]   # no aux
    assert len(ours) == len(theirs) == 9
    for got, want in zip(ours.itertuples(index=False), theirs):
        assert [str(v) for v in got] == [str(v) for v in want]
    # a Python caller's mistake is worded in the function's own arguments
    with pytest.raises(E.ConfigError, match=r"^samples=1 is invalid: it must be an integer >= 2"):
        discograd.probe(vae, vae.logits, vae.objective, names, x, samples=1)


UNBIASED = sorted(n for n, c in E.REGISTRY.items() if c.unbiased and c.objective == "mean")


@pytest.mark.parametrize("name", UNBIASED)
def test_certify_passes_every_unbiased_estimator(name):
    table = discograd.certify(name)
    applicable = table[table.verdict != "not applicable"]
    assert len(applicable) >= 2 and (applicable.verdict == "pass").all(), table.to_string()


@pytest.mark.parametrize("name", ["st", "gumbel"])
def test_certify_rejects_biased_estimators(name):
    table = discograd.certify(name)
    logits = table[table.group == "logits"]
    assert (logits.verdict == "biased").all(), table.to_string()


class ScoreOnly(E.Reinforce):
    """A planted bug of the kind peer libraries ship: the score-function term alone, f detached,
    so f's own parameters and f's direct dependence on the logits get no gradient."""

    def estimate(self, logits, f, u):
        z = E.hard_sample(logits, self.kind, u)
        fz = f(z)
        logq = E.log_prob(logits, z, self.kind)
        return E.Estimate(surrogate=(fz.detach() * logq).mean(0).mean(), loss=fz.detach().mean(0))


def test_certify_catches_a_planted_bug_in_both_groups():
    """The tester's test: the missing pathwise terms are found on both problems, in both groups
    (the direct dependence of f on the logits is part of the logits' gradient)."""
    table = discograd.certify(ScoreOnly)
    assert (table.verdict == "biased").all(), table.to_string()


def test_certify_says_what_does_not_apply():
    table = discograd.certify("vimco")
    assert (table.verdict == "not applicable").all() and table.why.str.contains("another objective").all()
    table = discograd.certify("disarm")
    cat = table[table.problem == "categorical"]
    assert (cat.verdict == "not applicable").all() and cat.why.str.contains("categorical").all()
