"""What a run that cannot go on says, and where (README, "Exit codes").

A refused configuration is one message on stderr before any work (exit code 2; 75 when the run
folder is in use), and a refused single run leaves nothing behind. A failure a user can act on
(the data cannot be read, the disk is full, the folder is read-only) is one line naming the file
and what to do, with its exit code; anything else is a bug, reported with its traceback. In a
sweep the job says it in one line and in its folder (summary.json, run.log), and the sweep goes
on.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import sys
import traceback
from pathlib import Path

from discograd.data import DataError
from discograd.errors import EXIT_BUSY, EXIT_DATA, EXIT_INVALID, EXIT_IO, ConfigError
from discograd.files import CHECKPOINT, PREVIOUS, read_checkpoint, write_json
from .folder import FolderInUse, holds_a_run

log = logging.getLogger("discograd")


def log_to_files(level: int, message: str, *args) -> None:
    """Log a record to the run's log file only (run.log), not to the console: the console gets
    the same message once, on stderr, from the caller."""
    record = log.makeRecord(log.name, level, __file__, 0, message, args, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class HeldFileLogs:
    """Hold back the records meant for the run's log files (Hydra's run.log) until the run owns
    its folder: a process refused there (the folder is in use, or holds another run) must not
    write into that run's log. ``release(keep)`` writes the held records (keep) or drops them."""

    def __init__(self):
        self.pairs = []
        for lg in {id(x): x for x in (logging.getLogger(), log)}.values():
            for h in list(lg.handlers):
                if isinstance(h, logging.FileHandler):
                    mh = logging.handlers.MemoryHandler(1 << 30, flushLevel=logging.CRITICAL + 1)
                    mh.setLevel(h.level)
                    mh.setFormatter(h.formatter)
                    lg.removeHandler(h)
                    lg.addHandler(mh)
                    self.pairs.append((lg, h, mh))

    def release(self, keep: bool) -> None:
        for lg, h, mh in self.pairs:
            lg.removeHandler(mh)
            lg.addHandler(h)
            if keep:
                mh.setTarget(h)
                mh.flush()
            mh.close()
        self.pairs = []


def refused(e: ConfigError, sweep: bool, out: Path, job: str = ""):
    """A refused configuration, said once on stderr: exit code 2 (75: the run folder is in use).
    A refusal writes nothing into a folder that holds a run (its run.log is that run's), and a
    single run leaves no folder made for it alone (:func:`_remove_fresh`). In a sweep the job
    returns instead, and its fresh folder records the refusal in summary.json (status
    ``refused``) and run.log, for the sweep's report."""
    what, code = ("run folder in use", EXIT_BUSY) if isinstance(e, FolderInUse) else \
        ("invalid configuration", EXIT_INVALID)
    print(f"discograd: {job}{what}: {e}", file=sys.stderr, flush=True)
    fresh = not isinstance(e, FolderInUse) and not holds_a_run(out)
    if not sweep:
        if fresh:
            _remove_fresh(out)
        sys.exit(code)
    if fresh and (out / ".hydra").exists():
        log_to_files(logging.ERROR, "%s: %s", what, e)
        write_json(out / "summary.json", {"status": "refused", "error": {"message": str(e)}})
    return None


def _remove_fresh(out: Path) -> None:
    """Remove what a refused single run made in a folder that held nothing before it: Hydra's
    run.log, the lock files and .hydra/; then the folder itself if that left it empty (a folder
    with anything else in it is the user's, and stays)."""
    for h in logging.getLogger().handlers + log.handlers:       # run.log is not written again
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == out.resolve():
            h.close()
            for lg in (logging.getLogger(), log):
                if h in lg.handlers:
                    lg.removeHandler(h)
    for name in ("run.log", ".lock", ".lock.json"):
        with contextlib.suppress(OSError):
            (out / name).unlink()
    hydra = out / ".hydra"
    if hydra.is_dir() and {p.name for p in hydra.iterdir()} <= {"config.yaml", "hydra.yaml",
                                                               "overrides.yaml"}:
        for p in hydra.iterdir():
            p.unlink()
        hydra.rmdir()
    with contextlib.suppress(OSError):
        out.rmdir()                            # only when empty


