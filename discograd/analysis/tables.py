"""The results table: test metrics per model x estimator over seeds, as Markdown, LaTeX and CSV.

What a row shows (docs/design.md, "Results table"):
- **Which model of each run**: ``at="best"`` (default when the runs have it) takes the model of the
  best validation step (summary.json ``best``, ``eval.select``), as ARM and DisARM report;
  ``at="final"`` takes the model after the last step. The table's caption says which.
- **Which hyperparameters**: when the runs come from a grid (a preset's ``preset.grid`` or the keys
  given to ``--select``), every setting of the grid keys is a candidate for each estimator; the
  setting with the best *mean validation metric over seeds* is chosen and its test metrics are
  reported, with the chosen values in the row. Test metrics never enter the choice. A setting with
  a run that did not complete (diverged, failed) is not eligible.
- **Statistics**: mean over seeds with the half-width of a 95 % t confidence interval (``ci95``), the
  standard deviation, n; paired t-tests (same seed = same initialisation and data order) of every
  estimator against the best one on the table's main metric, Holm-corrected; ``vs best`` is
  ``best``, ``≈`` (not distinguishable at alpha = 0.05) or ``worse``/``better`` (analysis.stats).
- ``published``: ``preset.published.<estimator>`` of the runs' preset, with the metric it refers to.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from discograd.models.base import higher_is_better
from .runs import grid_keys
from .stats import compare_with_best, t_interval


def which_model(runs: pd.DataFrame, at: str = "auto") -> str:
    """``best`` or ``final``: auto is best when every completed run has a best-validation record."""
    if at not in ("auto", "best", "final"):
        raise ValueError(f"at={at!r} is invalid; accepted: auto, best, final")
    done = runs[runs.status == "completed"] if "status" in runs else runs
    has_best = "best.step" in done.columns and len(done) and done["best.step"].notna().all()
    if at == "best" and not has_best:
        raise ValueError("at=best: some completed runs have no best-validation record "
                         "(eval.select=none, or a model without a validation split)")
    return "best" if (at == "best" or (at == "auto" and has_best)) else "final"


def metric_columns(runs: pd.DataFrame, at: str = "final") -> list[tuple[str, str, float]]:
    """(column, display name, sign) of the test metrics present: bounds shown as positive nats
    (-bound_K), the ELBO as the loss (-ELBO), everything else as logged."""
    out = []
    pre = f"{at}.test/"
    for c in sorted(c for c in runs.columns if c.startswith(pre)):
        name = c[len(pre):]
        if name == "elbo" or runs[c].isna().all():
            continue
        if name.startswith("bound_"):
            out.append((c, f"test -{name}", -1.0))
        elif name == "loss" and f"{pre}elbo" in runs.columns:
            out.append((c, "test -ELBO", 1.0))
        else:
            out.append((c, f"test {name}", 1.0))
    return out


def main_column(runs: pd.DataFrame, at: str) -> str | None:
    """The metric the significance marks use: the preset's metric (e.g. test/bound_1000) when the
    runs have it, else the largest-K test bound, else accuracy, exact loss or loss."""
    if "preset.metric" in runs.columns:
        named = runs["preset.metric"].dropna().astype(str)
        named = named[named.str.strip() != ""]
        if len(named):
            col = f"{at}.{named.iloc[0].split()[0]}"
            if col in runs.columns and runs[col].notna().any():
                return col
    bounds = [c for c in runs.columns if c.startswith(f"{at}.test/bound_") and runs[c].notna().any()]
    if bounds:
        return max(bounds, key=lambda c: int(c.rsplit("_", 1)[1]))
    for name in ("accuracy", "exact_loss", "loss"):
        if f"{at}.test/{name}" in runs.columns and runs[f"{at}.test/{name}"].notna().any():
            return f"{at}.test/{name}"
    return None


def selection_column(runs: pd.DataFrame, at: str) -> str | None:
    """The validation metric hyperparameters are selected on: the one the runs selected their best
    step with (summary best.metric, e.g. valid/bound_100), else a validation bound, accuracy or
    loss of the final model; None without a validation split."""
    if at == "best" and "best.metric" in runs.columns and runs["best.metric"].notna().any():
        col = f"best.{runs['best.metric'].dropna().iloc[0]}"
        if col in runs.columns:
            return col
    for c in sorted(runs.columns):
        if c.startswith(f"{at}.valid/bound_"):
            return c
    for name in ("accuracy", "elbo", "loss"):
        if f"{at}.valid/{name}" in runs.columns:
            return f"{at}.valid/{name}"
    return None


def _value(v) -> str:
    """A config value as the user wrote it: 1000, not the 1000.0 of a column with gaps."""
    if pd.isna(v):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _setting(row: pd.Series, keys: list[str]) -> tuple:
    return tuple(_value(row.get(k)) for k in keys)


def positive_nats(metric: str) -> bool:
    """Whether ``metric`` (``split/name`` or a bare name) is a bound or an ELBO: the tables show
    those negated, as positive nats."""
    return metric.split("/")[-1].startswith(("bound_", "elbo"))


def _describe(keys: list[str], setting: tuple) -> str:
    return " ".join(f"{k.split('.', 1)[-1] if k.startswith('estimator.') else k}={v}"
                    for k, v in zip(keys, setting) if v != "")


def select_settings(runs: pd.DataFrame, keys: list[str], at: str) -> dict[tuple, dict]:
    """(model, label) -> the selected setting of ``keys``: {"setting", "valid" (mean over seeds of
    the selection column), "tried" (eligible settings), "excluded" (settings with a run that did
    not complete)}. Only the validation column is read."""
    sel = selection_column(runs[runs.status == "completed"], at) if keys else None
    if keys and sel is None:
        raise ValueError(f"selecting {', '.join(keys)} needs a validation metric, and these runs "
                         "have none (a model without a validation split?)")
    out = {}
    for (model, label), g in runs.groupby(["model.name", "label"], sort=True):
        if not keys:
            out[(model, label)] = {"setting": (), "valid": math.nan, "tried": 1, "excluded": 0}
            continue
        better = higher_is_better(sel)
        cands, excluded = [], 0
        for setting, gs in g.groupby(g.apply(lambda r: _setting(r, keys), axis=1), sort=True):
            vals = gs[sel] if sel in gs else pd.Series(dtype=float)
            if (gs.status != "completed").any() or vals.isna().any():
                excluded += 1
                continue
            cands.append((setting, float(vals.mean())))
        if not cands:
            out[(model, label)] = {"setting": None, "valid": math.nan, "tried": 0, "excluded": excluded}
            continue
        setting, value = (max if better else min)(cands, key=lambda c: c[1])
        out[(model, label)] = {"setting": setting, "valid": value, "tried": len(cands),
                               "excluded": excluded, "metric": sel}
    return out


def results_table(runs: pd.DataFrame, at: str = "auto", keys: list[str] | None = None,
                  level: float = 0.95, alpha: float = 0.05) -> pd.DataFrame:
    """One row per (model, estimator label): see the module docstring. ``keys``: the grid keys to
    select over (default: the runs' ``preset.grid``)."""
    at = which_model(runs, at)
    keys = grid_keys(runs) if keys is None else list(keys)
    missing = [k for k in keys if k not in runs.columns]
    if missing:
        raise ValueError(f"--select {', '.join(missing)}: not a config key of these runs")
    chosen = select_settings(runs, keys, at)
    done = runs[runs.status == "completed"]
    rows = []
    for (model, label), g in runs.groupby(["model.name", "label"], sort=True):
        pick = chosen[(model, label)]
        if pick["setting"] is None:
            rows.append({"model": model, "estimator": label, "n": 0, "at": at,
                         "setting": "no eligible setting", "settings": pick["excluded"]})
            continue
        g = done[(done["model.name"] == model) & (done["label"] == label)]
        if keys:
            g = g[g.apply(lambda r: _setting(r, keys) == pick["setting"], axis=1)]
        row = {"model": model, "estimator": label, "n": len(g), "at": at,
               "setting": _describe(keys, pick["setting"]) if keys else "",
               "settings": pick["tried"]}
        if keys:
            # shown as the table shows its metrics: bounds and ELBOs as positive nats
            sign = -1.0 if positive_nats(pick["metric"]) else 1.0
            row["selected on"] = (f"{'-' if sign < 0 else ''}{pick['metric']} (mean over seeds"
                                  + (", positive nats)" if sign < 0 else ")"))
            row["valid"] = sign * pick["valid"]
        for col, name, sign in metric_columns(done, at):
            v = sign * g[col].dropna()
            if v.empty:
                continue
            mean, half, _ = t_interval(list(v), level)
            row[f"{name} mean"] = mean
            row[f"{name} std"] = v.std(ddof=1) if len(v) > 1 else 0.0
            row[f"{name} ci95"] = half
        if at == "best" and "best.step" in g:
            row["best step"] = g["best.step"].median()
        est = label.split(" ")[0]
        pub = f"preset.published.{est}"
        if pub in g.columns and g[pub].notna().any():
            row["published"] = g[pub].dropna().iloc[0]
            named = g["preset.metric"].dropna().astype(str) if "preset.metric" in g.columns else []
            row["published metric"] = named.iloc[0].split()[0] if len(named) and named.iloc[0].strip() else ""
        if "evals_per_step" in g.columns and g["evals_per_step"].notna().any():
            row["f-evals/step"] = g["evals_per_step"].max()        # the cost per step, per example
        if "timings.steps_per_s" in g.columns:
            row["steps/s"] = g["timings.steps_per_s"].mean()
        row["_runs"] = g
        rows.append(row)
    _mark(rows, done, at, alpha)
    for r in rows:
        r.pop("_runs", None)
    return pd.DataFrame(rows)


def _mark(rows: list[dict], done: pd.DataFrame, at: str, alpha: float) -> None:
    """``vs best`` and ``p (Holm)`` on the main metric, per model, paired by seed."""
    col = main_column(done, at)
    if col is None:
        return
    for model in {r["model"] for r in rows}:
        mine = [r for r in rows if r["model"] == model and "_runs" in r]
        if len(mine) < 2:          # nothing to compare with: no "best" of one
            continue
        per_seed = {r["estimator"]: {int(s): float(v) for s, v in zip(r["_runs"]["seed"], r["_runs"][col])
                                     if not pd.isna(v)} for r in mine}
        per_seed = {k: v for k, v in per_seed.items() if v}
        marks = compare_with_best(per_seed, higher_is_better(col), alpha)
        for r in mine:
            m = marks.get(r["estimator"])
            if m is None:
                continue
            r["vs best"] = "best" if m["best"] else ("" if m["tie"] is None else "≈" if m["tie"]
                                                     else "worse")
            r["p (Holm)"] = m.get("p_holm", math.nan)
            r["main metric"] = col.split(".", 1)[1]


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}g}"
    return str(v)


