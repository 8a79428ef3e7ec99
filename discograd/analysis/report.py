"""``report.md``: the figures and tables of a collection of runs, readable on a code host."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import plots
from .runs import collect
from .runs import grid_keys
from .tables import _setting, caption, select_settings, to_markdown, which_model, write_tables


def main_metric(runs: pd.DataFrame) -> str | None:
    for c in ("final.test/bound_1000", "final.test/loss", "final.test/accuracy", "final.test/exact_loss"):
        if c in runs.columns and runs[c].notna().any():
            return c
    return None


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else ("inf" if v == math.inf else "nan")


def gradient_table(g: pd.DataFrame, group: str = "encoder") -> list[str]:
    """Markdown rows: every probed estimator at the last probe of ``g`` (mean over runs), with
    the state it was measured in (aux), bias² +- SE or its upper limit below the noise floor,
    and the noise-corrected SNR and cosine."""
    g = g[g.param_group == group]
    if g.empty:
        return []
    last = g[g.step == g.step.max()]
    b2 = plots.bias2_summary(last, ["estimator"]).set_index("estimator")
    cols = [c for c in ("variance", "snr", "cosine", "snr_raw", "cosine_raw", "evals") if c in last]
    agg = last.groupby("estimator")[cols].mean()
    aux = last.groupby("estimator")["aux"].agg(lambda v: ", ".join(sorted(set(map(str, v))))) \
        if "aux" in last else pd.Series("", index=agg.index)
    ref, bs = last["reference"].iloc[0], last["batch_size"].iloc[0] if "batch_size" in last else "?"
    rows = [f"Step {int(last.step.max())}, {group} parameters, reference `{ref}`, diagnostic batch "
            f"{bs}, K = {int(last['samples'].iloc[0])} estimates, mean over {last.run.nunique()} "
            "run(s). bias²: ± one (jackknife) standard error, or `< u` when it is below the noise "
            "floor (< 2 SE; u = upper limit). snr and cosine are noise-corrected (raw values in "
            "brackets); cosine is blank where ||E g||² is below its noise floor.", "",
            "| estimator | state (aux) | variance | bias² | snr [raw] | cosine [raw] | evals |",
            "|---|---|---|---|---|---|---|"]
    order = agg.sort_values("variance").index
    for e in order:
        r, b = agg.loc[e], b2.loc[e]
        bias = f"< {_fmt(b.upper)}" if b.floor else f"{_fmt(b.b2)} ± {_fmt(b.b2_se)}"
        snr = f"{_fmt(r.snr)} [{_fmt(r.snr_raw)}]" if "snr_raw" in r else _fmt(r.snr)
        cos = "" if not math.isfinite(r.cosine) else _fmt(r.cosine)
        cos = f"{cos} [{_fmt(r.cosine_raw)}]" if "cosine_raw" in r else cos
        rows.append(f"| {e} | {aux.get(e, '')} | {_fmt(r.variance)} | {bias} | {snr} | {cos} | "
                    f"{int(r.evals)} |")
    return rows + [""]


def figure_rows(g: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The grad_stats rows a gradient figure shows: with one trained-estimator label, every probed
    estimator of those runs (same model states); with several, each estimator probed in its own
    runs only (``aux=trained``), since a comparator's numbers belong to another run's states."""
    if g["label"].nunique() <= 1:
        return g, "every probed estimator on the same runs"
    if "aux" in g:
        own = g[g["aux"] == "trained"]
    else:
        own = g[g["estimator"] == g["label"].str.split(" ").str[0]]
    return own, "each estimator on its own runs"


def selected_runs(runs: pd.DataFrame, keys: list[str], at: str) -> set[str]:
    """The runs of each estimator's selected grid setting (all runs when there is no grid)."""
    if not keys:
        return set(runs["run"])
    chosen = select_settings(runs, keys, at)
    keep = runs.apply(lambda r: chosen.get((r["model.name"], r["label"]), {}).get("setting")
                      == _setting(r, keys), axis=1)
    return set(runs.loc[keep, "run"])


