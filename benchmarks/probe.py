"""Benchmark: the batched diagnostics probe against a plain loop of K autograd backward passes.

Both compute the same K gradient estimates (same uniforms) on the default VAE (linear, 200
Bernoulli latents, a minibatch of 50 real MNIST images); the ratio is measured in one process.
"""
from __future__ import annotations

import statistics
import time

import torch

from estimators import REGISTRY
from experiment.data import MNISTData, load_mnist
from experiment.diagnostics import Probe, Reference, _Surrogate, parse_reference
from models import VAE


def loop_of_backward_passes(model, est, x, U) -> None:
    """The plain way: one forward + backward per estimate, gradients copied out and accumulated."""
    s1 = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    s2 = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    module = _Surrogate(model, est)
    for k in range(U.shape[0]):
        model.zero_grad(set_to_none=True)
        module(x, U[k]).backward()
        for a, b, p in zip(s1, s2, model.parameters()):
            g = p.grad.double()
            a += g
            b += g * g


def timed(fn, repeats: int) -> float:
    fn()                                                  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(samples: int = 100, repeats: int = 5, batch: int = 50) -> list[dict]:
    torch.manual_seed(0)
    data = MNISTData(load_mnist(), "dynamic", "cpu", 0)
    x = data.batch("train", torch.arange(batch), generator=torch.Generator().manual_seed(0))
    model = VAE()
    model.set_data_mean(data.train_mean())
    rows = []
    for name in ("st", "reinforce", "gumbel", "st_gumbel"):
        est = REGISTRY[name]("bernoulli", model.latent_shape)
        est.eval()
        probe = Probe(model, est, [name], Reference("exact"), samples, x)
        U = probe._noise(samples, 1, (batch, *model.latent_shape))
        t_probe = timed(lambda: probe._moments(est, U), repeats)
        t_loop = timed(lambda: loop_of_backward_passes(model, est, x, U), repeats)
        rows.append({"what": f"K={samples} estimates, {name}", "batched_s": t_probe, "loop_s": t_loop,
                     "speedup": t_loop / t_probe})
    # one whole probe as training runs it: 4 estimators + the default sampled reference
    est = REGISTRY["gumbel"]("bernoulli", model.latent_shape)
    probe = Probe(model, est, ["st", "reinforce", "gumbel", "st_gumbel"], parse_reference("auto", model),
                  samples, x)
    t_full = timed(lambda: probe.run(0), max(1, repeats // 2))
    rows.append({"what": f"full probe: 4 estimators x K={samples} + reference {probe.reference}",
                 "batched_s": t_full, "loop_s": float("nan"), "speedup": float("nan")})
    return rows
