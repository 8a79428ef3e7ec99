"""What the figures and report say, checked on the drawn matplotlib objects and the written text
(not on pixels): units on every axis, one look per estimator, only resolved values as points,
text instead of empty panels, training time on the time axis, the equal-cost ranking by MSE,
and the report's wording."""
from __future__ import annotations

import math
import re

import matplotlib.lines
import numpy as np
import pandas as pd
import pytest

from discograd.analysis import plots
from discograd.estimators import REGISTRY

UNIT = re.compile(r"\((nats|s|no unit|fraction)[\);,]|\(s\)|per coordinate|per example|"
                  r"training step|no unit|\(nats\)")


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the plot functions save, kept open for inspection."""
    figs = []
    save = plots._save

    def keep(fig, out, stem, rows):
        figs.append(fig)
        plots._tidy_log_axes(fig)
        return [out / f"{stem}.png"]
    monkeypatch.setattr(plots, "_save", keep)
    yield figs
    import matplotlib.pyplot as plt
    for f in figs:
        plt.close(f)
    assert save is not None


def metrics_for(labels, model="vae", runs=2, steps=1000):
    rows = []
    for lab in labels:
        for r in range(runs):
            run = f"{lab}-{r}"
            for s in range(100, steps + 1, 100):
                for metric, v in (("loss", 200 - s / 10 + r), ("hard_loss", 210 - s / 10 + r),
                                  ("evals", 2.0), ("training_s", s * 0.01)):
                    rows.append({"step": s, "epoch": 0, "wall_time": 5 + s * 0.03, "split": "train",
                                 "metric": metric, "value": v, "run": run, "label": lab})
            for s in (0, 500, steps):
                rows.append({"step": s, "epoch": 0, "wall_time": 5 + s * 0.03, "split": "valid",
                             "metric": "bound_20", "value": -(200 - s / 20), "run": run, "label": lab})
                rows.append({"step": s, "epoch": 0, "wall_time": 5 + s * 0.03, "split": "valid",
                             "metric": "elbo", "value": -(210 - s / 20), "run": run, "label": lab})
    return pd.DataFrame(rows)


def grads_for(labels, bias2=1e-3, bias2_se=1e-4, cosine=0.9, cosine_se=0.01, runs=2, groups=("encoder",)):
    rows = []
    for lab in labels:
        for r in range(runs):
            for s in (0, 500, 1000):
                for grp in groups:
                    c = cosine if cosine_se * 2 <= 0.2 else math.nan
                    rows.append({"step": s, "estimator": lab, "param_group": grp, "samples": 50,
                                 "reference": "mc:reinforce:100", "variance": 1e-3 * (1 + r),
                                 "bias2": bias2, "bias2_se": bias2_se, "snr": 0.5, "cosine": c,
                                 "cosine_se": cosine_se, "cosine_lo": max(-1, cosine - 2 * cosine_se),
                                 "cosine_hi": min(1, cosine + 2 * cosine_se), "cosine_raw": 0.5,
                                 "snr_raw": 0.6, "evals": 1, "aux": "trained", "batch_size": 50,
                                 "run": f"{lab}-{r}", "label": lab})
    return pd.DataFrame(rows)


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def labelled_lines(fig):
    """label -> set of (colour, marker) of every labelled line or marker collection."""
    out = {}
    for ax in fig.axes:
        for ln in ax.get_lines():
            lab = ln.get_label()
            if lab.startswith("_") or lab.startswith("optimum"):
                continue
            out.setdefault(lab.split(":")[0], set()).add(
                (matplotlib.colors.to_hex(ln.get_color()), ln.get_marker()))
    return out


ALL = sorted(REGISTRY)


def test_every_axis_names_its_unit(drawn, tmp_path):
    plots.training_curves(metrics_for(ALL[:5]), tmp_path, "vae", "step")
    plots.training_curves(metrics_for(ALL[:5]), tmp_path, "vae", "wall_time")
    plots.training_curves(metrics_for(ALL[:5]), tmp_path, "vae", "evaluations")
    plots.training_curves(metrics_for(ALL[:3], model="toy"), tmp_path, "toy", "step", optimum=0.2)
    plots.gradient_curves(grads_for(ALL[:4], groups=("encoder", "decoder")), tmp_path, "vae")
    plots.bias_variance_scatter(grads_for(ALL[:4]), tmp_path, "vae")
    assert len(drawn) == 6
    for fig in drawn:
        for ax in visible_axes(fig):
            for text in (ax.get_xlabel(), ax.get_ylabel()):
                assert text and UNIT.search(text), f"axis label without a unit: {text!r}"


def test_no_two_estimators_in_a_figure_look_alike(drawn, tmp_path):
    """All 17 estimators, plus two variants of one, in one figure: every label its own
    (colour, marker) pair; and the palette is the colour-blind-safe one."""
    labels = ALL + ["reinforce baseline=ema", "reinforce baseline=none"]
    plots.training_curves(metrics_for(labels, runs=1), tmp_path, "vae", "step")
    plots.gradient_curves(grads_for(labels, runs=1), tmp_path, "vae")
    for fig in drawn:
        looks = labelled_lines(fig)
        assert len(looks) >= len(labels)
        seen = {}
        for lab, pairs in looks.items():
            for pair in pairs:
                assert pair not in seen or seen[pair] == lab, (lab, seen.get(pair), pair)
                seen[pair] = lab
                assert pair[0].upper() in plots.OKABE_ITO, pair
    # the old collisions (gumbel/relax green, annealed_st/muprop olive, st/rebar blue): up to 8
    # labels every colour differs (the Tucker toy's five, the Jang table's six)
    for labels in (["gumbel", "relax", "annealed_st", "muprop", "st", "rebar"],
                   ["reinforce", "rebar", "relax", "st", "gumbel"], ALL[:8]):
        colours = [c for c, _, _ in plots.style_of(labels).values()]
        assert len(set(colours)) == len(labels), labels


def test_toy_curves_have_no_duplicate_panel_and_show_the_optimum(drawn, tmp_path):
    m = metrics_for(["st", "reinforce"], model="toy")
    m.loc[m.metric == "hard_loss", "value"] = 0.245 + 0.001 * np.random.default_rng(0).random(
        (m.metric == "hard_loss").sum())
    m = pd.concat([m, m[m.metric == "hard_loss"].assign(split="test", metric="exact_loss")])
    m = m[m.split != "valid"]
    plots.training_curves(m, tmp_path, "toy", "step", optimum=0.2025)
    fig = drawn[0]
    ylabels = [ax.get_ylabel() for ax in visible_axes(fig)]
    assert sum("E[f]" in y for y in ylabels) == 1, ylabels          # once, not twice
    common = next(ax for ax in fig.axes if "E[f]" in ax.get_ylabel())
    assert any(ln.get_label().startswith("optimum") and ln.get_ydata()[0] == pytest.approx(0.2025)
               for ln in common.get_lines())
    lo, hi = common.get_ylim()
    assert lo <= 0.2025 < hi                                       # not a 0.242-0.248 window


def test_validation_panel_is_the_bound_as_positive_nats_with_markers(drawn, tmp_path):
    plots.training_curves(metrics_for(["st", "gumbel"]), tmp_path, "vae", "step")
    ax = visible_axes(drawn[0])[-1]
    assert ax.get_ylabel() == "valid −bound_20 (nats)"
    for ln in ax.get_lines():
        if not ln.get_label().startswith("_"):
            assert ln.get_marker() not in (None, "None", "", " ")
            assert (np.asarray(ln.get_ydata()) > 0).all()


def test_wall_time_axis_is_training_time(drawn, tmp_path):
    """The x data are train/training_s (0.01 s per step here), not the wall clock (which also
    counts evaluations and probes: 5 + 0.03 s per step)."""
    plots.training_curves(metrics_for(["st"]), tmp_path, "vae", "wall_time")
    ax = visible_axes(drawn[0])[0]
    assert ax.get_xlabel() == "training time (s)"
    x = next(ln for ln in ax.get_lines() if not ln.get_label().startswith("_")).get_xdata()
    assert np.allclose(np.asarray(x), np.arange(100, 1001, 100) * 0.01)
    # without training_s (runs of an older version) the axis says what it counts
    m = metrics_for(["st"])
    plots.training_curves(m[m.metric != "training_s"], tmp_path, "vae", "wall_time")
    assert "incl. evaluations and probes" in visible_axes(drawn[1])[0].get_xlabel()


def test_clipped_or_unresolved_cosine_is_never_a_point(drawn, tmp_path):
    # new format: cosine NaN (unresolved), interval only
    plots.gradient_curves(grads_for(["st"], cosine=0.7, cosine_se=0.3), tmp_path, "vae")
    # old format (no cosine_se): a value of exactly 1 was clipped
    old = grads_for(["gumbel"]).drop(columns=["cosine_se", "cosine_lo", "cosine_hi"]).assign(cosine=1.0)
    plots.gradient_curves(old, tmp_path, "vae")
    for fig in drawn:
        cos_ax = [ax for ax in fig.axes if "cosine" in ax.get_ylabel() or
                  any("cosine" in t.get_text() for t in ax.texts)][0]
        for ln in cos_ax.get_lines():
            assert not len(ln.get_ydata()), "a cosine drawn as a point"
    # a resolved one is a point, with its interval
    plots.gradient_curves(grads_for(["st"], cosine=0.9, cosine_se=0.02), tmp_path, "vae")
    cos_ax = [ax for ax in drawn[-1].axes if "cosine" in ax.get_ylabel()][0]
    assert any(np.allclose(ln.get_ydata(), 0.9) for ln in cos_ax.get_lines())
    assert cos_ax.collections                                   # the ±2 SE bars


def test_a_panel_with_nothing_resolved_is_a_line_of_text(drawn, tmp_path):
    g = grads_for(["st", "gumbel"], bias2=1e-6, bias2_se=1e-5)          # every bias2 < 2 SE
    plots.gradient_curves(g, tmp_path, "vae")
    fig = drawn[0]
    texts = [t.get_text() for ax in fig.axes if not ax.axison for t in ax.texts]
    assert any("bias²" in t and "noise floor" in t for t in texts), texts
    assert not any("bias²" in ax.get_ylabel() for ax in visible_axes(fig))
    # one coordinate (the 1-latent toy): the cosine is ±1 trivially and is not drawn
    one = grads_for(["st"], cosine=1.0, cosine_se=0.0)
    plots.gradient_curves(one, tmp_path, "toy")
    texts = [t.get_text() for ax in drawn[1].axes if not ax.axison for t in ax.texts]
    assert any("trivially" in t for t in texts)


def test_decoder_group_is_shown_when_measured(drawn, tmp_path):
    plots.gradient_curves(grads_for(["st"], groups=("encoder", "decoder")), tmp_path, "vae")
    ylabels = [ax.get_ylabel() for ax in drawn[0].axes]
    assert any(y.startswith("decoder:") for y in ylabels) and any(y.startswith("encoder:") for y in ylabels)


def test_equal_cost_ranks_by_mse_times_cost():
    """gumbel: the smallest variance but a large bias; disarm: unbiased, 10x the variance, twice
    the cost. Ranking by variance x cost would put gumbel first (the old panel); by MSE x cost
    disarm is first."""
    g = pd.concat([grads_for(["gumbel"], bias2=5e-2, bias2_se=1e-3),
                   grads_for(["disarm"], bias2=0.0, bias2_se=1e-4).assign(variance=1e-2, evals=2)])
    ranked = plots.equal_cost(g)
    assert list(ranked["estimator"]) == ["disarm", "gumbel"]
    gum = ranked.set_index("estimator").loc["gumbel"]
    assert gum.mse == pytest.approx(gum["var"] + 5e-2)
    assert ranked.set_index("estimator").loc["disarm", "mse_cost"] == pytest.approx(2e-2)


def test_bias_variance_legend_has_no_overlapping_annotations(drawn, tmp_path):
    plots.bias_variance_scatter(grads_for(["st", "st_gumbel"]), tmp_path, "vae")
    fig = drawn[0]
    assert not any(ax.texts for ax in fig.axes if ax.axison)     # names in the legend, not on points
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"st", "st_gumbel"}


def runs_for(values: dict[str, list[float]], lrs=(1e-3,)):
    rows = []
    for lab, vals in values.items():
        for lr in lrs:
            for seed, v in enumerate(vals):
                rows.append({"run": f"{lab}-{lr}-{seed}", "model.name": "vae", "label": lab,
                             "estimator.name": lab, "status": "completed", "seed": seed,
                             "train.lr": lr, "preset.grid.train.lr": str(list(lrs)),
                             "final.test/bound_1000": -(v + 1000 * lr),
                             "final.valid/bound_10": -(v + 1000 * lr + 5)})
    return pd.DataFrame(rows)


def test_report_wording():
    from discograd.analysis.report import gradient_table, plural
    from discograd.analysis.tables import caption, results_table, to_markdown
    assert plural(1, "run") == "1 run" and plural(2, "run") == "2 runs"
    # one estimator: no "vs best: best"; n = 1: no "± inf"
    one = results_table(runs_for({"st": [100.0]}), at="final", keys=[])
    md = to_markdown(one)
    assert "vs best" not in md and "inf" not in md and "(n = 1)" in md, md
    # two seeds: the caption says how little a 1-degree-of-freedom test says
    two = results_table(runs_for({"st": [100.0, 101.0], "gumbel": [104.0, 106.0]}), at="final", keys=[])
    assert "with 2 seeds a paired t-test has 1 degree of freedom" in caption(two)
    # one number of decimals per column
    three = results_table(runs_for({"st": [100.0, 100.01, 100.02], "gumbel": [104.0, 110.0, 98.0]}),
                          at="final", keys=[])
    cells = [ln.split("|")[4].strip() for ln in to_markdown(three).splitlines()[2:]]
    decimals = {len(c.split(" ± ")[0].split(".")[1]) if "." in c else 0 for c in cells}
    assert len(decimals) == 1, cells
    # the selection column is shown as the table shows its metrics: positive nats
    grid = results_table(runs_for({"st": [100.0, 101.0]}, lrs=(1e-3, 3e-4)), at="final",
                         keys=["train.lr"])
    assert (grid["valid"] > 0).all() and grid["selected on"].iloc[0].startswith("-")
    # the gradient table: "1 run", the equal-cost order, the unresolved-bias sentence
    g = pd.concat([grads_for(["st"], bias2=1e-6, bias2_se=1e-5, runs=1),
                   grads_for(["disarm"], bias2=0.0, bias2_se=1e-5, runs=1).assign(variance=1e-2, evals=2)])
    text = "\n".join(gradient_table(g))
    assert "mean over 2 runs." in text
    assert "mean over 1 run." in "\n".join(gradient_table(grads_for(["st"], runs=1)))
    assert text.index("| st |") < text.index("| disarm |")
    assert "st is biased, but this reference cannot resolve its bias" in text
    assert "disarm is biased" not in text


def test_validation_panel_leaves_out_a_step_0_point_that_would_squeeze_it(drawn, tmp_path):
    """An untrained VAE's bound is far above where training ends: the panel starts after step 0
    and its label gives the step-0 value; when step 0 is close to the rest, it is drawn."""
    m = metrics_for(["st", "gumbel"])
    valid = (m.split == "valid") & (m.metric == "bound_20")
    m.loc[valid & (m.step == 0), "value"] = -500.0          # 325 above the rest (175..150)
    plots.training_curves(m, tmp_path, "vae", "step")
    ax = visible_axes(drawn[0])[-1]
    assert ax.get_ylabel() == "valid −bound_20 (nats)\nstep 0: 500, not drawn"
    drawn_lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert drawn_lines and all(min(ln.get_xdata()) == 500 for ln in drawn_lines)
    assert ax.get_ylim()[1] < 200
    plots.training_curves(metrics_for(["st", "gumbel"]), tmp_path, "vae", "step")
    ax = visible_axes(drawn[1])[-1]
    assert "not drawn" not in ax.get_ylabel()
    assert all(min(ln.get_xdata()) == 0 for ln in ax.get_lines() if not ln.get_label().startswith("_"))
