"""The task Hydra runs (discograd/cli.py): one job, a single run or a replica group, from its
config to its summary, and every way it can stop (experiment/failures.py).

The report of a finished run is written by a Hydra callback (discograd/analysis/callbacks.py,
``hydra.callbacks`` in configs/config.yaml), beside the sweep's, so this package never imports
the analysis.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from discograd.errors import EXIT_DIVERGED, ConfigError
from .config import plain
from .failures import HeldFileLogs, stopped
from .shrink import SHRINK_ENV, shrink
from .replicas import ReplicaGroup
from .train import Trainer

log = logging.getLogger("discograd")

# The exit code this process's single run asks for once Hydra has returned (discograd/cli.py):
# EXIT_DIVERGED after a divergence (the report is written first, by the callback).
OUTCOME: dict = {}


def hydra_entry(cfg: DictConfig):
    """Run the job of ``cfg`` in Hydra's job context; returns the test main metric (the mean over
    the members of a replica group). In a sweep, a job that is refused or fails says so in one
    line and in its folder (summary.json, run.log) and returns: the other jobs go on, and the
    sweep's report lists it."""
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    launcher = str(OmegaConf.select(hc, "launcher._target_", default="") or "")
    if "joblib" in launcher.lower():
        # parallel jobs on one machine: one intra-op thread each, so n_jobs processes do not
        # oversubscribe the cores (the speed of a joblib sweep comes from running jobs side by side)
        torch.set_num_threads(1)
    held = HeldFileLogs()            # run.log may be another run's until the folder is ours
    shrunk = shrink(cfg)
    if shrunk:
        log.warning("%s is set: a smoke test, not a result (%s)", SHRINK_ENV, "; ".join(shrunk))
    progress = plain(cfg.train.progress)
    interactive = progress == "bar" or (progress == "auto" and not sweep and sys.stderr.isatty())
    hydra_files = {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
                   "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
                   "overrides.yaml": OmegaConf.to_yaml(hc.overrides.task)}
    job = f"job {hc.job.num}: " if sweep else ""
    group = int(cfg.train.replicas) > 1
    try:
        runner = ReplicaGroup(cfg, out, hydra_files=hydra_files) if group else \
            Trainer(cfg, out, interactive=interactive, hydra_files=hydra_files)
    except Exception as e:
        held.release(keep=not isinstance(e, ConfigError))     # a refusal leaves run.log alone
        return stopped(e, sweep, out, job)   # refused, or e.g. the data could not be read
    held.release(keep=True)
    try:
        summaries = runner.fit() if group else [runner.fit()]
    except Exception as e:
        # a message and its exit code, or a traceback; in a sweep, the job is listed as failed
        return stopped(e, sweep, out, job, need=runner.checkpoint_bytes())
    finally:
        runner.close()
    members = runner.members if group else [runner]
    for m, s in zip(members, summaries):
        log.info("%s%s; run folder %s", m.tag, headline(s), m.out)
    if any(s["status"] == "diverged" for s in summaries) and not sweep:
        OUTCOME["exit"] = EXIT_DIVERGED
    values = [s["final"].get(f"test/{members[0].model.main_metric}") for s in summaries]
    if not group:
        return values[0]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def headline(summary: dict) -> str:
    """The run's result in one line: its status and its test metrics (bounds as positive nats)."""
    f = summary["final"]
    parts = [f"status {summary['status']} after {summary['step']} steps"]
    for k in sorted(f):
        if k.startswith("test/"):
            v = f[k]
            name = k[5:]
            if name == "elbo" or name.startswith("bound_"):
                parts.append(f"test -{name} {-v:.2f} nats")
            elif name != "loss":
                parts.append(f"test {name} {v:.5g}")
    return "; ".join(parts)
