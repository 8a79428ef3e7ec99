"""Hydra callbacks (``hydra.callbacks`` in configs/config.yaml)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("discograd")

# The sweep of this process, for the command line's exit code (discograd/cli.py): its folder and,
# once it has ended, the jobs that did not complete.
SWEEP: dict = {}


def job_outcomes(sweep_dir: Path) -> list[tuple[str, str, str]]:
    """(job folder relative to the sweep, status, one-line error) of every run folder under the
    sweep: status from summary.json (``missing``: the job never wrote one; it was killed, or its
    launcher failed), error from summary.json or else the last ERROR line of its run.log; a job
    whose folder another process is running now (a second sweep into the same folder) is
    ``running elsewhere``, with that process."""
    from discograd.analysis.runs import error_line, find_runs, read_summary
    from .files import in_use
    out = []
    for folder in find_runs(sweep_dir):
        holder = in_use(folder)
        if holder is not None:
            out.append((str(folder.relative_to(sweep_dir)), RUNNING_ELSEWHERE,
                        f"pid {holder.get('pid')} on host {holder.get('host')}"))
            continue
        s = read_summary(folder)
        out.append((str(folder.relative_to(sweep_dir)), str(s.get("status", "missing")),
                    error_line(folder, s)))
    return out


RUNNING_ELSEWHERE = "running elsewhere"


class SweepReport(Callback):
    """When the last job of a multirun has ended, write the sweep's report (``python -m analysis
    SWEEP_DIR``: SWEEP_DIR/analysis/report.md, tables and figures; ``report.sweep=false`` turns it
    off) and record which jobs did not complete, so that the command exits non-zero
    (discograd/cli.py). The command line writes the report itself when the launcher fails before
    this is called."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        SWEEP.clear()
        SWEEP.update(dir=Path(config.hydra.sweep.dir),
                     report=bool(config.get("report", {}).get("sweep", True)))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        finish_sweep()


def finish_sweep() -> None:
    """Write the report of this process's sweep (once) and record its incomplete jobs."""
    if not SWEEP or SWEEP.get("finished"):
        return
    SWEEP["finished"] = True
    folder = SWEEP["dir"]
    if not folder.exists():
        SWEEP["incomplete"] = []
        return
    if SWEEP["report"]:
        from .train import write_report
        write_report(folder)
    SWEEP["incomplete"] = [o for o in job_outcomes(folder) if o[1] != "completed"]