def _decimals(half) -> int | None:
    """Decimals that show a mean to the precision of its interval (two significant digits of
    the half-width); None without a finite interval."""
    if half is None or pd.isna(half) or math.isinf(half) or half <= 0:
        return None
    return min(6, max(0, 1 - math.floor(math.log10(half))))


def column_decimals(means, halves) -> int:
    """One number of decimals for a whole column: the finest any of its intervals needs, but no
    more than 5 significant digits on its largest mean (149.32 ± 1.17, not 149.324 ± 1.165,
    beside a row whose interval is 0.08)."""
    ds = [d for d in (_decimals(h) for h in halves) if d is not None]
    if not ds:
        return 1
    top = max((abs(m) for m in means if not pd.isna(m)), default=0.0)
    digits = math.floor(math.log10(top)) + 1 if top > 0 else 0
    return max(0, min(max(ds), 5 - max(digits, 0)))


def _mean_ci(mean: float, half: float, d: int | None = None) -> str:
    """``149.97 ± 0.40``: the mean to ``d`` decimals (default: the precision of its own
    interval); with one run there is no interval, and the cell says n = 1 instead of ± inf."""
    if half is None or pd.isna(half) or math.isinf(half) or half <= 0:
        d = 1 if d is None else d
        return f"{mean:.{d}f} (n = 1)" if (half is not None and not pd.isna(half) and math.isinf(half)) \
            else f"{mean:.{d}f} ± n/a"
    d = _decimals(half) if d is None else d
    return f"{mean:.{d}f} ± {half:.{d}f}"


