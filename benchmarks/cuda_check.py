"""``python -m benchmarks.cuda_check``: on a CUDA machine, check that ``train.cuda_graphs=true``
trains what the eager step trains, for a single run and for a replica group, on a few estimators.

For each case two real runs of the same seed (eager, graphs) are compared at every log step
(training loss) and at the end (validation and test metrics), within a float tolerance: a graph
replays the eager step's kernels on the same inputs, so the curves must agree to rounding. Prints
one line per case and exits 1 if any case differs or fails. (This machine has no GPU: the check
runs in benchmarks/gpu.sh when a GPU is lent; on a CPU it says so and exits 2.)
"""
from __future__ import annotations

import csv
import json
import sys
import tempfile

import torch

from discograd.errors import ConfigError

CASES = [["estimator=gumbel"], ["estimator=disarm"], ["estimator=reinforce", "estimator.baseline=ema"],
         ["estimator=st_gumbel", "model.hidden=[200,200]"], ["estimator=rebar"]]
COMMON = ["model=vae", "train.steps=300", "train.log_every=50", "train.eval_every=150",
          "train.checkpoint_every=150", "eval.samples=10", "eval.final_samples=0",
          "diagnostics.every=0", "report.run=false", "device=cuda"]


def curve(folder: str) -> list[float]:
    with open(f"{folder}/metrics.csv", newline="") as fh:
        return [float(r["value"]) for r in csv.DictReader(fh)
                if r["split"] == "train" and r["metric"] == "loss"]


def train(overrides: list[str], out: str) -> tuple[dict, list[float]]:
    from discograd.experiment.config import compose_config
    from discograd.experiment.replicas import ReplicaGroup, member_folder
    from discograd.experiment.train import Trainer
    cfg = compose_config(overrides)
    runner = ReplicaGroup(cfg, out) if int(cfg.train.replicas) > 1 else Trainer(cfg, out)
    try:
        s = runner.fit()
    finally:
        runner.close()
    if isinstance(s, list):                 # a group: its last member
        return s[-1], curve(str(member_folder(out, int(cfg.seed) + len(s) - 1)))
    return s, curve(out)


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_check: no CUDA device here; nothing checked")
        return 2
    bad = 0
    for case in CASES:
        for replicas in (1, 4):
            ov = [*COMMON, *case, f"train.replicas={replicas}"]
            row = {"case": " ".join(case), "replicas": replicas}
            try:
                with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                    se, ce = train(ov, a)
                    sg, cg = train([*ov, "train.cuda_graphs=true"], b)
                diff = max(abs(x - y) / max(1.0, abs(x)) for x, y in zip(ce, cg))
                fdiff = max(abs(se["final"][k] - sg["final"][k]) / max(1.0, abs(se["final"][k]))
                            for k in se["final"])
                row.update({"curve_rel_diff": diff, "final_rel_diff": fdiff,
                            "status": [se["status"], sg["status"]],
                            "ok": len(ce) == len(cg) and diff < 1e-3 and fdiff < 1e-3})
            except ConfigError as e:      # refused before any work, as documented (rebar x 4)
                row.update({"ok": True, "refused": str(e)[:200]})
            except Exception as e:  # noqa: BLE001 - reported per case
                row.update({"ok": False, "error": repr(e)[:300]})
            bad += not row["ok"]
            print(json.dumps(row), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
