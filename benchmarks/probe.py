"""The diagnostics probe: K gradient estimates and their per-coordinate moments, batched
(``Probe._moments``: vmap over grad, chunked) against a plain Python loop of K autograd backward
passes accumulating the same moments. Both use the same uniforms, model and minibatch; the ratio
is measured in one process.
"""
from __future__ import annotations

import torch

from discograd.estimators import REGISTRY
from discograd.diagnostics import Probe, Reference, parse_reference
from discograd.step import Step
from .common import median, peak_memory_mb, timed

MODELS = ("vae", "vae_nonlinear", "toy")
ESTIMATORS = ("st", "reinforce", "gumbel", "st_gumbel", "disarm")


def loop_of_backward_passes(model, est, x, U) -> None:
    """The plain way: one forward + backward per estimate, the gradients accumulated into
    per-coordinate sums and sums of squares."""
    s1 = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    s2 = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    module = Step(model, est)
    for k in range(U.shape[0]):
        model.zero_grad(set_to_none=True)
        module(x, U[k])[0].backward()
        for a, b, p in zip(s1, s2, model.parameters()):
            g = p.grad.double()
            a += g
            b += g * g


def setup(model_name: str, device: torch.device, batch: int = 50):
    """(model, diagnostic minibatch) as the trainer builds them for ``model=...`` defaults."""
    from discograd.models import VAE, Toy
    torch.manual_seed(0)
    if model_name == "toy":
        model = Toy(dim=4).to(device)
        return model, torch.empty(batch, 0, device=device)
    from discograd.data import MNISTData, load_mnist
    data = MNISTData(load_mnist(), "dynamic", device, 0)
    x = data.batch("train", torch.arange(batch, device=device),
                   generator=torch.Generator(device=device).manual_seed(0))
    model = VAE(hidden=[200, 200] if model_name == "vae_nonlinear" else []).to(device)
    model.set_data_mean(data.train_mean())
    return model, x


def run_case(model_name: str, est_name: str, device: torch.device, samples: int = 100,
             repeats: int = 5, part: str = "both") -> dict:
    model, x = setup(model_name, device)
    est = REGISTRY[est_name](model.kind, model.latent_shape).to(device)
    est.eval()
    probe = Probe(model, est, [est_name], Reference("exact"), samples, x)
    shape = (x.shape[0], *model.latent_shape)
    U = probe._noise(samples, est.noise_shape(shape)[0], shape)
    row = {"model": model_name, "estimator": est_name, "K": samples,
           "batched_s": float("nan"), "loop_s": float("nan")}
    if part in ("both", "batched"):
        row["batched_s"] = median(timed(lambda: probe._moments(est, U), repeats, device))
    if part in ("both", "loop"):
        row["loop_s"] = median(timed(lambda: loop_of_backward_passes(model, est, x, U), repeats, device))
    row["speedup"] = row["loop_s"] / row["batched_s"]
    row["peak_mb"] = peak_memory_mb(device)
    return row


def full_probe(device: torch.device, samples: int = 100, repeats: int = 3) -> dict:
    """One whole probe as a training run does it on the default VAE: 4 estimators and the default
    sampled reference (``auto`` = mc:reinforce:100)."""
    model, x = setup("vae", device)
    names = ["st", "reinforce", "gumbel", "st_gumbel"]
    est = REGISTRY["gumbel"]("bernoulli", model.latent_shape).to(device)
    probe = Probe(model, est, names, parse_reference("auto", model), samples, x)
    t = median(timed(lambda: probe.run(0), repeats, device))
    return {"model": "vae", "estimator": "+".join(names) + f" + reference {probe.reference}",
            "K": samples, "batched_s": t, "loop_s": float("nan"), "speedup": float("nan"),
            "peak_mb": peak_memory_mb(device)}
