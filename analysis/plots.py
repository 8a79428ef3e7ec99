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

ORDER = ["st", "reinforce", "gumbel", "st_gumbel", "arm", "disarm", "rloo", "vimco", "muprop",
         "rebar", "relax", "reinmax", "gst", "gumbel_rao", "exact"]
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


def _symlog(ax, values: pd.Series) -> None:
    """symlog y axis (bias2 estimates can be negative), linear within one decade of zero."""
    a = values.abs()
    a = a[a > 0]
    lt = 10.0 ** math.floor(math.log10(float(a.quantile(0.25)))) if not a.empty else 1e-12
    ax.set_yscale("symlog", linthresh=lt, linscale=1.0)
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


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
    ax.plot(d[x], d["mean"], color=c, ls=ls, lw=1.2, label=lab)
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


def training_curves(metrics: pd.DataFrame, out: Path, model: str, against: str = "step") -> list[Path]:
    """Training loss and the model's progress metric against steps or wall-clock seconds."""
    train = metrics[(metrics.split == "train") & (metrics.metric == "loss")]
    prog = None
    for split, name, sign, ylabel in PROGRESS:
        d = metrics[(metrics.split == split) & (metrics.metric == name)]
        if not d.empty:
            prog = (d.assign(value=sign * d["value"]), ylabel)
            break
    if train.empty and prog is None:
        return []
    labels = sorted(metrics["label"].dropna().unique())
    styles = style_of(labels)
    panels = [(train, "training loss (objective, nats for the VAE)")] + ([prog] if prog else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.6), squeeze=False)
    axes = axes[0]
    for ax, (d, ylabel) in zip(axes, panels):
        x = "step" if against == "step" else "wall_time"
        for lab in labels:
            dl = d[d.label == lab]
            if dl.empty:
                continue
            if x == "wall_time":   # mean wall time of the runs at each step
                dl = dl.assign(wall_time=dl.groupby("step")["wall_time"].transform("mean"))
            _band(ax, mean_se(dl, x), x, styles, lab)
        ax.set_xlabel("training step" if x == "step" else "wall-clock time (s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"model={model}", fontsize=8)
    rows = math.ceil(len(labels) / 4)
    _legend(fig, axes, len(labels))
    return _save(fig, out, f"curves_{against}_{model}", rows)


def gradient_curves(grads: pd.DataFrame, out: Path, model: str, group: str = "encoder") -> list[Path]:
    """Gradient variance (log), bias2 (symlog: it can be negative) and cosine to the reference."""
    g = grads[grads.param_group == group]
    if g.empty:
        return []
    labels = sorted(g["estimator"].unique())
    styles = style_of(labels)
    fig, axes = plt.subplots(1, 3, figsize=(10.2, 2.6))
    for ax, (col, ylabel, scale) in zip(axes, [("variance", "variance per coordinate", "log"),
                                              ("bias2", "bias² per coordinate", "symlog"),
                                              ("cosine", "cosine to reference", "linear")]):
        for lab in labels:
            d = g[g.estimator == lab].rename(columns={col: "value"}).assign(label=lab)
            _band(ax, mean_se(d, "step"), "step", styles, lab, logy=scale == "log")
        if scale == "symlog":
            _symlog(ax, g["bias2"])
        else:
            ax.set_yscale(scale)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"model={model}, {group} parameters, reference {g['reference'].iloc[0]}", fontsize=8)
    _legend(fig, axes, len(labels))
    return _save(fig, out, f"gradients_{model}", math.ceil(len(labels) / 4))


def bias_variance_scatter(grads: pd.DataFrame, out: Path, model: str, group: str = "encoder") -> list[Path]:
    """Per estimator at the last probe: variance (x, log) against bias² (y, symlog), mean +- SE
    over seeds; and variance x cost (evals per example) as bars."""
    g = grads[grads.param_group == group]
    if g.empty:
        return []
    last = g[g.step == g.step.max()]
    agg = last.groupby("estimator").agg(var=("variance", "mean"), var_sd=("variance", "std"),
                                        b2=("bias2", "mean"), b2_sd=("bias2", "std"),
                                        n=("variance", "count"), evals=("evals", "mean"),
                                        sec=("seconds_per_estimate", "mean")).reset_index()
    agg = agg.fillna(0.0)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(6.8, 2.8))
    for _, r in agg.iterrows():
        c = colour(r.estimator)
        ax.errorbar(r["var"], r.b2, xerr=r.var_sd / math.sqrt(r.n), yerr=r.b2_sd / math.sqrt(r.n),
                    fmt="o", color=c, ms=4, capsize=2, label=r.estimator)
        ax.annotate(r.estimator, (r["var"], r.b2), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _symlog(ax, agg["b2"])
    ax.set_xlabel("variance per coordinate")
    ax.set_ylabel("bias² per coordinate")
    ax.set_title(f"step {int(last.step.max())}")
    ax.margins(x=0.15, y=0.2)
    ax.grid(alpha=0.3)
    cost = agg["var"] * agg["evals"]
    bx.bar(agg["estimator"], cost, color=[colour(e) for e in agg["estimator"]])
    bx.set_yscale("log")
    bx.set_ylabel("variance × f-evaluations per example")
    bx.set_title("variance at equal cost (lower is better)")
    bx.tick_params(axis="x", rotation=45)
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
