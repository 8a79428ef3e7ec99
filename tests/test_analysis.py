"""Analysis on a small real sweep produced here; the joblib launcher."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 estimators x 2 seeds of the toy preset (with diagnostics), plus a copy of one run whose
    summary.json is removed: a run that was killed before finishing."""
    tmp = tmp_path_factory.mktemp("sweep")
    sh(str(ROOT / "run.py"), "-m", "+experiment=quick_toy", "estimator=st,reinforce", "seed=0,1",
       "train.steps=200", "diagnostics.every=100", "diagnostics.samples=20",
       f"hydra.sweep.dir={tmp / 'sweep'}", cwd=tmp)
    killed = tmp / "sweep" / "killed"
    shutil.copytree(tmp / "sweep" / "0", killed)
    (killed / "summary.json").unlink()
    out = tmp / "report"
    sh("-m", "analysis", str(tmp / "sweep"), "--out", str(out), cwd=ROOT)
    return tmp / "sweep", out


def test_tidy_tables_cover_every_run(sweep):
    path, out = sweep
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 5
    assert sorted(runs.status) == ["completed"] * 4 + ["missing"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics.run) == set(runs.run)
    grads = pd.read_csv(out / "grad_stats.csv")
    assert {"st", "reinforce", "gumbel", "st_gumbel"} == set(grads.estimator)   # trained + basic
    assert {"label", "step", "variance", "bias2"} <= set(grads.columns)


def test_every_plot_exists_and_is_not_empty(sweep):
    path, out = sweep
    stems = ["curves_step_toy", "curves_wall_time_toy", "gradients_toy", "bias_variance_toy"]
    for stem in stems:
        for ext in ("png", "pdf"):
            p = out / f"{stem}.{ext}"
            assert p.exists() and p.stat().st_size > 5000, p
    report = (out / "report.md").read_text()
    for stem in stems:
        assert f"({stem}.png)" in report
    assert "did not complete" in report and "killed" in report and "missing" in report
    # the gradient table of the last probe, and the loss panel's labels say what each loss is
    assert "Gradient diagnostics at the last probe" in report
    assert "### toy, runs trained with st" in report and "| st | no | trained |" in report
    assert "| reinforce | yes | none |" in report          # a comparator in the st runs
    # the sweep's own report, written by the Hydra callback when the last job ended
    assert (path / "analysis" / "report.md").exists()


def test_loss_panel_labels_say_which_quantity_each_loss_is():
    from discograd.analysis.plots import loss_quantity
    assert loss_quantity("gumbel") == "f at relaxed samples"
    assert loss_quantity("vimco samples=5") == "the S-sample bound"
    assert loss_quantity("st_gumbel") == loss_quantity("rebar") == "f at exact samples"


def test_bias2_below_the_noise_floor_is_an_upper_limit():
    from discograd.analysis.plots import bias2_summary
    g = pd.DataFrame({"estimator": ["a", "a", "b", "b"], "bias2": [1.0, 1.2, -0.1, 0.05],
                      "bias2_se": [0.1, 0.1, 0.1, 0.1]})
    agg = bias2_summary(g, ["estimator"]).set_index("estimator")
    assert agg.loc["a", "b2"] == pytest.approx(1.1)
    assert agg.loc["a", "b2_se"] == pytest.approx((0.02 ** 0.5) / 2)       # SE of a mean of two
    assert not agg.loc["a", "floor"] and agg.loc["b", "floor"]
    assert agg.loc["b", "upper"] == pytest.approx(2 * agg.loc["b", "b2_se"])   # mean < 0: 0 + 2 SE


def test_table_equals_a_pandas_computation(sweep):
    path, out = sweep
    table = pd.read_csv(out / "table.csv")
    import json
    finals = []
    for run in sorted(path.glob("[0-9]*")):
        s = json.loads((run / "summary.json").read_text())
        finals.append({"estimator": s["estimator"]["name"], "v": s["final"]["test/exact_loss"]})
    expected = pd.DataFrame(finals).groupby("estimator")["v"].agg(["mean", "std", "count"])
    for est, row in expected.iterrows():
        t = table[table.estimator == est].iloc[0]
        assert t["n"] == row["count"] == 2
        assert t["test exact_loss mean"] == pytest.approx(row["mean"], rel=1e-12)
        assert t["test exact_loss std"] == pytest.approx(row["std"], rel=1e-12)
    md = (out / "table.md").read_text()
    tex = (out / "table.tex").read_text()
    assert "reinforce" in md and r"\begin{tabular}" in tex


def test_published_column_from_a_preset(tmp_path):
    sh(str(ROOT / "run.py"), "+experiment=tucker_toy_045", "estimator=st", "train.steps=20",
       "diagnostics.every=0", "+preset.published.st=0.2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    from discograd.analysis.runs import collect
    from discograd.analysis.tables import results_table
    table = results_table(collect(tmp_path).runs)
    assert table.loc[0, "published"] == 0.2


def test_joblib_multirun_of_two_jobs(tmp_path):
    sh(str(ROOT / "run.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=toy",
       "estimator=st", "seed=0,1", "train.steps=20", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    from discograd.analysis.runs import collect
    runs = collect(tmp_path / "s").runs
    assert sorted(runs.seed) == [0, 1] and (runs.status == "completed").all()


def test_analysis_of_an_empty_folder_fails_clearly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "no run folders" in r.stderr


def test_submitit_local_multirun_runs_the_cluster_code_path(tmp_path):
    """hydra/launcher=submitit_local pickles the job and runs it in a fresh process through
    submitit, as on SLURM (needs the package installed, as the README's commands do)."""
    sh(str(ROOT / "run.py"), "-m", "hydra/launcher=submitit_local", "model=toy", "estimator=st",
       "seed=0,1", "train.steps=20", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    from discograd.analysis.runs import collect
    runs = collect(tmp_path / "s").runs
    assert sorted(runs.seed) == [0, 1] and (runs.status == "completed").all()
    assert list((tmp_path / "s" / ".submitit").iterdir())


def test_tensorboard_event_files_next_to_the_csvs(tmp_path):
    out = tmp_path / "run"
    sh(str(ROOT / "run.py"), "model=toy", "estimator=st", "train.steps=30", "train.log_every=10",
       "logger.tensorboard=true", f"hydra.run.dir={out}", cwd=tmp_path)
    events = list(out.glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [10, 20, 30]