def make_report(path: str | Path, out: str | Path | None = None, at: str = "auto",
                select: list[str] | None = None) -> Path:
    path = Path(path)
    out = Path(out) if out is not None else path / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    col = collect(path)
    col.save(out)
    table, _ = write_tables(col.runs, out, at=at, keys=select)
    keys = grid_keys(col.runs) if select is None else list(select)
    shown = col.runs
    if keys:            # figures show each estimator at its selected setting
        ids = selected_runs(col.runs, keys, which_model(col.runs, at))
        shown = col.runs[col.runs.run.isin(ids)]
        col = type(col)(shown, col.metrics[col.metrics.run.isin(ids)],
                        col.grad_stats[col.grad_stats.run.isin(ids)] if not col.grad_stats.empty
                        else col.grad_stats)
    figures: list[tuple[str, Path]] = []
    for model in sorted(col.runs["model.name"].dropna().unique()):
        ids = set(col.runs.loc[col.runs["model.name"] == model, "run"])
        m = col.metrics[col.metrics.run.isin(ids)]
        g = col.grad_stats[col.grad_stats.run.isin(ids)] if not col.grad_stats.empty else col.grad_stats
        r = col.runs[col.runs.run.isin(ids)]
        figures += [(f"{model}: training curves against steps", p)
                    for p in plots.training_curves(m, out, model, "step") if p.suffix == ".png"]
        figures += [(f"{model}: training curves against wall-clock time (equal cost in time)", p)
                    for p in plots.training_curves(m, out, model, "wall_time") if p.suffix == ".png"]
        figures += [(f"{model}: training curves against f-evaluations per example (equal cost in "
                     "evaluations of f)", p)
                    for p in plots.training_curves(m, out, model, "evaluations") if p.suffix == ".png"]
        if not g.empty:
            g, which = figure_rows(g)
            figures += [(f"{model}: gradient variance, bias², SNR and cosine during training ({which})", p)
                        for p in plots.gradient_curves(g, out, model) if p.suffix == ".png"]
            figures += [(f"{model}: bias and variance at the last probe; variance at equal cost ({which})", p)
                        for p in plots.bias_variance_scatter(g, out, model) if p.suffix == ".png"]
        metric = main_metric(r)
        if metric:
            figures += [(f"{model}: final {metric[6:]} against temperature", p)
                        for p in plots.temperature(r, out, model, metric) if p.suffix == ".png"]
    grad_lines = []
    if not col.grad_stats.empty:
        for model in sorted(col.runs["model.name"].dropna().unique()):
            ids = set(col.runs.loc[col.runs["model.name"] == model, "run"])
            g = col.grad_stats[col.grad_stats.run.isin(ids)]
            # one table per trained-estimator label: probes of different runs measure different
            # model states, so only runs of one label (seeds) are averaged together
            for label in sorted(g["label"].dropna().unique()):
                rows = gradient_table(g[g.label == label])
                if rows:
                    grad_lines += [f"### {model}, runs trained with {label}", "", *rows]
    status = col.runs["status"].value_counts().to_dict()
    lines = [f"# discograd report: `{path}`", "",
             f"{len(col.runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(status.items())), "",
             "## Test metrics", "",
             caption(table) + " Files: `table.md`, `table.tex`, `table.csv` (with standard "
             "deviations and raw p-values)." + (f" Figures show each estimator at its selected "
                                                 f"setting ({len(shown)} runs)." if keys else ""), "",
             to_markdown(table)]
    bad = col.runs[col.runs.status != "completed"]
    if not bad.empty:
        lines += ["## Runs that did not complete", "", "| run | status | error |", "|---|---|---|"]
        for _, r in bad.iterrows():
            err = r.get("error", "")
            err = "" if isinstance(err, float) and math.isnan(err) else str(err)
            lines.append(f"| `{r.run}` | {r.status} | {err.replace('|', '/')} |")
        lines.append("")
    if grad_lines:
        lines += ["## Gradient diagnostics at the last probe", "", *grad_lines]
    lines += ["## Figures", "", "Mean over seeds, shaded: ± one standard error. Training loss: "
              "what each estimator optimises (the legend says which quantity: not comparable "
              "across estimators); loss at exact samples: the same quantity for all.", ""]
    for title, p in figures:
        lines += [f"### {title}", "", f"![{title}]({p.name})", ""]
    lines += ["## Data", "", "Tidy tables of every run: `runs.csv` (config, status, final metrics), "
              "`metrics.csv`, `grad_stats.csv` (long format, with `run` and `label`).", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
