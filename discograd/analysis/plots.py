"""Figures from a :class:`analysis.runs.Collection`: mean over seeds with a shaded standard error,
one colour per estimator in every figure, sized for a paper column (PNG and PDF)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from discograd.estimators import REGISTRY  # noqa: E402

ORDER = list(REGISTRY)          # registration order (estimators/__init__.py): one colour each
STYLES = ["-", "--", ":", "-."]
# (split, metric, sign, axis label): the curve that measures each model's progress
PROGRESS = [("valid", "elbo", -1.0, "valid negative ELBO (nats)"),
            ("valid", "accuracy", 1.0, "valid accuracy"),
            ("test", "exact_loss", 1.0, "exact expected loss E[f]")]

plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.dpi": 150})


PALETTE = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]


def colour(name: str):
    """The same colour for an estimator in every figure (fixed order, distinct hues)."""
    i = ORDER.index(name) if name in ORDER else len(ORDER) + sum(map(ord, name)) % 3
    return PALETTE[i % len(PALETTE)]


def style_of(labels: list[str]) -> dict[str, tuple]:
    """label -> (colour of its estimator, line style distinguishing variants of one estimator)."""
    out, seen = {}, {}
    for lab in sorted(labels):
        name = lab.split(" ")[0]
        k = seen.get(name, 0)
        seen[name] = k + 1
        out[lab] = (colour(name), STYLES[k % len(STYLES)])
    return out


def mean_se(df: pd.DataFrame, x: str, y: str = "value") -> pd.DataFrame:
    """Mean and standard error over runs (seeds) of y at each x, per label."""
    g = df.groupby(["label", x])[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["se"] = (out["std"] / np.sqrt(out["count"])).fillna(0.0)
    return out


def _band(ax, d, x, styles, lab, logy=False):
    c, ls = styles[lab]
    ax.plot(d[x], d["mean"], color=c, ls=ls, lw=1.2, label=lab,
            marker="o" if len(d) <= 3 else None, ms=3)     # a single point is visible too
    if (d["count"] > 1).any():
        lo, hi = d["mean"] - d["se"], d["mean"] + d["se"]
        if logy:
            lo = lo.clip(lower=d["mean"].abs().min() * 1e-3)
        ax.fill_between(d[x], lo, hi, color=c, alpha=0.2, lw=0)


def _legend(fig, axes, n):
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, n), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))


def _save(fig, out: Path, stem: str, legend_rows: int) -> list[Path]:
    fig.tight_layout(rect=(0, 0.06 * legend_rows + 0.04, 1, 1))
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{stem}.{ext}"
        fig.savefig(p, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def loss_quantity(label: str) -> str:
    """What an estimator's logged train/loss measures (Estimator.loss_quantity)."""
    from discograd.estimators import REGISTRY
    cls = REGISTRY.get(label.split(" ")[0])
    return cls.loss_quantity if cls is not None else "its training loss"


