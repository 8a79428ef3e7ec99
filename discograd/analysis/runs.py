"""Read run folders (docs/design.md, "Files of one run") into tidy pandas DataFrames.

``collect(path)`` finds every run folder under ``path`` (single runs, multirun sweeps, nested) and
returns three long tables joined on ``run``:

- ``runs``: one row per run: its flattened ``.hydra/config.yaml`` (``estimator.name``, ``seed``,
  ...), ``status`` (from summary.json; ``missing`` when a run never wrote one: killed or still
  running), the final metrics (``final.test/bound_1000``, ...), the metrics at the best validation
  step (``best.step``, ``best.test/bound_1000``, ...; summary.json "best"), timings, and ``label``: the
  estimator's name plus the estimator keys that vary in this collection (e.g.
  ``reinforce baseline=ema``), so variants of one estimator are told apart.
- ``metrics``: metrics.csv of every run, with ``run`` and ``label``.
- ``grad_stats``: grad_stats.csv of every run that has one, with ``run`` and ``label``.
Runs that failed or diverged stay in ``runs`` with their status; nothing is dropped silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

METRICS_COLUMNS = ["step", "epoch", "wall_time", "split", "metric", "value"]


def find_runs(path: str | Path) -> list[Path]:
    """Every run folder under ``path`` (a folder holding ``.hydra/config.yaml``), sorted."""
    path = Path(path)
    return sorted(p.parent.parent for p in path.rglob(".hydra/config.yaml"))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v) if isinstance(v, list) else v
    return out


def read_run(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    """(metrics DataFrame with the run's flattened config as extra columns, summary dict)."""
    folder = Path(folder)
    cfg = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    metrics_path = folder / "metrics.csv"
    df = pd.read_csv(metrics_path) if metrics_path.exists() else pd.DataFrame(columns=METRICS_COLUMNS)
    for k, v in flatten(cfg).items():
        df[k] = v
    df["run"] = str(folder)
    return df, read_summary(folder)


def read_summary(folder: Path) -> dict:
    path = Path(folder) / "summary.json"
    if not path.exists():
        return {"status": "missing"}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"status": "unreadable"}


def error_line(folder: Path, summary: dict) -> str:
    """Why a run did not complete, in one line: summary.json's error message (a divergence, a
    refusal, a failure), else the last ERROR record of its run.log ('' for a completed run)."""
    error = summary.get("error")
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    if not error and summary.get("status") != "completed":
        error = last_error_line(Path(folder) / "run.log")
    return str(error).splitlines()[0] if error else ""


def last_error_line(path: Path) -> str:
    """The message of the last ERROR record of a run.log ('' if none)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "][ERROR] - " in line:
            return line.split("][ERROR] - ", 1)[1]
    return ""


@dataclass
class Collection:
    runs: pd.DataFrame
    metrics: pd.DataFrame
    grad_stats: pd.DataFrame

    def save(self, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("runs", "metrics", "grad_stats"):
            df = getattr(self, name)
            path = out / f"{name}.csv"
            df.to_csv(path, index=False)
            written.append(path)
            try:                               # parquet when an engine is installed
                df.to_parquet(out / f"{name}.parquet", index=False)
                written.append(out / f"{name}.parquet")
            except (ImportError, ValueError):
                pass
        return written


def grid_keys(runs: pd.DataFrame) -> list[str]:
    """The hyperparameters a preset's grid declares (``preset.grid.<key>: [values]`` in the runs'
    configs): selected on validation by the results table, not part of an estimator's label."""
    pre = "preset.grid."
    return sorted(c[len(pre):] for c in runs.columns if c.startswith(pre) and runs[c].notna().any())


def _labels(runs: pd.DataFrame) -> pd.Series:
    """estimator name + the estimator.* keys that vary across runs of that estimator, except the
    keys of a preset's grid (those are selected over, see tables.results_table)."""
    labels = runs["estimator.name"].astype(str).copy()
    skip = set(grid_keys(runs)) | {"estimator.name"}
    est_cols = [c for c in runs.columns if c.startswith("estimator.") and c not in skip]
    for name, group in runs.groupby("estimator.name"):
        varying = [c for c in est_cols if group[c].astype(str).nunique() > 1]
        for i in group.index:
            extra = " ".join(f"{c.split('.', 1)[1]}={group.at[i, c]}" for c in varying)
            labels.at[i] = f"{name} {extra}".strip()
    return labels


def collect(path: str | Path) -> Collection:
    rows, metrics, grads = [], [], []
    for folder in find_runs(path):
        cfg = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        summary = read_summary(folder)
        row = {"run": str(folder), **flatten(cfg), "status": summary.get("status", "missing"),
               "steps_done": summary.get("step")}
        row.update({f"final.{k}": v for k, v in (summary.get("final") or {}).items()})
        row.update({f"best.{k}": v for k, v in (summary.get("best") or {}).items()})
        row.update({f"timings.{k}": v for k, v in (summary.get("timings") or {}).items()})
        if isinstance(summary.get("estimator"), dict) and "evals" in summary["estimator"]:
            row["evals_per_step"] = summary["estimator"]["evals"]     # f evaluations per example
        error = error_line(folder, summary)
        if error:
            row["error"] = error
        rows.append(row)
        if (folder / "metrics.csv").exists():
            m = pd.read_csv(folder / "metrics.csv")
            m["run"] = str(folder)
            metrics.append(m)
        if (folder / "grad_stats.csv").exists():
            g = pd.read_csv(folder / "grad_stats.csv")
            g["run"] = str(folder)
            grads.append(g)
    runs = pd.DataFrame(rows)
    if runs.empty:
        raise FileNotFoundError(f"no run folders (folders with .hydra/config.yaml) under {path}")
    runs["label"] = _labels(runs)
    lab = runs.set_index("run")["label"]
    met = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=METRICS_COLUMNS + ["run"])
    grd = pd.concat(grads, ignore_index=True) if grads else pd.DataFrame(columns=["run"])
    met["label"] = met["run"].map(lab)
    grd["label"] = grd["run"].map(lab) if not grd.empty else pd.Series(dtype=str)
    return Collection(runs, met, grd)
