"""Benchmarks of whole ``run.py`` processes: start-up of a one-step run, a sweep with the basic
launcher against the joblib launcher, and the cost of the default diagnostics and report."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from .common import ROOT, median


def _wall(args: list[str], env=None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall


def startup(device: torch.device, repeats: int = 3) -> list[dict]:
    """Wall time of ``python run.py model=toy train.steps=1`` (a new process each time, the MNIST
    cache warm), against ``python -c 'import torch'`` measured in the same run."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # start-up only: no probe at step 0, no report at the end (both on by default)
        runs = [_wall([sys.executable, "run.py", "model=toy", "train.steps=1", f"device={device.type}",
                       "diagnostics.every=0", "report.run=false", f"hydra.run.dir={tmp}/run{i}"])
                for i in range(repeats + 1)][1:]
    torch_only = [_wall([sys.executable, "-c", "import torch"]) for _ in range(repeats + 1)][1:]
    rows.append({"what": "python run.py model=toy train.steps=1", "seconds": median(runs),
                 "import_torch_s": median(torch_only), "ratio": median(runs) / median(torch_only)})
    return rows


def sweep(overrides: list[str], jobs: int = 2) -> list[dict]:
    """Wall time of one multirun with the basic launcher and with ``hydra/launcher=joblib``."""
    env = dict(os.environ)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in ("basic", "joblib"):
            extra = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if launcher == "joblib" else []
            rows[launcher] = _wall([sys.executable, "run.py", "-m", *overrides, *extra,
                                    f"hydra.sweep.dir={tmp}/{launcher}"], env=env)
    return [{"what": "python run.py -m " + " ".join(overrides), "basic_s": rows["basic"],
             "joblib_s": rows["joblib"], "speedup": rows["basic"] / rows["joblib"]}]


def defaults(device: torch.device, quick: bool = False) -> list[dict]:
    """README command 1's run with its default gradient diagnostics and report, against the same
    run without them: what being on by default costs."""
    steps = ["train.steps=10000"] if quick else []
    walls, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("default", []), ("without", ["diagnostics.every=0", "report.run=false"])):
            folder = f"{tmp}/{name}"
            walls[name] = _wall([sys.executable, "run.py", *steps, *extra, f"device={device.type}",
                                 f"hydra.run.dir={folder}"])
            s = json.loads(open(f"{folder}/summary.json").read())
            log = open(f"{folder}/run.log").read()
            m = re.search(r"report \S+ \(([0-9.]+) s\)", log)
            info[name] = {"diagnostics_s": s["timings"]["diagnostics_s_this_session"],
                          "report_s": float(m.group(1)) if m else 0.0}
    d = info["default"]
    return [{"what": "python run.py " + " ".join(steps), "default_s": walls["default"],
             "without_s": walls["without"], "diagnostics_s": d["diagnostics_s"],
             "report_s": d["report_s"], "diagnostics_share": d["diagnostics_s"] / walls["default"],
             "overhead": walls["default"] / walls["without"] - 1}]