def training_curves(metrics: pd.DataFrame, out: Path, model: str, against: str = "step") -> list[Path]:
    """Three panels against steps, wall-clock seconds or f-evaluations per example (``against``:
    step | wall_time | evaluations; the last two are the equal-cost views): the loss each estimator optimises
    (``train/loss``: not one quantity for all, so each legend entry says which), one quantity
    common to all (``train/hard_loss``: the model's loss at exact samples on the training batch),
    and the model's progress metric (validation)."""
    own = metrics[(metrics.split == "train") & (metrics.metric == "loss")]
    own = own.assign(label=own["label"].map(lambda lab: f"{lab}: {loss_quantity(lab)}"))
    common = metrics[(metrics.split == "train") & (metrics.metric == "hard_loss")]
    prog = None
    for split, name, sign, ylabel in PROGRESS:
        d = metrics[(metrics.split == split) & (metrics.metric == name)]
        if not d.empty:
            prog = (d.assign(value=sign * d["value"]), ylabel, "progress")
            break
    panels = []
    if not own.empty:
        panels.append((own, "training loss as each estimator\noptimises it (see legend)", "own"))
    if not common.empty:
        panels.append((common, "loss at exact samples, training\nbatch (same quantity for all)",
                       "common"))
    if prog is not None:
        panels.append(prog)
    if not panels:
        return []
    labels = sorted(metrics["label"].dropna().unique())
    styles = style_of(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8), squeeze=False)
    axes = axes[0]
    x = against
    if against == "evaluations":      # f-evaluations per example: step x evals per step
        ev = metrics[(metrics.split == "train") & (metrics.metric == "evals")]
        per_run = ev.groupby("run")["value"].median()
        panels = [(d.assign(evaluations=d["step"] * d["run"].map(per_run)), yl, k)
                  for d, yl, k in panels]
        if per_run.empty:
            return []
    for ax, (d, ylabel, kind) in zip(axes, panels):
        for lab in labels:
            key = f"{lab}: {loss_quantity(lab)}" if kind == "own" else lab
            dl = d[d.label == key]
            if dl.empty:
                continue
            if x == "wall_time":   # mean wall time of the runs at each step
                dl = dl.assign(wall_time=dl.groupby("step")["wall_time"].transform("mean"))
            styles[key] = styles[lab]
            _band(ax, mean_se(dl.assign(label=key), x), x, styles, key)
        ax.set_xlabel({"step": "training step", "wall_time": "wall-clock time (s)",
                       "evaluations": "evaluations of f per example"}[x])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"model={model}", fontsize=8)
    # the legend of the first panel names each estimator and the quantity its loss measures
    _legend(fig, axes, 2)
    return _save(fig, out, f"curves_{against}_{model}", math.ceil(len(labels) / 2))


