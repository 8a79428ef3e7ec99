"""Figures from a :class:`analysis.runs.Collection`: mean over seeds with a shaded standard error,
sized for a paper column (PNG and PDF).

What every figure keeps to (tests/test_figures.py checks each on the drawn figure):
- **Identity**: each label has a colour of the Okabe-Ito colour-blind-safe palette *and* a
  marker (:func:`style_of`), assigned once per report over every label it shows, so that an
  estimator looks the same in all the report's figures: up to 8 labels all colours differ, and
  no two labels ever share both colour and marker; variants of one estimator (e.g.
  ``reinforce baseline=ema``) also differ in line style.
- **Units**: every axis label names its unit (nats, s, evaluations, "per coordinate", or says the
  quantity has none).
- **Only measured values as points**: a statistic that is not resolved (a bias² below its noise
  floor, a cosine whose interval is wide) is drawn as its limit or interval, never as a point; a
  clipped value is never drawn; a panel with no resolved value at all is replaced by one line of
  text saying so.
- **Time is training time**: the wall-time view's x axis is ``train/training_s`` (training alone:
  no evaluations, probes, checkpoints or start-up); runs without it fall back to the wall clock
  and the axis says so.
"""
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

ORDER = list(REGISTRY)          # registration order (estimators/__init__.py): one style each
# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
# deficiency; black first, yellow last (weak on white, and it always comes with a marker)
# ordered so that the first few, the labels of a small figure, contrast most: black, orange,
# blue, vermillion, bluish green, reddish purple, sky blue, yellow
OKABE_ITO = ["#000000", "#E69F00", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9",
             "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<"]
LINESTYLES = ["-", "--", ":", "-."]
UNITS = {"vae": "nats", "sbn": "nats", "attention": "nats", "toy": "no unit"}

plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.dpi": 150})


def unit(model: str) -> str:
    return UNITS.get(model, "as logged")


def _order(label: str) -> tuple:
    name = label.split(" ")[0]
    return (ORDER.index(name) if name in ORDER else len(ORDER), label)


def style_of(labels) -> dict[str, tuple[str, str, str]]:
    """label -> (colour, marker, line style) for a set of labels (one figure, or better one whole
    report, so that an estimator looks the same in all its figures). In registry order, the k-th
    label takes colour k mod 8 of the Okabe-Ito palette and marker k mod 9: up to 8 labels every
    colour differs; beyond, two labels of one colour always differ in marker (k and k - 8j
    never agree mod 9 for j < 9). A second variant of one estimator also gets another line style."""
    out = {}
    for k, lab in enumerate(sorted(set(labels), key=_order)):
        variant = sum(1 for v in out if v.split(" ")[0] == lab.split(" ")[0])
        out[lab] = (OKABE_ITO[k % len(OKABE_ITO)], MARKERS[k % len(MARKERS)],
                    LINESTYLES[variant % len(LINESTYLES)])
    return out


def mean_se(df: pd.DataFrame, x: str, y: str = "value") -> pd.DataFrame:
    """Mean and standard error over runs (seeds) of y at each x, per label."""
    g = df.groupby(["label", x])[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["se"] = (out["std"] / np.sqrt(out["count"])).fillna(0.0)
    return out


def _band(ax, d, x, style, lab, logy=False):
    """Mean line with markers (every point when there are few, else about 8 along the line) and
    a shaded +-1 SE band when there is more than one run."""
    c, mk, ls = style
    n = len(d)
    every = 1 if n <= 12 else max(1, n // 8)
    ax.plot(d[x], d["mean"], color=c, ls=ls, lw=1.1, label=lab, marker=mk, ms=3.2,
            markevery=every, mfc="white" if n > 12 else c, mew=0.8)
    if (d["count"] > 1).any():
        lo, hi = d["mean"] - d["se"], d["mean"] + d["se"]
        if logy:
            lo = lo.clip(lower=d["mean"].abs().min() * 1e-3)
        ax.fill_between(d[x], lo, hi, color=c, alpha=0.18, lw=0)


def text_panel(ax, message: str) -> None:
    """A panel with nothing to plot: one line of text instead of empty axes (whatever was drawn
    on them is cleared)."""
    ax.clear()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=7,
            transform=ax.transAxes)
    ax.set_title("")


def _legend(fig, axes, n):
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, n), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))


