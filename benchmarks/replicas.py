"""Would ``train.replicas=N`` pay? N independent copies of the default VAE (N seeds of one
configuration) trained in one process, vectorised with torch.func over stacked parameters
(``stack_module_state`` + ``vmap(grad(...))`` + one fused Adam over the stacked tensors), against
the same code with N = 1 and against one plain loop (benchmarks.plain, gumbel). Reported:
replica-steps/s (N x steps/s) and the ratios. A small
model cannot fill a large GPU, so on CUDA the ratio is expected to grow with N; on a CPU that one
replica already keeps busy it cannot.

The model is the plain Gumbel-softmax VAE of benchmarks.plain (tau = 1, analytic KL); each
replica draws its own minibatch, binarization and noise.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from .common import median, peak_memory_mb, sync
from .plain import PlainVAE, VAENet


class _GumbelVAE(VAENet):
    """The linear VAENet with its Gumbel-softmax (tau = 1) loss as forward."""

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        logits = self.enc(x)
        out = self.dec(torch.sigmoid(logits + torch.log(u) - torch.log1p(-u)))
        nll = (F.softplus(out) - x * out).sum(-1)
        return (nll + self.kl(logits)).mean()


def rate(n: int, X: torch.Tensor, steps: int, repeats: int, batch: int = 50) -> list[float]:
    """Replica-steps/s of ``repeats`` blocks of ``steps`` steps (after one warm-up block)."""
    from torch.func import functional_call, grad, stack_module_state, vmap
    device = X.device
    models = [_GumbelVAE(X.mean(0)).to(device) for _ in range(n)]
    params, _ = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.Adam(list(params.values()), lr=1e-3, fused=True)
    gfn = vmap(grad(lambda p, x, u: functional_call(template, p, (x, u))), in_dims=(0, 0, 0),
               randomness="different")

    def step():
        idx = torch.randint(0, len(X), (n, batch), device=device)
        x = (torch.rand(n, batch, 784, device=device) < X[idx]).float()
        u = torch.rand(n, batch, 200, device=device).clamp_(1e-6, 1 - 1e-6)
        grads = gfn(params, x, u)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()

    out = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        out.append(n * steps / (time.perf_counter() - t0))
    return out[1:]


def run(device: torch.device, sizes: tuple[int, ...], steps: int = 100, repeats: int = 3) -> list[dict]:
    from discograd.experiment.data import load_mnist
    X = torch.as_tensor(load_mnist()["train"][0]).to(device=device, dtype=torch.float32) / 256
    loop = PlainVAE(torch.as_tensor(load_mnist()["train"][0]), "gumbel", device=device)

    def plain_block():
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loop.step()
        sync(device)
        return steps / (time.perf_counter() - t0)
    plain_block()
    plain = median([plain_block() for _ in range(repeats)])
    rows, base = [], None
    for n in sizes:
        r = median(rate(n, X, steps, repeats))
        base = base or r
        rows.append({"replicas": n, "replica_steps_s": r, "ratio_to_1": r / base,
                     "ratio_to_plain_loop": r / plain, "peak_mb": peak_memory_mb(device)})
    return rows