def _cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    names = [c[:-5] for c in table.columns if c.endswith(" mean")]
    header = ["model", "estimator"]
    if "setting" in table.columns and table["setting"].astype(str).str.len().gt(0).any():
        header.append("selected setting")
    header += ["n", *[f"{n} (± ci95)" for n in names]]
    extra = [c for c in ("vs best", "p (Holm)", "best step", "published", "published metric",
                         "f-evals/step", "steps/s")
             if c in table.columns]
    header += extra
    decimals = {n: column_decimals(table.get(f"{n} mean", pd.Series(dtype=float)),
                                   table.get(f"{n} ci95", pd.Series(dtype=float))) for n in names}
    body = []
    for _, r in table.iterrows():
        cells = [str(r["model"]), str(r["estimator"])]
        if "selected setting" in header:
            cells.append(str(r.get("setting", "")))
        cells.append(str(int(r["n"])))
        for n in names:
            m, h = r.get(f"{n} mean"), r.get(f"{n} ci95")
            cells.append("" if pd.isna(m) else _mean_ci(m, h, decimals[n]))
        for e in extra:
            v = r.get(e)
            cells.append(_fmt(v, 2) if e == "p (Holm)" else
                         str(int(round(v))) if e in ("f-evals/step", "best step", "steps/s") and not pd.isna(v)
                         else _fmt(v))
        body.append(cells)
    return header, body