def _tidy_log_axes(fig) -> None:
    """Log axes: over less than 1.5 decades, ticks at 1, 2, 5 x 10^k labelled plainly (a decade
    alone would leave one label or none); over more, labelled decades only, unlabelled minor
    ticks (their labels crowd the axis)."""
    for ax in fig.axes:
        for axis, scale, lim in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                 (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            if scale != "log" or not (lim[0] > 0 and lim[1] > 0):
                continue
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if math.log10(max(lim) / min(lim)) < 1.5:
                axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))


def _save(fig, out: Path, stem: str, legend_rows: int) -> list[Path]:
    _tidy_log_axes(fig)
    fig.tight_layout(rect=(0, 0.06 * legend_rows + 0.04, 1, 0.96))
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{stem}.{ext}"
        fig.savefig(p, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def loss_quantity(label: str) -> str:
    """What an estimator's logged train/loss measures (Estimator.loss_quantity)."""
    cls = REGISTRY.get(label.split(" ")[0])
    return cls.loss_quantity if cls is not None else "its training loss"


def progress_metric(metrics: pd.DataFrame, model: str) -> tuple[pd.DataFrame, str] | None:
    """The validation curve that measures each model's progress, as the table ranks it: the
    largest-K validation bound as positive nats (what runs select on), else the negative ELBO,
    accuracy; None for the toy, whose exact E[f] is already the common panel."""
    valid = metrics[metrics.split == "valid"]
    bounds = sorted({m for m in valid.metric.unique() if str(m).startswith("bound_")},
                    key=lambda m: int(m.split("_")[1]))
    if bounds:
        d = valid[valid.metric == bounds[-1]]
        return d.assign(value=-d["value"]), f"valid −{bounds[-1]} ({unit(model)})"
    for name, sign, ylabel in (("elbo", -1.0, f"valid negative ELBO ({unit(model)})"),
                               ("accuracy", 1.0, "valid accuracy (fraction)")):
        d = valid[valid.metric == name]
        if not d.empty:
            return d.assign(value=sign * d["value"]), ylabel
    return None


def training_time(metrics: pd.DataFrame) -> tuple[pd.Series, str]:
    """Per row of ``metrics``: the run's training seconds at that step (train/training_s,
    interpolated over steps for rows logged between them, e.g. validation), and the axis label.
    Runs logged before training_s existed use the wall_time column, and the label says that it
    counts evaluations and probes too."""
    t = metrics[(metrics.split == "train") & (metrics.metric == "training_s")]
    if t.empty:
        return metrics["wall_time"], "wall-clock time (s), incl. evaluations and probes"
    out = pd.Series(np.nan, index=metrics.index)
    for run, g in metrics.groupby("run"):
        tr = t[t.run == run].sort_values("step")
        xs = np.concatenate([[0.0], tr["step"].to_numpy(float)])
        ys = np.concatenate([[0.0], tr["value"].to_numpy(float)])
        out.loc[g.index] = np.interp(g["step"].to_numpy(float), xs, ys)
    return out, "training time (s)"


def _without_untrained_outlier(d: pd.DataFrame, ylabel: str) -> tuple[pd.DataFrame, str]:
    """The validation rows without step 0 when the untrained model's value would take more than
    half the panel's height (a VAE's step-0 bound is ~100 nats above where every estimator ends,
    which squeezes the differences the figure is for into a few pixels), and the axis label,
    which then gives the step-0 values: nothing is hidden."""
    first, later = d[d["step"] == 0], d[d["step"] > 0]
    if first.empty or later.empty:
        return d, ylabel
    means = later.groupby(["label", "step"])["value"].mean()
    top = first.groupby("label")["value"].mean()
    if not top.max() - means.max() > means.max() - means.min():
        return d, ylabel
    a, b = f"{top.min():.4g}", f"{top.max():.4g}"
    return later, f"{ylabel}\nstep 0: {a if a == b else f'{a} to {b}'}, not drawn"


def training_curves(metrics: pd.DataFrame, out: Path, model: str, against: str = "step",
                    optimum: float | None = None, styles: dict | None = None) -> list[Path]:
    """Panels against steps, training seconds or f-evaluations per example (``against``:
    step | wall_time | evaluations; the last two are the equal-cost views): the loss each estimator
    optimises (``train/loss``: not one quantity for all, so each legend entry says which), the
    quantity common to all (``train/hard_loss``: the model's loss at exact samples on the training
    batch; the toy's exact E[f], with a line at ``optimum``), and the validation bound the table
    selects on (not for the toy: its test/exact_loss is the common panel's quantity again),
    without its step-0 point when that point would squeeze the rest (the panel says so)."""
    own = metrics[(metrics.split == "train") & (metrics.metric == "loss")]
    own = own.assign(label=own["label"].map(lambda lab: f"{lab}: {loss_quantity(lab)}"))
    common = metrics[(metrics.split == "train") & (metrics.metric == "hard_loss")]
    u = unit(model)
    panels = []
    if not own.empty:
        panels.append((own, f"training loss ({u})\nas each estimator optimises it", "own"))
    if not common.empty:
        what = f"exact expected loss E[f] ({u})" if model == "toy" else \
            f"loss at exact samples ({u})\ntraining batch, same for all"
        panels.append((common, what, "common"))
    prog = progress_metric(metrics, model)
    if prog is not None and model != "toy":
        panels.append((*prog, "progress"))
    if not panels:
        return []
    labels = sorted(metrics["label"].dropna().unique(), key=_order)
    styles = styles or style_of(labels)
    x = against
    xlabel = {"step": "training step", "evaluations": "evaluations of f per example"}.get(x)
    if against == "evaluations":      # f-evaluations per example: step x evals per step
        ev = metrics[(metrics.split == "train") & (metrics.metric == "evals")]
        per_run = ev.groupby("run")["value"].median()
        if per_run.empty:
            return []
        panels = [(d.assign(evaluations=d["step"] * d["run"].map(per_run)), yl, k)
                  for d, yl, k in panels]
    if against == "wall_time":
        seconds, xlabel = training_time(metrics)
        panels = [(d.assign(wall_time=seconds.loc[d.index]), yl, k) for d, yl, k in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8), squeeze=False)
    axes = axes[0]
    for ax, (d, ylabel, kind) in zip(axes, panels):
        if kind == "progress":
            d, ylabel = _without_untrained_outlier(d, ylabel)
        for lab in labels:
            key = f"{lab}: {loss_quantity(lab)}" if kind == "own" else lab
            dl = d[d.label == key]
            if dl.empty:
                continue
            if x == "wall_time":   # mean training time of the runs at each step
                dl = dl.assign(wall_time=dl.groupby("step")["wall_time"].transform("mean"))
            _band(ax, mean_se(dl.assign(label=key), x), x, styles[lab], key)
        if kind == "common" and model == "toy" and optimum is not None:
            ax.axhline(optimum, color="0.4", lw=0.8, ls=(0, (4, 2)), label="optimum (min E[f])")
            lo, hi = ax.get_ylim()
            ax.set_ylim(min(lo, optimum - 0.05 * (hi - optimum)), hi)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        ax.grid(alpha=0.3)
    time_note = "; time = training alone (no evaluations, probes, checkpoints or start-up)" \
        if against == "wall_time" and xlabel == "training time (s)" else ""
    fig.suptitle(f"model={model}{time_note}", fontsize=8)
    # the legend of the first panel names each estimator and the quantity its loss measures
    _legend(fig, axes[:1], 2)
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


