"""Writing files safely: the run folder's and the data cache's (docs/design.md, "Files of one run").

- One mode: every file is created with 0666 minus the umask (what ``open(path, "w")`` gives), so
  whoever may read a run's metrics.csv may also read its summary.json and checkpoint.pt.
- :func:`atomic_write`: a temp file in the same folder, fsync, rename over the target; a reader
  sees the old file or the new one, never a part.
- :func:`lock`: ``filelock.FileLock`` (flock on POSIX: released by the kernel when its holder
  dies, so a killed process leaves no stale lock).
- Checkpoints: :func:`save_checkpoint` reads the new file back (CRCs and torch.load) before it
  replaces the current one, which it keeps as ``checkpoint.prev.pt``; :func:`read_checkpoint`
  says why a file cannot be read instead of raising.
- :class:`RunLock`: one writer per run folder, with the holder's pid and host in ``.lock.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import filelock
import torch

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"          # the checkpoint before the current one
DAMAGED = "checkpoint.damaged.pt"        # an unreadable checkpoint.pt, set aside on resume
BEST = "best.pt"                         # the best validation step's model (eval.select)
LOCK = ".lock"
LOCK_INFO = ".lock.json"


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], Any],
                 before_replace: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` (bytes, or a function writing to a binary file object) to ``path``: a temp
    file in the same folder with mode 0666 minus the umask, fsync, ``before_replace(temp path)``
    if given (it raises to keep the old file), rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the umask applies
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")     # atomic_write's temp files


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files a writer killed mid-write left in ``folder`` (SIGKILL or a power
    cut during :func:`atomic_write`: megabytes per checkpoint). Only the holder of the folder's
    lock writes there, so every temp file of another process is stale; call it holding the lock."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        m = TEMP.match(p.name)
        if m and int(m.group(1)) != os.getpid():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def lock(path: str | os.PathLike) -> filelock.FileLock:
    """An exclusive lock on the file ``path`` (created if needed): ``with lock(p): ...``."""
    return filelock.FileLock(str(path))


# --- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict, keep_previous: bool = True) -> None:
    """Write ``state`` to ``path`` atomically, after reading the new file back; the checkpoint it
    replaces becomes ``checkpoint.prev.pt`` (``keep_previous``)."""
    path = Path(path)

    def verify(tmp: Path) -> None:
        back, why = read_checkpoint(tmp)
        if back is None:
            raise OSError(f"the checkpoint just written does not read back ({why}); {path} is "
                          "left as it was")

    def verified(tmp: Path) -> None:
        verify(tmp)
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS))
    atomic_write(path, lambda fh: torch.save(state, fh), before_replace=verified)


def read_checkpoint(path: str | os.PathLike, device="cpu") -> tuple[dict | None, str | None]:
    """(state, None), or (None, why it cannot be read) for a missing, truncated or garbled file.
    Every member's CRC is checked first: torch.load alone reads flipped bytes without a word."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return None, f"truncated or overwritten: {e}"
    if bad is not None:
        return None, f"damaged: {bad} fails its CRC check"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, pickle and OS errors alike mean "unreadable"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return None, f"{type(e).__name__}: {first}" if first else type(e).__name__
    if not isinstance(state, dict) or "step" not in state:
        return None, "not a discograd checkpoint (no step)"
    return state, None


def load_checkpoint(path: str | os.PathLike, device) -> dict:
    return torch.load(path, map_location=device, weights_only=True)


# --- one writer per run folder ----------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder (``folder/.lock``), held for the life of a run.

    The holder writes its pid, host and start time to ``.lock.json``; that file is only believed
    while the lock is actually held (a killed holder's flock is gone, its ``.lock.json`` stays)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.info_path = self.folder / LOCK_INFO
        self._lock = filelock.FileLock(str(self.folder / LOCK))
        self.removed: list[Path] = []            # stale temp files removed on acquiring

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; False if another process holds it and ``wait`` is false."""
        try:
            self._lock.acquire(timeout=-1 if wait else 0)
        except filelock.Timeout:
            return False
        write_json(self.info_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                                    "command": " ".join(sys.argv)})
        self.removed = remove_stale_temps(self.folder)
        return True

    def holder(self, patience: float = 2.0) -> dict | None:
        """The holder's record, or None if it does not show within ``patience`` seconds (it may
        have taken the lock a moment ago and not written it yet). A record of a process that no
        longer runs on this host is stale and ignored."""
        deadline = time.monotonic() + patience
        while True:
            try:
                info = json.loads(self.info_path.read_text())
                if not _gone(info):
                    return info
            except (OSError, ValueError, TypeError, KeyError):
                pass
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def describe_holder(self) -> str:
        info = self.holder()
        if info is None:
            return "another process (not recorded in .lock.json yet)"
        return f"pid {info['pid']} on host {info['host']} (since {info['started']}: {info.get('command', '?')})"

    def release(self) -> None:
        if self._lock.is_locked:
            with contextlib.suppress(FileNotFoundError):
                self.info_path.unlink()              # before the lock: no stale record when clean
            self._lock.release(force=True)


def in_use(folder: str | os.PathLike) -> dict | None:
    """The record (pid, host, started, command) of another process holding ``folder``'s lock
    now, else None (a free folder, or one this process holds)."""
    path = Path(folder) / LOCK
    if not path.exists():
        return None
    probe = filelock.FileLock(str(path))
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return RunLock(folder).holder(patience=0.5) or {"pid": "?", "host": "?"}
    probe.release(force=True)
    return None


def _gone(info: dict) -> bool:
    """The process recorded in ``info`` no longer runs (only knowable on this host)."""
    if info["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:                          # alive, another user's
        return False
    return False
