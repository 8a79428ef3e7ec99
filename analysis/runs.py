"""Read run folders (DESIGN.md, "Files of one run") into tidy pandas DataFrames."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml


def find_runs(path: str | Path) -> list[Path]:
    """Every run folder under ``path`` (single runs, sweep jobs, nested), i.e. every folder that
    holds ``.hydra/config.yaml``, sorted."""
    path = Path(path)
    return sorted(p.parent.parent for p in path.rglob(".hydra/config.yaml"))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_run(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    """(metrics DataFrame with the run's flattened config as extra columns, summary dict).

    The summary is ``{"status": "missing"}`` when the run never wrote one (killed or running)."""
    folder = Path(folder)
    cfg = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    metrics_path = folder / "metrics.csv"
    df = pd.read_csv(metrics_path) if metrics_path.exists() else pd.DataFrame(
        columns=["step", "epoch", "wall_time", "split", "metric", "value"])
    for k, v in _flatten(cfg).items():
        df[k] = str(v) if isinstance(v, list) else v
    df["run"] = str(folder)
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"status": "missing"}
    return df, summary