def cosine_summary(g: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per ``by`` group over runs: the interval [lo, hi] that holds every run's cosine interval
    (cosine_lo/hi), and the mean cosine only when every run resolved its cosine (``point``; NaN
    otherwise). Old grad_stats without cosine_se clipped the cosine: a value of exactly +-1
    there is treated as unresolved, never as a point."""
    g = g.copy()
    if "cosine_se" not in g:
        g["cosine"] = g["cosine"].where(g["cosine"].abs() < 1.0)
        g["cosine_lo"], g["cosine_hi"] = g["cosine"], g["cosine"]
    agg = g.groupby(by).agg(point=("cosine", lambda v: v.mean() if v.notna().all() else math.nan),
                            lo=("cosine_lo", "min"), hi=("cosine_hi", "max")).reset_index()
    return agg


def _bias2_points(ax, agg: pd.DataFrame, x: str, style, label=None) -> None:
    """bias2 on a log axis: points with +-1 SE bars where it is measurable, hollow down-triangles
    at the upper limit (mean + 2 SE) where it is below the noise floor."""
    c, mk, ls = style
    ok, low = agg[~agg.floor & (agg.b2 > 0)], agg[agg.floor]
    if not ok.empty:
        ax.errorbar(ok[x], ok.b2, yerr=ok.b2_se, fmt=mk, ls=ls, color=c, ms=3, lw=0.8,
                    capsize=1.5, label=label)
    if not low.empty:
        ax.scatter(low[x], low.upper, marker="v", facecolors="none", edgecolors=[c], s=16, lw=0.8,
                   label=None if not ok.empty else label)


def _gradient_row(axes, g: pd.DataFrame, labels, styles, group: str) -> None:
    """One row of the gradient figure for parameter group ``group``: variance, bias², SNR,
    cosine; a panel with nothing resolved says so in words."""
    resolved_b2 = resolved_cos = False
    # one coordinate (the 1-latent toy): every resolved cosine is exactly +-1 with SE 0
    fin = g[g["cosine"].notna()] if "cosine_se" in g else g.iloc[:0]
    trivial_cos = len(fin) > 0 and fin["cosine"].abs().eq(1.0).all() and fin["cosine_se"].eq(0).all()
    span = float(g["step"].max() - g["step"].min()) or 1.0
    for k, lab in enumerate(labels):
        d = g[g["estimator"] == lab]
        st = styles[lab]
        dodge = (k - (len(labels) - 1) / 2) * 0.012 * span     # side by side: intervals overlap
        for ax, col in ((axes[0], "variance"), (axes[2], "snr")):
            dd = d.rename(columns={col: "value"}).assign(label=lab)
            dd = dd[np.isfinite(dd["value"]) & (dd["value"] > 0)]
            if not dd.empty:
                _band(ax, mean_se(dd, "step"), "step", st, lab, logy=True)
        b2 = bias2_summary(d, ["step"])
        if (~b2.floor & (b2.b2 > 0)).any():
            resolved_b2 = True
        _bias2_points(axes[1], b2, "step", st, label=lab)
        cs = cosine_summary(d, ["step"])
        iv = cs.dropna(subset=["lo", "hi"])
        if not iv.empty and not trivial_cos:      # capped, so that a narrow interval shows too
            x = iv["step"] + dodge
            axes[3].vlines(x, iv["lo"], iv["hi"], color=st[0], lw=2.0, alpha=0.45)
            axes[3].scatter(np.r_[x, x], np.r_[iv["lo"], iv["hi"]], marker="_",
                            color=st[0], s=30, lw=1.2, alpha=0.8)
        pts = cs.dropna(subset=["point"])
        if not pts.empty and not trivial_cos:
            resolved_cos = True
            axes[3].plot(pts["step"] + dodge, pts["point"], color=st[0], marker=st[1], ls=st[2],
                         lw=1, ms=3.2, label=lab)
    titles = ["variance per coordinate", "bias² per coordinate", "SNR (no unit)",
              "cosine to reference (no unit)"]
    for ax, ylabel in zip(axes, titles):
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{group}: {ylabel}")
        ax.grid(alpha=0.3)
    for ax in (axes[0], axes[2]):
        ax.set_yscale("log")
    if resolved_b2:
        axes[1].set_yscale("log")
        axes[1].set_title("bars ±1 SE; ▽ = below noise floor (upper limit)", fontsize=7)
    else:
        ups = bias2_summary(g, ["estimator"])["upper"]
        text_panel(axes[1], f"{group} bias²: below the noise floor at every probe for every "
                            f"estimator\n(upper limits ≤ {ups.max():.2g} per coordinate): "
                            "no bias resolved")
    if trivial_cos:
        text_panel(axes[3], f"{group} cosine: one coordinate, so the cosine is ±1 trivially\n"
                            "(the sign of the gradient): not shown")
    elif not resolved_cos and "cosine_lo" in g and g["cosine_lo"].notna().any():
        axes[3].set_ylim(-1.05, 1.05)
        axes[3].set_title("no cosine resolved: bars = ±2 SE intervals only", fontsize=7)
    elif not resolved_cos:
        text_panel(axes[3], f"{group} cosine: ||E g||² below its noise floor at every probe:\n"
                            "no direction measured")
    else:
        lo = g["cosine_lo"].min() if "cosine_lo" in g else g["cosine"].min()
        lo = lo if math.isfinite(lo) else -1.0
        pad = max(0.002, 0.05 * (1.0 - lo))
        axes[3].set_ylim(max(-1.05, lo - pad), 1.0 + pad)
        axes[3].set_title("points: resolved (±2 SE ≤ 0.2); bars: ±2 SE", fontsize=7)
    axes[2].set_title("noise-corrected", fontsize=7)


def gradient_curves(grads: pd.DataFrame, out: Path, model: str, styles: dict | None = None) -> list[Path]:
    """Against training steps, one row per parameter group measured (encoder, then decoder):
    gradient variance (log), bias² with its standard error (log; hollow triangles: below the
    noise floor, drawn at the upper limit), noise-corrected SNR (log) and the cosine to the
    reference (points only where resolved, bars: its ±2 SE interval)."""
    groups = [grp for grp in ("encoder", "decoder") if (grads.param_group == grp).any()]
    if not groups:
        return []
    labels = sorted(grads["estimator"].unique(), key=_order)     # the probed estimator of each row
    styles = styles or style_of(labels)
    fig, axes = plt.subplots(len(groups), 4, figsize=(12.8, 2.7 * len(groups)), squeeze=False)
    for row, grp in zip(axes, groups):
        _gradient_row(row, grads[grads.param_group == grp], labels, styles, grp)
    aux = ""
    if "aux" in grads and (grads["aux"].astype(str).str.startswith("fitted")).any():
        aux = "; comparators with parameters of their own fitted (aux column)"
    refs = sorted(set(grads["reference"].astype(str)))
    ref = f"reference {refs[0]}" if len(refs) == 1 else \
        f"references {', '.join(refs[:3])}{', ...' if len(refs) > 3 else ''} (picked per probe)"
    fig.suptitle(f"model={model}, {ref}, batch "
                 f"{grads['batch_size'].iloc[0] if 'batch_size' in grads else '?'}{aux}", fontsize=8)
    _legend(fig, axes.flatten(), len(labels))
    return _save(fig, out, f"gradients_{model}", math.ceil(len(labels) / 4))


def equal_cost(grads: pd.DataFrame, group: str = "encoder") -> pd.DataFrame:
    """Per estimator at the last probe (mean over runs): variance, bias² (summary), evals, and
    the mean squared error per coordinate MSE = max(bias², 0) + variance with its range when the
    bias² is unresolved ([variance, variance + upper limit]), and MSE x evals: what an estimator
    costs at equal f-evaluations (averaging n estimates divides the variance by n, never the
    bias). Sorted by MSE x evals, then by estimator."""
    g = grads[grads.param_group == group]
    last = g[g.step == g.step.max()]
    agg = last.groupby("estimator").agg(var=("variance", "mean"), var_sd=("variance", "std"),
                                        n=("variance", "count"), evals=("evals", "mean")).reset_index()
    agg = agg.merge(bias2_summary(last, ["estimator"]), on="estimator", suffixes=("", "_b"))
    agg["var_sd"] = agg["var_sd"].fillna(0.0)
    agg["unbiased"] = agg["estimator"].map(lambda e: bool(getattr(REGISTRY.get(e), "unbiased", False)))
    agg["mse"] = agg["var"] + np.where(agg["floor"], 0.0, agg["b2"].clip(lower=0))
    agg["mse_hi"] = np.where(agg["floor"], agg["var"] + agg["upper"], agg["mse"])
    agg["mse_cost"] = agg["mse"] * agg["evals"]
    agg["mse_cost_hi"] = agg["mse_hi"] * agg["evals"]
    return agg.sort_values(["mse_cost", "estimator"]).reset_index(drop=True)


def bias_variance_scatter(grads: pd.DataFrame, out: Path, model: str, group: str = "encoder",
                          styles: dict | None = None) -> list[Path]:
    """At the last probe, per estimator (its colour and marker; legend below): variance (x, log)
    against bias² (y, log; hollow triangles: upper limits below the noise floor), mean +- SE over
    seeds; and the equal-cost view: MSE (bias² + variance) against cost (f-evaluations per
    example), with iso-lines of MSE x cost (lower-left is better; an estimator on a lower line is
    better at equal cost). An unresolved bias² draws the MSE as a bar up to its upper limit."""
    g = grads[grads.param_group == group]
    if g.empty:
        return []
    agg = equal_cost(grads, group)
    styles = styles or style_of(list(agg["estimator"]))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(6.8, 3.0))
    for _, r in agg.iterrows():
        st = styles[r.estimator]
        _bias2_points(ax, pd.DataFrame([r]), "var", st, label=r.estimator)
        if r["var_sd"] > 0:
            y = r.b2 if not r.floor else r.upper
            ax.errorbar(r["var"], y, xerr=r.var_sd / math.sqrt(r.n), fmt="none", color=st[0], lw=0.8)
        open_bias = bool(r.floor and not r.unbiased)       # a biased one's unresolved bias
        bx.plot([r.evals], [r.mse], color=st[0], marker=st[1], ls="none", ms=4,
                mfc="white" if open_bias else st[0], label=r.estimator)
        if open_bias and r.mse_hi > r.mse:
            bx.vlines(r.evals, r.mse, r.mse_hi, color=st[0], lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("variance per coordinate")
    ax.set_ylabel("bias² per coordinate (±1 SE; ▽ upper limit)")
    ax.set_title(f"{group}, step {int(g.step.max())}")
    ax.margins(x=0.15, y=0.2)
    ax.grid(alpha=0.3)
    bx.set_xscale("log")
    bx.set_yscale("log")
    xs = np.array([agg["evals"].min() / 1.6, agg["evals"].max() * 1.6])
    bx.set_xlim(*xs)
    top = max(agg["mse_hi"].max(), agg["mse"].max())
    for level in np.unique(agg["mse_cost"].round(12)):          # iso-lines through each estimator
        bx.plot(xs, level / xs, color="0.75", lw=0.6, zorder=0)
    bx.set_ylim(agg["mse"].min() / 3, top * 3)
    bx.set_xlabel("cost: f-evaluations per example (log)")
    bx.set_ylabel("MSE per coordinate = bias² + variance")
    unb = bool(agg["unbiased"].all())
    bx.set_title("equal cost: grey lines MSE × cost = const\n(lower line is better"
                 + ("; all unbiased: MSE = variance)" if unb else "; hollow: bias unresolved, bar to limit)"),
                 fontsize=7)
    bx.grid(alpha=0.3)
    fig.suptitle(f"model={model}, {group} parameters", fontsize=8)
    _legend(fig, [bx, ax], len(agg))      # the right panel's handles carry each marker
    return _save(fig, out, f"bias_variance_{model}", math.ceil(len(agg) / 4))


def temperature(runs: pd.DataFrame, out: Path, model: str, metric: str,
                styles: dict | None = None) -> list[Path]:
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
    name = metric.replace("final.", "final ")
    sign = -1.0 if "bound_" in metric or metric.endswith("elbo") else 1.0
    if sign < 0:
        d = d.assign(value=-d["value"])
        name = name.replace("test/", "test −")
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    labels = sorted(d["label"].unique(), key=_order)
    styles = styles or style_of(labels)
    for lab in labels:
        _band(ax, mean_se(d[d.label == lab], col), col, styles[lab], lab)
        ax.scatter(d[d.label == lab][col], d[d.label == lab]["value"], s=6, color=styles[lab][0])
    ax.set_xscale("log")
    ax.set_xlabel(f"{col.replace('estimator.', '')} (no unit)")
    ax.set_ylabel(f"{name} ({unit(model)})")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out, f"temperature_{model}", 0)
