"""Hydra callbacks (``hydra.callbacks`` in configs/config.yaml): the report of a finished single
run (:class:`RunReport`) and of a finished sweep (:class:`SweepReport`). They live here, with the
analysis they run, so that the training harness (discograd/experiment) never imports it."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from discograd.files import in_use

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
    from .runs import error_line, find_runs, read_summary      # pandas: only at the end
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


def write_report(folder: Path) -> None:
    """``python -m analysis FOLDER``: report.md, tables and figures in FOLDER/analysis. A report
    that fails is logged, never fatal: the runs' own files are already complete."""
    t0 = time.perf_counter()
    try:
        from .report import make_report      # matplotlib and pandas: only when a report is due
        path = make_report(folder)
    except Exception as e:  # noqa: BLE001 - the run is done; the report is a convenience
        log.warning("could not write the report of %s (%r); run python -m analysis %s", folder, e,
                    folder)
        return
    log.info("report %s (%.1f s)", path, time.perf_counter() - t0)


class RunReport(Callback):
    """When a single run's job has returned (completed, or diverged), write its report into its
    folder (``report.run=false`` turns it off). A job that failed or was refused, or a sweep's job
    (the sweep has one report), gets none."""

    def on_run_end(self, config: DictConfig, job_return: JobReturn | None = None, **kwargs) -> None:
        if job_return is None or job_return.status != JobStatus.COMPLETED:
            return
        cfg = job_return.cfg if job_return.cfg is not None else config
        if not bool(cfg.get("report", {}).get("run", True)):
            return
        # the run's folder, or a replica group's (its members' folders inside)
        write_report(Path(job_return.hydra_cfg.hydra.runtime.output_dir))


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
        write_report(folder)
    SWEEP["incomplete"] = [o for o in job_outcomes(folder) if o[1] != "completed"]
