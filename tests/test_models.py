"""The testbeds: exact quantities of the toy problem and of a small, enumerable VAE."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from discograd.estimators import log_prob
from discograd.models import VAE, Toy
from discograd.models.vae import kl_divergence


def all_configs(kind, shape):
    """Every latent configuration, [M, *shape]."""
    if kind == "bernoulli":
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=shape[0])))
    n, k = shape
    eye = torch.eye(k)
    return torch.stack([eye[list(c)] for c in itertools.product(range(k), repeat=n)])


def test_toy_closed_form_matches_enumeration_and_autograd():
    torch.manual_seed(0)
    toy = Toy(dim=3, t=0.45)
    with torch.no_grad():
        toy.phi.copy_(torch.tensor([-1.0, 0.3, 2.0]))
    z = all_configs("bernoulli", (3,))                          # [8, 3]
    logits = toy.logits(torch.empty(1, 0))
    phi = toy.phi
    w = log_prob(logits, z[:, None], "bernoulli").exp()[:, 0]   # [8]
    f = toy.objective(None, logits)(z[:, None])[:, 0]           # [8]
    expected = (w * f).sum()
    assert torch.allclose(expected, toy.exact_loss(), atol=1e-6)
    g = torch.autograd.grad(expected, phi)[0]
    assert torch.allclose(g, toy.exact_grad(), atol=1e-6)
    # the formula of REFERENCES.md for one dim: dE/dphi = (1 - 2t) s (1 - s)
    s = torch.sigmoid(phi.detach())
    assert torch.allclose(toy.exact_grad(), (1 - 2 * 0.45) * s * (1 - s) / 3, atol=1e-7)


def test_toy_categorical_with_two_classes_is_the_bernoulli_problem():
    b = Toy(dim=2, t=0.3)
    c = Toy(dim=2, t=0.3, latent="categorical", classes=2)
    with torch.no_grad():
        b.phi.copy_(torch.tensor([0.7, -0.4]))
        c.phi.copy_(torch.stack([torch.zeros(2), b.phi.detach()], -1))   # logit of class 1 = phi
    assert torch.allclose(b.exact_loss(), c.exact_loss(), atol=1e-6)
    assert torch.allclose(b.exact_grad(), c.exact_grad()[:, 1], atol=1e-6)


def test_toy_categorical_exact_loss_matches_enumeration():
    toy = Toy(dim=2, t=0.45, latent="categorical", classes=3)
    with torch.no_grad():
        toy.phi.copy_(torch.randn(2, 3, generator=torch.Generator().manual_seed(1)))
    z = all_configs("categorical", (2, 3))
    logits = toy.logits(torch.empty(1, 0))
    w = log_prob(logits, z[:, None], "categorical").exp()[:, 0]
    f = toy.objective(None, logits)(z[:, None])[:, 0]
    assert torch.allclose((w * f).sum(), toy.exact_loss(), atol=1e-6)
    assert torch.allclose(w.sum(), torch.tensor(1.0), atol=1e-6)


@pytest.mark.parametrize("kind, shape", [("bernoulli", (6,)), ("categorical", (3, 3))])
def test_vae_kl_elbo_and_bound_against_enumeration(kind, shape):
    torch.manual_seed(0)
    vae = VAE(latent=kind, latent_dim=shape[0], classes=shape[-1], hidden=[16], x_dim=20)
    with torch.no_grad():
        vae.prior_logits.normal_()
    x = (torch.rand(5, 20) < 0.3).float()
    logits = vae.logits(x)
    prior = vae.prior_logits.expand_as(logits)
    z = all_configs(kind, shape)[:, None].expand(-1, 5, *shape)        # [M, B, ...]
    logq = log_prob(logits, z, kind)                                   # [M, B]
    logp_z = log_prob(prior, z, kind)
    nll = vae.neg_log_lik(z, x)
    q = logq.exp()
    assert torch.allclose(q.sum(0), torch.ones(5), atol=1e-5)
    kl_exact = (q * (logq - logp_z)).sum(0)
    assert torch.allclose(kl_divergence(logits, prior, kind), kl_exact, atol=1e-4)
    elbo_exact = (q * (-nll)).sum(0) - kl_exact
    log_px = torch.logsumexp(-nll + logp_z, 0)
    # analytic-KL objective and sampled-KL objective have the same expectation (the -ELBO)
    f_a = vae.objective(x, logits)(z)
    vae.kl = "sampled"
    f_s = vae.objective(x, logits)(z)
    vae.kl = "analytic"
    assert torch.allclose((q * f_a).sum(0) + kl_exact, -elbo_exact, atol=1e-3)
    assert torch.allclose((q * f_s).sum(0), -elbo_exact, atol=1e-3)
    # Monte Carlo evaluation: elbo unbiased; bound_K between the ELBO and log p(x), increasing in K
    reps = 400
    xr = x.repeat(reps, 1)
    g = torch.Generator().manual_seed(3)
    r1 = vae.evaluate(xr, 1, generator=g)
    r50 = vae.evaluate(xr, 50, generator=g)
    for res, key in ((r1, "bound_1"), (r50, "elbo")):
        est = res[key].view(reps, 5)
        se = est.std(0) / math.sqrt(reps)
        assert ((est.mean(0) - elbo_exact).abs() < 5 * se + 1e-4).all()
    b50 = r50["bound_50"].view(reps, 5)
    assert (b50.mean(0) > elbo_exact).all()
    assert (b50.mean(0) <= log_px + 5 * b50.std(0) / math.sqrt(reps)).all()
    assert torch.allclose(r50["loss"], -r50["elbo"])


def test_vae_decoder_bias_is_data_mean_logit():
    vae = VAE(latent_dim=4, x_dim=3)
    vae.set_data_mean(torch.tensor([0.5, 0.25, 0.0]))
    b = vae.decoder[-1].bias.detach()
    assert torch.allclose(b[:2], torch.tensor([0.0, math.log(1 / 3)]), atol=1e-6)
    assert torch.isfinite(b).all()


def test_vae_decoder_bias_zero_and_refusal():
    """model.decoder_bias=zero (the ARM code's init) leaves the output bias at 0 whatever the
    data mean; an unknown value is refused with the accepted ones."""
    from discograd.errors import ConfigError
    from discograd.models import LayeredVAE
    for vae, layer in ((VAE(latent_dim=4, x_dim=3, decoder_bias="zero"), "decoder"),
                       (LayeredVAE(layers=2, latent_dim=4, x_dim=3, decoder_bias="zero"), "decoder_x")):
        vae.set_data_mean(torch.tensor([0.5, 0.25, 0.1]))
        assert torch.equal(getattr(vae, layer)[-1].bias.detach(), torch.zeros(3))
    with pytest.raises(ConfigError, match=r"model.decoder_bias='mean' is invalid; accepted: data_mean, zero"):
        VAE(latent_dim=4, decoder_bias="mean")


@pytest.mark.parametrize("hidden", [[], [16, 8]])
def test_vae_evaluation_likelihood_is_the_training_one(hidden):
    """The evaluation's -log p(x|z) (the contraction h.(xW) + x.c instead of x.a, in blocks of
    DECODE_ROWS rows) equals the training one, sample by sample, up to float rounding; the
    blocks split the sample axis, here into 3 blocks of 4 samples and one of 2."""
    from discograd.models import vae as V
    torch.manual_seed(0)
    model = VAE(latent_dim=6, hidden=hidden)
    x = torch.bernoulli(torch.full((500, 784), 0.3))
    z = torch.bernoulli(torch.full((14, 500, 6), 0.5))
    old, V.DECODE_ROWS = V.DECODE_ROWS, 2000
    try:
        got = model.eval_neg_log_lik(z, x)
    finally:
        V.DECODE_ROWS = old
    torch.testing.assert_close(got, model.neg_log_lik(z, x), rtol=1e-5, atol=1e-3)


def test_vae_linear_and_nonlinear_shapes():
    lin = VAE(hidden=[])
    assert sum(isinstance(m, torch.nn.Linear) for m in lin.encoder) == 1
    deep = VAE(hidden=[200, 200], latent="categorical", latent_dim=20, classes=10)
    x = torch.rand(4, 784)
    assert deep.logits(x).shape == (4, 20, 10)
    z = torch.nn.functional.one_hot(torch.randint(10, (2, 4, 20)), 10).float()
    assert deep.objective(x, deep.logits(x))(z).shape == (2, 4)
