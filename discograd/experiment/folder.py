"""The run folder: held by one process at a time, holding one run, resumable from its checkpoints
(README, "Resuming").

:class:`RunFolder` claims the folder (its lock; a second process is refused or waits), refuses a
folder that holds another run (a different config fingerprint) or whose checkpoints all fail to
read, and picks the checkpoint a rerun resumes from. It reads nothing heavy: it runs before the
model and the data are built.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from discograd.errors import ConfigError
from discograd.files import CHECKPOINT, DAMAGED, PREVIOUS, RunLock, atomic_write, read_checkpoint
from .config import MISSING_VALUE, RESUMABLE_KEYS, config_diff, fingerprint, plain, run_defining
from .logbook import CSVLog

log = logging.getLogger("discograd")
RUN_FILES = (CHECKPOINT, PREVIOUS, "summary.json", "metrics.csv")   # what makes a folder a run's


class FolderInUse(ConfigError):
    """Another process holds the run folder (exit code 75, EX_TEMPFAIL of sysexits.h: a
    temporary condition, try again later)."""


def check_writable(folder: Path) -> None:
    """Fail at start, not at the first checkpoint, when the run folder cannot be written."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to the run folder {folder} ({e.strerror}); choose another "
                          "with hydra.run.dir=... (hydra.sweep.dir=... for sweeps)") from e


def write_hydra_files(out: Path, files: dict[str, str]) -> None:
    """.hydra/config.yaml, hydra.yaml, overrides.yaml (Hydra's own content and names; Hydra
    itself writes none: configs/config.yaml sets hydra.output_subdir=null)."""
    folder = out / ".hydra"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        atomic_write(folder / name, text.encode())


def holds_a_run(out: Path) -> bool:
    return any((out / n).exists() for n in RUN_FILES)