def stopped(e: Exception, sweep: bool, out: Path, job: str, need: int = 0):
    """A run that could not go on: a ConfigError is a refusal (:func:`refused`); any other error
    ends a single run with :func:`fail` (``need``: the bytes a checkpoint takes, for a full
    disk's message) and is recorded as a failed job in a sweep."""
    if isinstance(e, ConfigError):
        return refused(e, sweep, out, job)
    if not sweep:
        fail(e, out, need)
    return job_failed(e, out, job)


def _chain(e: BaseException):
    """``e`` and the exceptions it was raised from or while handling (torch wraps an OSError of
    a full disk in a RuntimeError, for instance)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def expected_failure(e: BaseException, out: Path, need: int = 0) -> tuple[int, str] | None:
    """(exit code, message) for a failure a user can act on, None for a bug. The message names
    the file or folder, what happened and what to do (README, "Exit codes")."""
    for x in _chain(e):
        if isinstance(x, DataError):
            return EXIT_DATA, f"the data could not be read: {x}"
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return EXIT_IO, _disk_full(out, x, need)
        if isinstance(x, OSError) and x.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = x.filename or out
            return EXIT_IO, (f"cannot write {where} ({x.strerror}): a run needs a writable run "
                             "folder; choose another with hydra.run.dir=DIR (hydra.sweep.dir=DIR "
                             "for a sweep)")
    return None


def _disk_full(out: Path, e: OSError, need: int = 0) -> str:
    """What a full disk means for this run: the folder, the last complete checkpoint (it stays:
    writes are atomic, the half-written temp file is removed), the space a checkpoint takes."""
    state, _ = read_checkpoint(out / CHECKPOINT) if (out / CHECKPOINT).exists() else (None, None)
    size = max([(out / n).stat().st_size for n in (CHECKPOINT, PREVIOUS) if (out / n).exists()],
               default=need)
    where = f" writing {Path(e.filename).name}" if e.filename else ""
    kept = (f"the last complete checkpoint (step {state['step']}) is intact" if state
            else "no checkpoint was complete yet")
    need = f" (a checkpoint takes {size / 2**20:.1f} MiB; two are kept)" if size else ""
    return (f"no space left on the device holding {out}{where}: {kept}, nothing half-written "
            f"remains. Free space there{need} and rerun the same command: it resumes.")


def fail(e: BaseException, out: Path, need: int = 0) -> None:
    """End a single run that failed: an expected failure is one line on stderr (and in run.log,
    when there is room) and its exit code; anything else is a bug: re-raised for its traceback,
    after a line that says so."""
    known = expected_failure(e, out, need)
    if known is None:
        print(f"discograd: an unexpected error, which is a bug: please report it with the "
              f"traceback below and {out / 'run.log'}", file=sys.stderr, flush=True)
        raise e
    code, message = known
    with contextlib.suppress(OSError):
        log_to_files(logging.ERROR, "%s", message)
    print(f"discograd: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def job_failed(e: BaseException, out: Path, job: str):
    """A sweep's job that failed at run time: the traceback goes to its run.log, one line to
    stderr; the sweep goes on (its report lists the job with this error)."""
    known = expected_failure(e, out)
    message = known[1] if known else repr(e)
    with contextlib.suppress(OSError):
        log_to_files(logging.ERROR, "the run failed: %s\n%s", message,
                     "".join(traceback.format_exception(e)))
        if (out / ".hydra").exists() and not (out / "summary.json").exists():
            write_json(out / "summary.json", {"status": "failed", "error": {"message": message}})
    print(f"discograd: {job}failed: {message}" + ("" if known else f" (traceback in {out / 'run.log'})"),
          file=sys.stderr, flush=True)
    return None
