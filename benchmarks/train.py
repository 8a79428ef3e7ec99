"""Training throughput: the harness (``experiment.train.Trainer.fit`` at default logging) against
the plain loop of the same model and estimator (:mod:`benchmarks.plain`), in one process.

Harness steps/s is the loop's own ``steps_per_s`` of each log interval (training time only:
evaluation, probes and checkpoints excluded, logging and every per-step check included), from a
real run folder; the plain loop is timed over blocks of the same number of steps. Rounds of
(harness run, plain blocks) are interleaved, the first interval / block of each is a warm-up; the
ratio is the median of the rounds' ratios.
"""
from __future__ import annotations

import csv
import tempfile
import time

import torch

from .common import compose, median, peak_memory_mb, sync

MODELS = {
    # name: (harness overrides, plain constructor arguments)
    "vae": (["model=vae"], {"hidden": ()}),
    "vae_nonlinear": (["model=vae", "model.hidden=[200,200]"], {"hidden": (200, 200)}),
    "toy": (["model=toy"], {}),
}


def harness_rates(model: str, est: str, device: torch.device, intervals: int,
                  compile_: bool) -> tuple[list[float], int]:
    """Steps/s of each log interval of a real run (the first is the warm-up), and log_every."""
    from discograd.experiment.train import Trainer
    overrides = [*MODELS[model][0], f"estimator={est}", f"device={device.type}",
                 "train.eval_every=1000000000", "train.checkpoint_every=1000000000",
                 "eval.samples=1", "eval.final_samples=0", "train.progress=log",
                 "diagnostics.every=0",
                 f"train.compile={str(compile_).lower()}"]
    cfg = compose(overrides)
    log_every = int(cfg.train.log_every)
    cfg.train.steps = log_every * (intervals + 1)
    with tempfile.TemporaryDirectory() as out:
        Trainer(cfg, out).fit()
        with open(f"{out}/metrics.csv", newline="") as fh:
            rates = [float(r["value"]) for r in csv.DictReader(fh) if r["metric"] == "steps_per_s"]
    return rates, log_every


def plain_rates(model: str, est: str, device: torch.device, blocks: int, block: int) -> list[float]:
    """Steps/s of ``blocks`` + 1 blocks of the plain loop (the first is the warm-up)."""
    from .plain import PlainToy, PlainVAE
    if model == "toy":
        cfg = compose(["model=toy"])
        loop = PlainToy(est, dim=int(cfg.model.dim), t=float(cfg.model.t),
                        batch_size=int(cfg.train.batch_size), lr=float(cfg.train.lr), device=device)
    else:
        from discograd.data import load_mnist
        images = torch.as_tensor(load_mnist()["train"][0])
        loop = PlainVAE(images, est, device=device, **MODELS[model][1])
    out = []
    for _ in range(blocks + 1):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(block):
            loop.step()
        sync(device)
        out.append(block / (time.perf_counter() - t0))
    return out


def run_case(model: str, est: str, device: torch.device, repeats: int = 5, compile_: bool = False,
             part: str = "both", rounds: int = 4) -> dict:
    """One row: harness and plain steps/s (medians), their ratio, examples/s, peak memory.

    ``rounds`` interleaved rounds of (a harness run of ``repeats`` log intervals after a warm-up
    interval, ``repeats`` plain blocks after a warm-up block); the ratio is the median over rounds
    of each round's harness / plain medians, so that a drift of the machine's speed between rounds
    (frequent on a shared VM) cancels. ``part='harness'`` or ``'plain'`` runs only that side, once
    (for its own peak memory)."""
    defaults = compose(MODELS[model][0]).train
    batch, log_every = int(defaults.batch_size), int(defaults.log_every)
    row = {"model": model, "estimator": est + (" (compile)" if compile_ else ""), "batch": batch}
    h, p, ratios, warm = [], [], [], []
    for _ in range(rounds if part == "both" else 1):
        hr = pr = []
        if part in ("both", "harness"):
            rates, log_every = harness_rates(model, est, device, repeats, compile_)
            hr = rates[1:]
            warm.append(log_every / rates[0])
        if part in ("both", "plain"):
            pr = plain_rates(model, est, device, repeats, log_every)[1:]
        h += hr
        p += pr
        if hr and pr:
            ratios.append(median(hr) / median(pr))
    hs = median(h)
    row.update({"harness_steps_s": hs, "plain_steps_s": median(p), "ratio": median(ratios),
                "ratio_min": min(ratios, default=float("nan")),
                "harness_examples_s": hs * batch, "first_interval_s": median(warm),
                "interval_steps": log_every, "peak_mb": peak_memory_mb(device)})
    return row
