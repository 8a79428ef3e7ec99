"""annealed_st (estimators/annealed_st.py): its known properties, since it is biased."""
from __future__ import annotations

import pytest
import torch

from discograd.estimators import REGISTRY, ConfigError


def grads(est, logits, f, u):
    logits = logits.clone().requires_grad_(True)
    est(logits, f, u=u).surrogate.backward()
    return logits.grad


@pytest.mark.parametrize("kind, shape", [("bernoulli", (4, 3)), ("categorical", (4, 3, 5))])
def test_slope_one_is_st_exactly_and_the_forward_pass_is_the_exact_sample(kind, shape):
    torch.manual_seed(0)
    logits, u = torch.randn(shape), torch.rand((2, *shape))
    w = torch.randn(shape[1:])
    f = lambda z: (z * w).flatten(2).sum(-1) ** 2                  # noqa: E731  a nonlinear f
    flat = REGISTRY["annealed_st"](kind, shape[1:], samples=2, slope_rate=0.0)
    st = REGISTRY["st"](kind, shape[1:], samples=2)
    flat.set_step(10_000)
    torch.testing.assert_close(grads(flat, logits, f, u), grads(st, logits, f, u))
    assert torch.equal(flat(logits, f, u=u).loss, st(logits, f, u=u).loss)   # same hard samples


def test_the_gradient_is_st_through_the_sharpened_sigmoid():
    """Bernoulli, linear f = sum(c * z): the gradient is exactly c * a * s(a l) (1 - s(a l))
    for every sample, with a = min(slope_max, 1 + slope_rate * step)."""
    torch.manual_seed(1)
    logits, c = torch.randn(3, 4), torch.randn(4)
    est = REGISTRY["annealed_st"]("bernoulli", (4,), slope_rate=0.01, slope_max=5.0)
    for step, a in [(0, 1.0), (100, 2.0), (10_000, 5.0)]:
        est.set_step(step)
        assert est.scalars() == {"slope": a}
        g = grads(est, logits, lambda z: (z * c).sum(-1), torch.rand(1, 3, 4))
        s = torch.sigmoid(a * logits)
        torch.testing.assert_close(g, c * a * s * (1 - s) / 3)      # / 3: the minibatch mean


@pytest.mark.parametrize("setting, value", [("slope_rate", -1.0), ("slope_max", 0.5)])
def test_bad_settings_are_refused_by_name(setting, value):
    """By the constructor's argument name for a Python caller, by the config key for the runner."""
    from discograd.estimators import build_estimator
    with pytest.raises(ConfigError, match=f"^{setting}={value}"):
        REGISTRY["annealed_st"]("bernoulli", (3,), **{setting: value})
    with pytest.raises(ConfigError, match=f"^estimator.{setting}={value}"):
        build_estimator({"name": "annealed_st", setting: value}, "bernoulli", (3,))
