"""``train.replicas=N``: the aggregate training throughput of N replicas in one process (the real
harness, experiment/replicas.py) against N sequential harness runs and N plain loops, measured in
the same process, per estimator.

- group: replica-steps/s = N x the steps/s that a member logs (its own training time; the group's
  evaluation is switched off, as in the train benchmark), median over log intervals after a
  warm-up interval.
- sequential: N separate harness runs one after another do N x the steps in N x the time of one,
  so their aggregate replica-steps/s is the steps/s of one ordinary run (``Trainer``, the same
  measurement as ``benchmarks train``), measured just before and just after each group (the mean
  of both: the machine's speed drifts).
- plain: the same for N plain loops (benchmarks.plain).
On CUDA every size is also measured with ``train.cuda_graphs=true`` (``cuda_graphs`` true); there
``ratio_to_sequential`` is the gain over one eager GPU run.
"""
from __future__ import annotations

import csv
import tempfile

import torch

from .common import compose, median, peak_memory_mb


def group_rates(est: str, n: int, device: torch.device, intervals: int, graphs: bool = False,
                model: str = "vae") -> list[float]:
    """Replica-steps/s of each log interval of a real group of n replicas (first dropped)."""
    from discograd.experiment.replicas import ReplicaGroup, member_folder
    from discograd.experiment.train import Trainer
    from .train import MODELS
    every = max(20, 1000 // n)
    cfg = compose([*MODELS[model][0], f"estimator={est}", f"device={device.type}",
                   "train.eval_every=1000000000", "train.checkpoint_every=1000000000",
                   "eval.samples=1", "eval.final_samples=0", "eval.select=none",
                   "train.progress=log", "diagnostics.every=0", "report.run=false",
                   f"train.log_every={every}", f"train.steps={every * (intervals + 1)}",
                   f"train.replicas={n}", f"train.cuda_graphs={str(graphs).lower()}"])
    with tempfile.TemporaryDirectory() as out:
        runner = ReplicaGroup(cfg, out) if n > 1 else Trainer(cfg, out)
        try:
            runner.fit()
        finally:
            runner.close()
        folder = member_folder(out, int(cfg.seed)) if n > 1 else out
        with open(f"{folder}/metrics.csv", newline="") as fh:
            rates = [float(r["value"]) for r in csv.DictReader(fh) if r["metric"] == "steps_per_s"]
    return [n * r for r in rates[1:]]


def run_case(est: str, device: torch.device, sizes: tuple[int, ...], repeats: int) -> list[dict]:
    """The rows of one estimator: every size (and, on CUDA, with graphs too). A shared VM's speed
    drifts by tens of percent over minutes, so the ordinary run is measured between every two
    groups, and each group is compared with the mean of the two measurements around it."""
    from .train import harness_rates, plain_rates

    def single() -> float:
        return median(harness_rates("vae", est, device, repeats, False)[0][1:])
    plain = median(plain_rates("vae", est, device, repeats, 500)[1:])
    rows, before = [], single()
    for graphs in ((False, True) if device.type == "cuda" else (False,)):
        for n in sizes:
            r = median(group_rates(est, n, device, repeats, graphs))
            after = single()
            seq = (before + after) / 2
            rows.append({"estimator": est, "replicas": n, "cuda_graphs": graphs,
                         "group_replica_steps_s": r, "sequential_harness_steps_s": seq,
                         "plain_loops_steps_s": plain, "ratio_to_sequential": r / seq,
                         "ratio_to_plain": r / plain, "peak_mb": peak_memory_mb(device)})
            before = after
    return rows
