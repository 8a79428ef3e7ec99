"""Hydra callbacks (``hydra.callbacks`` in configs/config.yaml)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("discograd")


class SweepReport(Callback):
    """When the last job of a multirun has ended, write the sweep's report (``python -m analysis
    SWEEP_DIR``: SWEEP_DIR/analysis/report.md, tables and figures); ``report.sweep=false`` turns
    it off."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not bool(config.get("report", {}).get("sweep", True)):
            return
        from .train import write_report
        write_report(Path(config.hydra.sweep.dir))
