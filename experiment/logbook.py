"""The run folder's files (docs/design.md, "Files of one run", a contract).

- ``metrics.csv``: long format ``step,epoch,wall_time,split,metric,value``, flushed as written.
- ``summary.json``: final metrics, status, timings, declared properties, versions.
- ``checkpoint.pt``: state dicts and plain types, written atomically (temp file + rename).
On resume, rows after the checkpoint's step are dropped so the log has no duplicates.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

METRICS_HEADER = ["step", "epoch", "wall_time", "split", "metric", "value"]


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file in the same folder, fsync, then rename over path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    atomic_write_bytes(path, lambda fh: fh.write(data))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path, device) -> dict:
    return torch.load(path, map_location=device, weights_only=True)


class CSVLog:
    """Append-only CSV with a fixed header; each ``write`` is flushed to the OS."""

    def __init__(self, path: Path, header: list[str]):
        self.path = Path(path)
        self.header = header
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="")
        self._w = csv.writer(self._fh)
        if new:
            self._w.writerow(header)
            self._fh.flush()

    def write(self, rows: Iterable[Iterable[Any]]) -> None:
        self._w.writerows(rows)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    @staticmethod
    def truncate_after(path: Path, step: int) -> int:
        """Drop rows whose ``step`` column exceeds ``step`` (atomic rewrite); returns rows dropped."""
        path = Path(path)
        if not path.exists():
            return 0
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return 0
        header, body = rows[0], rows[1:]
        i = header.index("step")
        keep = [r for r in body if len(r) == len(header) and int(r[i]) <= step]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(keep)
        data = buf.getvalue().encode()
        atomic_write_bytes(path, lambda fh: fh.write(data))
        return len(body) - len(keep)


class MetricsLog(CSVLog):
    """metrics.csv; with ``tensorboard=True`` every row also goes to TensorBoard event files in
    the same folder (tag ``split/metric``), for watching runs live."""

    def __init__(self, path: Path, tensorboard: bool = False):
        super().__init__(path, METRICS_HEADER)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(Path(path).parent), flush_secs=10)

    def log(self, step: int, epoch: int, wall_time: float, split: str, values: dict[str, float]) -> None:
        self.write([step, epoch, f"{wall_time:.3f}", split, k, repr(float(v))] for k, v in values.items())
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), step)

    def close(self) -> None:
        super().close()
        if self._tb is not None:
            self._tb.close()


def versions() -> dict[str, str]:
    import hydra
    import numpy
    import omegaconf
    return {"python": platform.python_version(), "torch": torch.__version__,
            "hydra": hydra.__version__, "omegaconf": omegaconf.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}
