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
    """Two significant digits in one notation for a whole column (the values span decades)."""
    if not math.isfinite(v):
        return "inf" if v == math.inf else "n/a"
    return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _cosine_cell(point: float, lo: float, hi: float, raw: float) -> str:
    """A resolved cosine with its ±2 SE interval, or only the interval ("unresolved")."""
    rawtxt = f" [raw {raw:.2f}]" if math.isfinite(raw) else ""
    if math.isfinite(point):
        return f"{point:.3f} ({lo:.3f} to {hi:.3f}){rawtxt}"
    if math.isfinite(lo) and math.isfinite(hi):
        if hi - lo <= 0.4:        # narrow, but the estimate itself fell outside [-1, 1]
            return f"in {lo:.3f} to {hi:.3f}{rawtxt}"
        return f"unresolved ({lo:.2f} to {hi:.2f}){rawtxt}"
    return f"unresolved{rawtxt}"


def gradient_table(g: pd.DataFrame, group: str = "encoder") -> list[str]:
    """Markdown rows: every probed estimator at the last probe of ``g`` (mean over runs), with
    the state it was measured in (aux), bias² +- SE or its upper limit below the noise floor, the
    MSE and MSE x evals (the equal-cost ranking, rows in its order), the noise-corrected SNR and
    the cosine with its interval; then, for each biased estimator whose bias the reference could
    not resolve, a sentence that says so."""
    g = g[g.param_group == group]
    if g.empty:
        return []
    last = g[g.step == g.step.max()]
    cost = plots.equal_cost(g, group).set_index("estimator")
    cos = plots.cosine_summary(last, ["estimator"]).set_index("estimator")
    cols = [c for c in ("snr", "snr_raw", "cosine_raw") if c in last]
    agg = last.groupby("estimator")[cols].mean()
    aux = last.groupby("estimator")["aux"].agg(lambda v: ", ".join(sorted(set(map(str, v))))) \
        if "aux" in last else pd.Series("", index=agg.index)
    refs = ", ".join(f"`{r}`" for r in sorted(set(last["reference"].astype(str))))
    bs = last["batch_size"].iloc[0] if "batch_size" in last else "?"
    n = last.run.nunique()
    rows = [f"Step {int(last.step.max())}, {group} parameters, reference {refs}, diagnostic batch "
            f"{bs}, K = {int(last['samples'].iloc[0])} estimates, mean over {plural(n, 'run')}. "
            "Rows in order of MSE × evals (mean squared error per coordinate, bias² + variance, "
            "times f-evaluations per example: the cost at equal evaluations; lower is better). "
            "bias²: ± one (jackknife) standard error, or `< u` below the noise floor (< 2 SE; u = "
            "upper limit; a biased estimator's MSE then counts no bias and is a lower limit, `≥`). snr is "
            "noise-corrected; cosine: resolved value (±2 SE interval); `in a to b`: only the "
            "interval (the estimate itself, a ratio of noisy terms, fell outside [-1, 1]); "
            "`unresolved`: the interval is wider than ±0.2 or ||E g||² is below its noise floor.", "",
            "| estimator | unbiased | state (aux) | variance | bias² | MSE | MSE × evals | evals | "
            "snr [raw] | cosine (±2 SE) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    unresolved = []
    for e in cost.index:
        c, r = cost.loc[e], agg.loc[e]
        bias = f"< {_fmt(c.upper)}" if c.floor else f"{_fmt(c.b2)} ± {_fmt(c.b2_se)}"
        ge = "≥ " if c.floor and not c.unbiased else ""      # an unbiased one's MSE is its variance
        snr = f"{_fmt(r.snr)} [{_fmt(r.snr_raw)}]" if "snr_raw" in r else _fmt(r.snr)
        cz = cos.loc[e]
        cell = _cosine_cell(cz.point, cz.lo, cz.hi, r.get("cosine_raw", math.nan))
        rows.append(f"| {e} | {'yes' if c.unbiased else 'no'} | {aux.get(e, '')} | {_fmt(c['var'])} "
                    f"| {bias} | {ge}{_fmt(c.mse)} | {ge}{_fmt(c.mse_cost)} | {int(c.evals)} | {snr} "
                    f"| {cell} |")
        if c.floor and not c.unbiased:
            unresolved.append((e, c))
    rows.append("")
    for e, c in unresolved:
        rows.append(f"- **{e} is biased, but this reference cannot resolve its bias**: bias² < "
                    f"{_fmt(c.upper)} per coordinate, which is {c.upper / c['var']:.2g} × its "
                    "variance. A bias below that limit is invisible here; a more precise "
                    "reference (more draws M in `diagnostics.reference=mc:NAME:M`, or `auto`) "
                    "resolves smaller ones.")
    if unresolved:
        rows.append("")
    return rows


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


def toy_optimum(runs: pd.DataFrame) -> float | None:
    """The smallest E[f] of the toy the runs trained (Toy.optimum), None when they differ."""
    from discograd.models import Toy
    keys = {"dim": "model.dim", "t": "model.t", "latent": "model.latent", "classes": "model.classes",
            "power": "model.power"}
    values = set()
    for _, r in runs.iterrows():
        kw = {k: r[c] for k, c in keys.items() if c in r and not pd.isna(r[c])}
        values.add(round(float(Toy(**kw).optimum), 12))
    return values.pop() if len(values) == 1 else None


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
    # one look per label across the whole report: the trained labels and the probed estimators
    shown_labels = set(col.runs["label"].dropna())
    if not col.grad_stats.empty:
        shown_labels |= set(col.grad_stats["estimator"].dropna())
    st = plots.style_of(shown_labels)
    for model in sorted(col.runs["model.name"].dropna().unique()):
        ids = set(col.runs.loc[col.runs["model.name"] == model, "run"])
        m = col.metrics[col.metrics.run.isin(ids)]
        g = col.grad_stats[col.grad_stats.run.isin(ids)] if not col.grad_stats.empty else col.grad_stats
        r = col.runs[col.runs.run.isin(ids)]
        opt = toy_optimum(r) if model == "toy" else None
        figures += [(f"{model}: training curves against steps", p)
                    for p in plots.training_curves(m, out, model, "step", opt, st) if p.suffix == ".png"]
        figures += [(f"{model}: training curves against training time (equal cost in time; "
                     "evaluations, probes and checkpoints not counted)", p)
                    for p in plots.training_curves(m, out, model, "wall_time", opt, st) if p.suffix == ".png"]
        figures += [(f"{model}: training curves against f-evaluations per example (equal cost in "
                     "evaluations of f)", p)
                    for p in plots.training_curves(m, out, model, "evaluations", opt, st) if p.suffix == ".png"]
        if not g.empty:
            g, which = figure_rows(g)
            figures += [(f"{model}: gradient variance, bias², SNR and cosine during training, per "
                         f"parameter group ({which})", p)
                        for p in plots.gradient_curves(g, out, model, styles=st) if p.suffix == ".png"]
            figures += [(f"{model}: bias against variance at the last probe; MSE at equal cost "
                         f"({which})", p)
                        for p in plots.bias_variance_scatter(g, out, model, styles=st) if p.suffix == ".png"]
        metric = main_metric(r)
        if metric:
            figures += [(f"{model}: final {metric[6:]} against temperature", p)
                        for p in plots.temperature(r, out, model, metric, styles=st) if p.suffix == ".png"]
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
             f"{plural(len(col.runs), 'run')}: " + ", ".join(f"{n} {s}" for s, n in sorted(status.items())), "",
             "## Test metrics", "",
             caption(table) + " Files: `table.md`, `table.tex`, `table.csv` (with standard "
             "deviations and raw p-values)." + (f" Figures show each estimator at its selected "
                                                 f"setting ({plural(len(shown), 'run')})." if keys else ""), "",
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
    lines += ["## Figures", "", "Mean over seeds, shaded: ± one standard error. Each estimator "
              "has its own colour and marker in every figure. Training loss: what each estimator "
              "optimises (the legend says which quantity: not comparable across estimators); loss "
              "at exact samples: the same quantity for all; validation: the bound the table "
              "selects on, as positive nats.", ""]
    for title, p in figures:
        lines += [f"### {title}", "", f"![{title}]({p.name})", ""]
    lines += ["## Data", "", "Tidy tables of every run: `runs.csv` (config, status, final metrics), "
              "`metrics.csv`, `grad_stats.csv` (long format, with `run` and `label`).", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