class RunFolder:
    """The folder ``out`` of the run configured by ``cfg``. :meth:`claim` holds it; afterwards
    ``fingerprint`` / ``fingerprinted`` are the config's, ``fresh`` says whether the folder held
    nothing of a run, and :meth:`take_resume` hands over the checkpoint to resume from."""

    def __init__(self, out: Path, cfg):
        self.out, self.cfg = Path(out), cfg
        self.out.mkdir(parents=True, exist_ok=True)
        check_writable(self.out)
        self.lock = RunLock(self.out)
        self.fresh = True
        self._resume_from: tuple[Path, dict] | None = None

    def release(self) -> None:
        """Let go of the folder (the end of the run; also at process exit)."""
        self.lock.release()

    def claim(self) -> None:
        """Take the folder's lock, then refuse a folder that holds another run or whose
        checkpoints all fail to read; pick the checkpoint to resume from."""
        cfg, out = self.cfg, self.out
        if not self.lock.acquire(wait=False):
            holder = self.lock.describe_holder()
            if not bool(cfg.train.wait):
                raise FolderInUse(
                    f"the run folder {out} is in use by {holder}; one process writes a run folder "
                    "at a time. Wait for it to end, rerun with train.wait=true to wait for it, or "
                    "use another folder (hydra.run.dir=...)")
            log.info("run folder %s is in use by %s; waiting for it to end (train.wait=true)",
                     out, holder)
            self.lock.acquire(wait=True)
            log.info("run folder %s is free; going on", out)
        if self.lock.removed:
            log.warning("removed %d temp file(s) a killed writer left in %s: %s", len(self.lock.removed),
                        out, ", ".join(p.name for p in self.lock.removed))
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.fingerprint, self.fingerprinted = fingerprint(resolved)
        held = [n for n in RUN_FILES if (out / n).exists()]
        if held == ["summary.json"] and (self.read_summary() or {}).get("status") == "refused":
            held = []                     # a sweep job refused here before: nothing was run
        self.fresh = not held
        if plain(cfg.train.resume) == "never":
            if held:
                raise ConfigError(f"train.resume=never but the run folder {out} already holds a run "
                                  f"({', '.join(held)}); use a new folder (hydra.run.dir=...) or "
                                  "train.resume=auto")
            return
        state, path, unreadable = None, None, []
        for p in (out / CHECKPOINT, out / PREVIOUS):
            if p.exists():
                state, why = read_checkpoint(p)
                if state is not None:
                    path = p
                    break
                unreadable.append((p, why))
        if state is None and unreadable:
            why = dict(unreadable)
            raise ConfigError(
                "cannot resume the run in " + str(out) + ": "
                + "; ".join(f"{p.name} cannot be read ({why[p]})" if p in why else
                            f"there is no {p.name}" for p in (out / CHECKPOINT, out / PREVIOUS))
                + ". Either restore a readable checkpoint.pt, run in a new folder "
                "(hydra.run.dir=...), or start this folder over: delete its checkpoint*.pt, "
                "metrics.csv, grad_stats.csv and summary.json, then rerun")
        if state is not None:
            # the full config, where kept (every checkpoint has it), so that today's list of
            # resumable keys applies to both sides
            recorded = fingerprint(state["config"])[1] if "config" in state \
                else state.get("fingerprinted_config", {})
            self.refuse_another_run(recorded, f"{path.name} (step {int(state['step'])})")
            self._resume_from = (path, state)
        else:
            summary = self.read_summary()
            if summary and summary.get("fingerprinted_config") is not None:
                self.refuse_another_run(summary["fingerprinted_config"], "summary.json")
        if unreadable and path is not None:   # fall back to the previous checkpoint
            step = int(state["step"])
            last = last_logged_step(out / "metrics.csv")
            redo = f"steps {step + 1}..{last} will be recomputed" if last > step else \
                f"training goes on from step {step}"
            p, why = unreadable[0]
            os.replace(p, out / DAMAGED)
            log.warning("%s cannot be read (%s; kept as %s); resuming from %s at step %d: %s",
                        p.name, why, DAMAGED, path.name, step, redo)
        elif path is not None and path.name == PREVIOUS:
            log.warning("%s is missing (a checkpoint write was interrupted); resuming from %s at "
                        "step %d", CHECKPOINT, PREVIOUS, int(state["step"]))

    def refuse_another_run(self, recorded: dict, source: str) -> None:
        diff = config_diff(run_defining(recorded), self.fingerprinted)
        # a key on one side only (added or removed by another version of discograd) decides
        # nothing by itself: switching a group changes its name, which both sides have
        if all(MISSING_VALUE in (a, b) for _, a, b in diff):
            return
        diff.sort(key=lambda d: MISSING_VALUE in d[1:])       # keys both sides have first
        shown = [f"  {k}: {_show(a)} -> {_show(b)}" for k, a, b in diff[:30]]
        if len(diff) > 30:
            shown.append(f"  ... and {len(diff) - 30} more")
        raise ConfigError(
            f"the run folder {self.out} holds a run with another configuration: its {source} "
            f"differs from this command in {len(diff)} key(s) (old -> new):\n" + "\n".join(shown)
            + "\nA run folder holds one run. Either run this config in a new folder "
            "(hydra.run.dir=..., or hydra.sweep.dir=... for a sweep), or start it afresh in an empty "
            "folder with train.resume=never; to continue the old run, rerun it with its values. "
            "Keys that may change when resuming: " + ", ".join(RESUMABLE_KEYS))

    def read_summary(self) -> dict | None:
        try:
            return json.loads((self.out / "summary.json").read_text())
        except (OSError, ValueError):
            return None

    def completed(self) -> dict | None:
        """summary.json of a completed run of at least train.steps steps (None otherwise): a
        rerun of it has nothing to do, and never overwrites it."""
        s = self.read_summary()
        if s and s.get("status") == "completed" and int(s.get("step", -1)) >= int(self.cfg.train.steps):
            return s
        return None

    def take_resume(self) -> tuple[Path, dict] | None:
        """(path, state) of the checkpoint to resume from (once), or None; without one, the log
        rows of an earlier attempt killed before its first checkpoint are dropped (this attempt
        rewrites them)."""
        found, self._resume_from = self._resume_from, None
        if found is None:
            dropped = self.truncate_logs(-1)
            if dropped:
                log.warning("no checkpoint in %s: starting at step 0 (%d log rows of an earlier "
                            "attempt dropped)", self.out, dropped)
        return found

    def truncate_logs(self, step: int) -> int:
        """Drop the rows of metrics.csv and grad_stats.csv after ``step``; how many were."""
        return (CSVLog.truncate_after(self.out / "metrics.csv", step)
                + CSVLog.truncate_after(self.out / "grad_stats.csv", step))


def _show(value) -> str:
    return value if value == MISSING_VALUE else json.dumps(value, default=str)


def last_logged_step(path: Path) -> int:
    """The largest step in a CSV log with a ``step`` column (-1 if none)."""
    try:
        with open(path, newline="") as fh:
            return max((int(r["step"]) for r in csv.DictReader(fh) if r.get("step", "").isdigit()),
                       default=-1)
    except OSError:
        return -1
