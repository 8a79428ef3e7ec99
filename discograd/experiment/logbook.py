"""The run folder's files (docs/design.md, "Files of one run", a contract).

- ``metrics.csv``: long format ``step,epoch,wall_time,split,metric,value``, flushed as written.
- ``summary.json``: final metrics, status, timings, declared properties, versions.
- ``checkpoint.pt``: state dicts and plain types, written atomically (temp file + rename).
On resume, rows after the checkpoint's step are dropped so the log has no duplicates.
Writing files (one mode, atomic writes, checkpoints, the folder lock) is discograd.files.
"""
from __future__ import annotations

import contextlib
import csv
import io
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable

import torch

from discograd.diagnostics import GRAD_STATS_HEADER
from discograd.files import atomic_write

METRICS_HEADER = ["step", "epoch", "wall_time", "split", "metric", "value"]


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
        atomic_write(path, buf.getvalue().encode())
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


@contextlib.contextmanager
def open_logs(out: Path, tensorboard: bool, grads: bool, bar: dict | None = None):
    """The open logs of a session: ``metrics`` (metrics.csv), ``grads`` (grad_stats.csv, when the
    run probes; else None) and ``bar`` (a tqdm progress bar made with the arguments ``bar``; else
    None), closed at the end."""
    logs = SimpleNamespace(bar=None, grads=None,
                           metrics=MetricsLog(Path(out) / "metrics.csv", tensorboard=tensorboard))
    try:
        if grads:
            logs.grads = CSVLog(Path(out) / "grad_stats.csv", GRAD_STATS_HEADER)
        if bar is not None:
            from tqdm import tqdm        # only on a terminal
            logs.bar = tqdm(**bar)
        yield logs
    finally:
        logs.metrics.close()
        if logs.grads is not None:
            logs.grads.close()
        if logs.bar is not None:
            logs.bar.close()


def versions() -> dict[str, str]:
    import hydra
    import numpy
    import omegaconf
    return {"python": platform.python_version(), "torch": torch.__version__,
            "hydra": hydra.__version__, "omegaconf": omegaconf.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}