def bias2_summary(g: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over runs of bias2 per ``by`` group, with the standard error of that mean from the
    runs' own (jackknife) standard errors, and whether it is below the noise floor (< 2 SE: not
    distinguishable from zero, so only an upper limit, mean + 2 SE, is known)."""
    g = g.assign(bias2_se=g["bias2_se"] if "bias2_se" in g else 0.0)
    agg = g.groupby(by).agg(b2=("bias2", "mean"), se2=("bias2_se", lambda v: (v ** 2).sum()),
                            n=("bias2", "count")).reset_index()
    agg["b2_se"] = np.sqrt(agg["se2"]) / agg["n"]
    agg["floor"] = agg["b2"] < 2 * agg["b2_se"]
    agg["upper"] = agg["b2"].clip(lower=0) + 2 * agg["b2_se"]
    return agg


def _bias2_points(ax, agg: pd.DataFrame, x: str, c, ls: str = "-", label=None) -> None:
    """bias2 on a log axis: points with +-1 SE bars where it is measurable, hollow down-triangles
    at the upper limit (mean + 2 SE) where it is below the noise floor."""
    ok, low = agg[~agg.floor & (agg.b2 > 0)], agg[agg.floor]
    if not ok.empty:
        ax.errorbar(ok[x], ok.b2, yerr=ok.b2_se, fmt="o", ls=ls, color=c, ms=2.5, lw=0.8,
                    capsize=1.5, label=label)
    if not low.empty:
        ax.scatter(low[x], low.upper, marker="v", facecolors="none", edgecolors=[c], s=14, lw=0.8,
                   label=None if not ok.empty else label)


def gradient_curves(grads: pd.DataFrame, out: Path, model: str, group: str = "encoder") -> list[Path]:
    """Against training steps: gradient variance (log), bias² with its standard error (log; hollow
    triangles: below the noise floor, drawn at the upper limit), noise-corrected SNR (log) and
    noise-corrected cosine to the reference."""
    g = grads[grads.param_group == group]
    if g.empty:
        return []
    labels = sorted(g["estimator"].unique())          # the probed estimator of each row
    key = "estimator"
    styles = style_of(labels)
    fig, axes = plt.subplots(1, 4, figsize=(12.8, 2.7))
    for lab in labels:
        d = g[g[key] == lab]
        c, ls = styles[lab]
        for ax, col in ((axes[0], "variance"), (axes[2], "snr"), (axes[3], "cosine")):
            dd = d.rename(columns={col: "value"}).assign(label=lab)
            dd = dd[np.isfinite(dd["value"]) & ((dd["value"] > 0) | (col == "cosine"))]
            if not dd.empty:
                _band(ax, mean_se(dd, "step"), "step", styles, lab, logy=col != "cosine")
        _bias2_points(axes[1], bias2_summary(d, ["step"]), "step", c, ls, label=lab)
    for ax, ylabel, scale in zip(axes, ["variance per coordinate", "bias² per coordinate (±1 SE)",
                                        "SNR (noise-corrected)", "cosine to reference (corrected)"],
                                 ["log", "log", "log", "linear"]):
        ax.set_yscale(scale)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_title("▽ = below noise floor (upper limit)", fontsize=7)
    axes[3].set_title("gaps: ||E g||² below noise floor", fontsize=7)
    aux = ""
    if "aux" in g and (g["aux"].astype(str).str.startswith("fitted")).any():
        aux = "; comparators with parameters of their own fitted (aux column)"
    fig.suptitle(f"model={model}, {group} parameters, reference {g['reference'].iloc[0]}, "
                 f"batch {g['batch_size'].iloc[0] if 'batch_size' in g else '?'}{aux}", fontsize=8)
    _legend(fig, axes, len(labels))
    return _save(fig, out, f"gradients_{model}", math.ceil(len(labels) / 4))


def bias_variance_scatter(grads: pd.DataFrame, out: Path, model: str, group: str = "encoder") -> list[Path]:
    """Per estimator at the last probe: variance (x, log) against bias² (y, log; hollow triangles:
    upper limits below the noise floor), mean +- SE over seeds; and variance x cost (evals per
    example) as points on a log axis."""
    g = grads[grads.param_group == group]
    if g.empty:
        return []
    last = g[g.step == g.step.max()]
    agg = last.groupby("estimator").agg(var=("variance", "mean"), var_sd=("variance", "std"),
                                        n=("variance", "count"), evals=("evals", "mean")).reset_index()
    agg = agg.merge(bias2_summary(last, ["estimator"]), on="estimator", suffixes=("", "_b"))
    agg["var_sd"] = agg["var_sd"].fillna(0.0)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(6.8, 2.8))
    for _, r in agg.iterrows():
        c = colour(r.estimator)
        row = pd.DataFrame([r])
        _bias2_points(ax, row, "var", c)
        if r["var_sd"] > 0:
            y = r.b2 if not r.floor else r.upper
            ax.errorbar(r["var"], y, xerr=r.var_sd / math.sqrt(r.n), fmt="none", color=c, lw=0.8)
        ax.annotate(r.estimator, (r["var"], r.b2 if not r.floor else r.upper), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("variance per coordinate")
    ax.set_ylabel("bias² per coordinate (±1 SE; ▽ upper limit)")
    ax.set_title(f"step {int(last.step.max())}")
    ax.margins(x=0.15, y=0.2)
    ax.grid(alpha=0.3)
    agg = agg.assign(cost=agg["var"] * agg["evals"]).sort_values("cost")
    pos = np.arange(len(agg))
    bx.scatter(pos, agg["cost"], color=[colour(e) for e in agg["estimator"]], s=16, zorder=3)
    bx.set_xticks(pos, agg["estimator"], rotation=45, ha="right")
    bx.set_yscale("log")
    bx.set_ylabel("variance × f-evaluations per example")
    bx.set_title("variance at equal cost (lower is better)")
    bx.grid(alpha=0.3)
    fig.suptitle(f"model={model}, {group} parameters", fontsize=8)
    return _save(fig, out, f"bias_variance_{model}", 0)


def temperature(runs: pd.DataFrame, out: Path, model: str, metric: str) -> list[Path]:
    """Final metric against the temperature, when a temperature key varied."""
    cols = [c for c in ("estimator.tau.init", "estimator.tau.min") if c in runs.columns]
    cols = [c for c in cols if runs[c].dropna().nunique() > 1]
    if not cols or metric not in runs.columns:
        return []
    col = cols[0]
    d = runs.dropna(subset=[col, metric]).rename(columns={metric: "value"})
    d = d.assign(label=d["estimator.name"])         # one line per estimator across temperatures
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    labels = sorted(d["label"].unique())
    styles = style_of(labels)
    for lab in labels:
        _band(ax, mean_se(d[d.label == lab], col), col, styles, lab)
        ax.scatter(d[d.label == lab][col], d[d.label == lab]["value"], s=6, color=styles[lab][0])
    ax.set_xscale("log")
    ax.set_xlabel(col.replace("estimator.", ""))
    ax.set_ylabel(metric.replace("final.", "final "))
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out, f"temperature_{model}", 0)
