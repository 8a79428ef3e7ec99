"""``python -m analysis.final_bound PATH [--samples K] [--selected]``: the expensive test bound,
after training, for the runs that need it (the second phase of a sweep; README, "Comparisons").

A sweep over a grid can train with ``eval.final_samples=0`` (cheap validation during training,
no K-sample test bound at the end) and then evaluate the K-sample test bound only for the runs the
validation selection keeps (``--selected``: per model and estimator, every seed of the grid point
the results table selects) or for every completed run under PATH. Each run's numbers are exactly
those the run would have written with ``eval.final_samples=K``: the final model (checkpoint.pt)
and the best validation step's model (best.pt) are evaluated on test with the evaluation stream of
their step, after the same ``eval.samples`` draws; the final model's bound is logged to
metrics.csv at its step and both go into summary.json (``final``, ``best``), which the tables read.
A run that has them already is skipped, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from discograd.experiment.build import build_data, build_model, pick_device
from discograd.experiment.config import plain
from discograd.experiment.evaluation import Evaluator
from discograd.experiment.logbook import MetricsLog
from discograd.experiment.shrink import SHRINK_ENV, shrink_steps
from discograd.files import BEST, CHECKPOINT, read_checkpoint, write_json
from .runs import collect, find_runs, grid_keys, read_summary
from .tables import _setting, select_settings, which_model


def selected_folders(path: Path) -> list[Path]:
    """The completed runs of the grid points that the validation selection keeps."""
    runs = collect(path).runs
    keys = grid_keys(runs)
    chosen = select_settings(runs, keys, which_model(runs, "best"))
    keep = []
    for _, row in runs[runs.status == "completed"].iterrows():
        pick = chosen.get((row["model.name"], row["label"]), {}).get("setting")
        if pick is not None and _setting(row, keys) == pick:
            keep.append(Path(row["run"]))
    return keep


def bound_of_run(folder: Path, samples: int, device: torch.device, cache: dict) -> dict | None:
    """Add the ``samples``-sample test bound of the final and the best model to a completed run;
    returns what was added (None: nothing to do)."""
    summary = read_summary(folder)
    key = f"test/bound_{samples}"
    if summary.get("status") != "completed" or key in summary.get("final", {}):
        return None
    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    data_key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
    if data_key not in cache:
        cache[data_key] = build_data(cfg.data, device)
    data = cache[data_key]
    model = build_model(cfg)
    if not model.needs_data:
        raise ValueError(f"{folder}: model '{model.name}' has no test images to bound")
    model.to(device)
    evaluator = Evaluator(model, lambda split: data.full(split), device, int(cfg.seed), folder, None)
    draws = [int(cfg.eval.samples), samples]
    added = {}
    final, _ = read_checkpoint(folder / CHECKPOINT, device)
    step = int(summary["step"])
    if final is None or int(final["step"]) != step:
        raise ValueError(f"{folder / CHECKPOINT} does not hold the final model of step {step}")
    model.load_state_dict(final["model"])
    value = evaluator.evaluate("test", draws, step)[f"bound_{samples}"]
    summary["final"][key] = added["final"] = value
    log = MetricsLog(folder / "metrics.csv")
    try:
        epoch = _last_epoch(folder / "metrics.csv", step)
        log.log(step, epoch, float(summary["timings"]["elapsed_s"]), "test", {f"bound_{samples}": value})
    finally:
        log.close()
    best = summary.get("best")
    if best:
        if int(best["step"]) == step:
            best[key] = value
        else:
            kept, _ = read_checkpoint(folder / BEST, device)
            model.load_state_dict(kept["model"])
            best[key] = evaluator.evaluate("test", draws, int(best["step"]))[f"bound_{samples}"]
        added["best"] = best[key]
    summary["deferred"] = {**summary.get("deferred", {}), key: "analysis.final_bound"}
    write_json(folder / "summary.json", summary)
    return added


def _last_epoch(path: Path, step: int) -> int:
    import csv
    with open(path, newline="") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh) if int(r["step"]) == step]
    return max(epochs, default=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.final_bound", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="a run folder, a sweep, or a folder of sweeps")
    ap.add_argument("--samples", type=int, default=1000, help="importance samples K (default 1000)")
    ap.add_argument("--selected", action="store_true",
                    help="only the runs of the grid points the validation selection keeps")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a = ap.parse_args(argv)
    if a.samples < 1:
        print(f"final_bound: --samples {a.samples} is invalid: it must be >= 1", file=sys.stderr)
        return 2
    path = Path(a.path)
    if not path.exists():
        print(f"final_bound: {path} does not exist", file=sys.stderr)
        return 2
    if shrink_steps() is not None and a.samples > 4:      # a smoke test, as shrink() caps runs
        print(f"final_bound: {SHRINK_ENV} is set: --samples {a.samples} -> 4 (a smoke test)",
              file=sys.stderr)
        a.samples = 4
    device = pick_device(plain(a.device))
    folders = selected_folders(path) if a.selected else find_runs(path)
    cache: dict = {}
    for folder in folders:
        added = bound_of_run(folder, a.samples, device, cache)
        if added:
            shown = ", ".join(f"{k} model {-v:.2f} nats" for k, v in added.items())
            print(f"{folder}: test -bound_{a.samples}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