def caption(table: pd.DataFrame) -> str:
    """What the table shows, in words (for report.md and reproductions)."""
    if table.empty:
        return ""
    at = table["at"].dropna().iloc[0] if "at" in table else "final"
    parts = [("Test metrics of each run's model at its **best validation step** (eval.select)"
              if at == "best" else "Test metrics of each run's **final** model"),
             "mean ± half-width of the 95 % t confidence interval over seeds (n runs)"
             + ("; bounds and ELBOs as positive nats (lower is better)"
                if any("bound_" in c or "ELBO" in c for c in table.columns) else "")]
    if "selected on" in table.columns and table["selected on"].notna().any():
        parts.append("hyperparameters selected per estimator on "
                     f"{table['selected on'].dropna().iloc[0]}, never on test; `selected setting` "
                     "shows the choice")
    if "vs best" in table.columns:
        main = table["main metric"].dropna().iloc[0] if "main metric" in table else "the main metric"
        parts.append(f"`vs best` on {main}: paired t-tests over common seeds against the estimator "
                     "with the best mean, Holm-corrected; ≈: not distinguishable at 0.05; blank: "
                     "fewer than 2 common seeds")
        n_min = int(table.loc[table["vs best"].notna(), "n"].min()) if table["vs best"].notna().any() else 0
        if 2 <= n_min < 5:
            parts.append(f"**with {n_min} seeds a paired t-test has {n_min - 1} degree"
                         f"{'s' if n_min > 2 else ''} of freedom**: a small p says the seeds agree, "
                         "not that the order would hold for other seeds; claims need 5 or more")
    return "; ".join(parts) + "."


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no completed runs)\n"
    header, body = _cells(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    if table.empty:
        return "% no completed runs\n"
    header, body = _cells(table)
    esc = lambda s: (s.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")  # noqa: E731
                     .replace("≈", r"$\approx$"))
    lines = [r"\begin{tabular}{" + "ll" + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out: Path, at: str = "auto",
                 keys: list[str] | None = None) -> tuple[pd.DataFrame, list[Path]]:
    table = results_table(runs, at=at, keys=keys)
    paths = [out / "table.md", out / "table.tex", out / "table.csv"]
    paths[0].write_text(caption(table) + "\n\n" + to_markdown(table))
    paths[1].write_text(to_latex(table))
    table.to_csv(paths[2], index=False)
    return table, paths
