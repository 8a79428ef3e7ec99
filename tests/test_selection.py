"""Comparisons a reviewer would accept: the statistics (against closed forms and scipy), the
hyperparameter selection of the results table (validation only, never test), the best-validation
model of a run (best.pt, summary.json "best"), paired seeds, and the reproduction command."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as st

from discograd.analysis.stats import compare_with_best, holm, paired_t, t_interval
from discograd.analysis.tables import results_table, select_settings

ROOT = Path(__file__).resolve().parents[1]


# --- statistics ---------------------------------------------------------------------------------
def test_t_interval_matches_the_closed_form():
    v = [1.0, 2.0, 4.0]
    mean, half, n = t_interval(v)
    s = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert n == 3 and mean == pytest.approx(7 / 3)
    assert half == pytest.approx(4.302652729911275 * s / math.sqrt(3), rel=1e-9)   # t_{0.975, 2}
    assert t_interval([5.0]) == (5.0, math.inf, 1)          # one seed: no interval, never a zero one
    assert t_interval([float("nan"), 1.0, 3.0])[2] == 2


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, n = 4000, 4
    hits = 0
    for _ in range(trials):
        m, h, _ = t_interval(list(rng.normal(10.0, 3.0, n)))
        hits += abs(m - 10.0) <= h
    se = math.sqrt(0.95 * 0.05 / trials)
    assert abs(hits / trials - 0.95) < 3 * se, hits / trials
    # the test of the tester: a z interval (1.96) on 4 seeds under-covers, and this check sees it
    z_hits = sum(abs(x.mean() - 10) <= 1.96 * x.std(ddof=1) / 2
                 for x in (rng.normal(10.0, 3.0, n) for _ in range(trials)))
    assert abs(z_hits / trials - 0.95) > 3 * se


def test_paired_t_matches_scipy_and_pairs_by_seed():
    rng = np.random.default_rng(1)
    a = {s: float(x) for s, x in enumerate(rng.normal(0, 1, 6))}
    b = {s: a[s] + 0.3 + float(e) for s, e in enumerate(rng.normal(0, 0.2, 6))}
    b[99] = 1e6                                             # an unpaired seed is ignored
    n, diff, p = paired_t(a, b)
    ref = st.ttest_rel([a[s] for s in range(6)], [b[s] for s in range(6)])
    assert n == 6 and p == pytest.approx(ref.pvalue, rel=1e-10)
    assert diff == pytest.approx(np.mean([a[s] - b[s] for s in range(6)]))
    assert math.isnan(paired_t({0: 1.0}, {0: 2.0})[2])        # one pair: no test


def test_holm_matches_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan")])[0] == 0.5 and math.isnan(holm([0.5, float("nan")])[1])


def test_compare_with_best_marks_ties_and_clear_losers():
    rng = np.random.default_rng(2)
    seed_effect = rng.normal(0, 5, 8)                     # shared by every estimator of a seed
    best = {s: 100 + seed_effect[s] for s in range(8)}
    tie = {s: best[s] + float(rng.normal(0, 0.3)) + 0.05 for s in range(8)}
    loser = {s: best[s] + 2 + float(rng.normal(0, 0.3)) for s in range(8)}
    marks = compare_with_best({"a": best, "b": tie, "c": loser}, higher_is_better=False)
    assert marks["a"]["best"] and marks["b"]["tie"] is True and marks["c"]["tie"] is False
    # unpaired, the seed effect (sd 5) would hide the 2-nat loss: pairing is what finds it
    assert st.ttest_ind(list(loser.values()), list(best.values())).pvalue > 0.05


# --- hyperparameter selection -----------------------------------------------------------------------
def synthetic_runs(rng, test_noise=0.0):
    """2 estimators x lr {a, b} x 3 seeds; validation prefers lr=b for 'st' and lr=a for 'gumbel';
    test says the opposite (so a selection that peeked at test would be caught)."""
    rows = []
    for est, good in (("st", "0.003"), ("gumbel", "0.001")):
        for lr in ("0.001", "0.003"):
            for seed in range(3):
                valid = -100.0 - (0.0 if lr == good else 5.0) + rng.normal(0, 0.1)
                test = -100.0 - (5.0 if lr == good else 0.0) + rng.normal(0, 0.1) + test_noise
                rows.append({"run": f"{est}-{lr}-{seed}", "model.name": "vae", "label": est,
                             "estimator.name": est, "seed": seed, "train.lr": lr, "status": "completed",
                             "preset.grid.train.lr": "[0.001, 0.003]", "best.step": 10,
                             "best.metric": "valid/bound_100", "best.valid/bound_100": valid,
                             "best.test/bound_100": test, "final.valid/bound_100": valid,
                             "final.test/bound_100": test})
    return pd.DataFrame(rows)


def test_selection_uses_validation_only():
    runs = synthetic_runs(np.random.default_rng(0))
    table = results_table(runs).set_index("estimator")
    assert table.loc["st", "setting"] == "train.lr=0.003"
    assert table.loc["gumbel", "setting"] == "train.lr=0.001"
    assert table.loc["st", "test -bound_100 mean"] == pytest.approx(105.0, abs=0.3)   # test at the choice
    # scrambling every test value changes no choice
    for k in range(5):
        scrambled = runs.copy()
        scrambled["best.test/bound_100"] = np.random.default_rng(k).permutation(runs["best.test/bound_100"]) * 3
        chosen = select_settings(scrambled, ["train.lr"], "best")
        assert chosen[("vae", "st")]["setting"] == ("0.003",)
        assert chosen[("vae", "gumbel")]["setting"] == ("0.001",)


def test_a_setting_with_a_diverged_run_is_not_eligible():
    runs = synthetic_runs(np.random.default_rng(0))
    bad = (runs.label == "st") & (runs["train.lr"] == "0.003") & (runs.seed == 1)
    runs.loc[bad, "status"] = "diverged"
    runs.loc[bad, ["best.step", "best.valid/bound_100", "best.test/bound_100"]] = np.nan
    runs["best.step"] = runs["best.step"].where(~bad, 10)     # which_model: best records elsewhere
    chosen = select_settings(runs, ["train.lr"], "best")
    assert chosen[("vae", "st")]["setting"] == ("0.001",) and chosen[("vae", "st")]["excluded"] == 1


def test_the_table_marks_significance_and_states_what_it_shows():
    from discograd.analysis.tables import caption, to_markdown
    runs = synthetic_runs(np.random.default_rng(0))
    table = results_table(runs)
    assert set(table["vs best"]) <= {"best", "≈", "worse"} and (table["vs best"] == "best").sum() == 1
    md = caption(table) + to_markdown(table)
    assert "best validation step" in md and "never on test" in md and "Holm" in md
    assert "train.lr=0.003" in md


# --- the model of the best validation step --------------------------------------------------------
def test_best_validation_step_is_kept_and_evaluated_on_test(tmp_path, cfg_of, monkeypatch):
    """A real VAE run whose validation metric is scripted to peak at step 40 (of 80): best.pt holds
    the step-40 model, summary.json "best" has its test metrics, evaluated exactly as a fresh
    evaluation of best.pt's model does, and they differ from the final model's."""
    from discograd.experiment import build, evaluation
    from discograd.experiment.train import Trainer
    cfg = cfg_of("model=vae", "model.latent_dim=8", "estimator=st", "train.steps=80",
                 "train.batch_size=20", "train.eval_every=20", "train.log_every=20",
                 "eval.samples=3", "eval.final_samples=0", "diagnostics.every=0", "train.lr=0.01")
    real = evaluation.Evaluator.evaluate
    script = {0: -300.0, 20: -200.0, 40: -100.0, 60: -150.0, 80: -120.0}

    def scripted(self, split, samples_list, step):
        out = real(self, split, samples_list, step)
        if split == "valid":
            out["bound_3"] = script[step]
        return out
    monkeypatch.setattr(evaluation.Evaluator, "evaluate", scripted)
    trainer = Trainer(cfg, tmp_path / "run")
    summary = trainer.fit()
    trainer.close()
    best = summary["best"]
    assert best["step"] == 40 and best["metric"] == "valid/bound_3" and best["valid/bound_3"] == -100.0
    kept = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert kept["step"] == 40
    # an independent evaluation of the kept model on test, with the step-40 evaluation stream
    model = build.build_model(cfg)
    model.load_state_dict(kept["model"])
    model.eval()
    data = build.build_data(cfg.data, torch.device("cpu"))
    g = torch.Generator().manual_seed(int(cfg.seed) * 1000003 + 40)
    with torch.no_grad():
        ref = model.evaluate(data.full("test"), 3, generator=g)
    assert best["test/bound_3"] == pytest.approx(ref["bound_3"].mean().item(), rel=1e-6)
    assert best["test/bound_3"] != summary["final"]["test/bound_3"]
    assert summary["final"]["valid/bound_3"] == -120.0


def test_eval_select_none_and_a_model_without_validation_have_no_best(tmp_path):
    for args in (["model=toy"], ["model=vae", "model.latent_dim=4", "eval.select=none",
                                 "eval.final_samples=0", "eval.samples=2"]):
        out = tmp_path / args[-1].replace("=", "_")
        r = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "train.steps=20",
                            "train.eval_every=10", "diagnostics.every=0", "report.run=false",
                            f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads((out / "summary.json").read_text())["best"] is None
        assert not (out / "best.pt").exists()


# --- paired seeds ---------------------------------------------------------------------------------
def test_same_seed_same_initialisation_and_minibatches_whatever_the_estimator(tmp_path, cfg_of):
    from discograd.experiment.train import Trainer
    seen = {}
    for est in ("st", "reinforce", "relax"):
        t = Trainer(cfg_of("model=vae", f"estimator={est}", "data.binarize=dynamic", "train.lr=0.05",
                           "diagnostics.every=0"), tmp_path / est)
        init = torch.cat([p.detach().flatten() for p in t.model.parameters()])
        batches = []
        for _ in range(3):
            x = t.next_batch()
            batches.append(x.clone())
            t.account(*t.train_step(x))            # estimators draw different amounts of noise
        seen[est] = (init, torch.stack(batches))
        t.close()
    for est in ("reinforce", "relax"):
        assert torch.equal(seen[est][0], seen["st"][0])
        assert torch.equal(seen[est][1], seen["st"][1])     # same order and same binarization


# --- one command per published table ------------------------------------------------------------
def test_reproduce_plans_the_grid_per_estimator_and_scales_the_budget():
    from discograd.analysis.reproduce import plan
    p = plan("jang2016_bernoulli", 0.1, 3, ["st", "gumbel"], {"train.lr": ["1e-3", "3e-4"]}, 5, [])
    assert p["steps"] == 10000 and p["eval_every"] == 2000
    assert set(p["jobs"]["st"]["grid"]) == {"train.lr"}                       # st has no tau
    assert set(p["jobs"]["gumbel"]["grid"]) == {"train.lr", "estimator.tau.rate", "estimator.tau.every"}
    assert "train.lr=1e-3,3e-4" in p["jobs"]["st"]["overrides"]
    with pytest.raises(SystemExit, match="--budget"):
        plan("jang2016_bernoulli", 0, 3, None, {}, 5, [])
    with pytest.raises(SystemExit, match="estimator=bogus"):
        plan("jang2016_bernoulli", 0.1, 3, ["bogus"], {}, 5, [])


def test_reproduce_replicas_groups_the_seeds_where_the_estimator_allows_it():
    """--replicas: seed=0 train.replicas=N for an estimator a group can train; the seed sweep for
    one it refuses (relax: parameters of its own)."""
    from discograd.analysis.reproduce import plan
    p = plan("disarm2020_linear", 0.01, 3, ["disarm", "relax"], {}, 5, [], replicas=True)
    assert {"seed=0", "train.replicas=3"} <= set(p["jobs"]["disarm"]["overrides"])
    assert "seed=0,1,2" in p["jobs"]["relax"]["overrides"]
    assert not any(o.startswith("train.replicas") for o in p["jobs"]["relax"]["overrides"])
    plain = plan("disarm2020_linear", 0.01, 3, ["disarm"], {}, 5, [])
    assert "seed=0,1,2" in plain["jobs"]["disarm"]["overrides"]


def test_reproduce_runs_and_writes_the_side_by_side_table(tmp_path):
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "analysis.reproduce", "tucker_toy_045", "--budget", "0.01",
                        "--seeds", "2", "--estimators", "st,reinforce", "--out", str(out),
                        "--set", "diagnostics.every=0", "--set", "+preset.published.st=0.25",
                        "--set", "preset.deviations=[a test deviation]"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    md = (out / "reproduction.md").read_text()
    assert "**Budget: 0.01**" in md and "reduced" in md and "a test deviation" in md
    assert "| toy | st | 2 |" in md and "0.25" in md          # ours with n, next to the published
    assert (out / "analysis" / "report.md").exists() and "Still improving at the end?" in md
    # a rerun resumes: nothing is trained again
    r2 = subprocess.run([sys.executable, "-m", "analysis.reproduce", "tucker_toy_045", "--budget", "0.01",
                         "--seeds", "2", "--estimators", "st,reinforce", "--out", str(out),
                         "--set", "diagnostics.every=0", "--set", "+preset.published.st=0.25",
                         "--set", "preset.deviations=[a test deviation]"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "nothing to do" in r2.stderr + r2.stdout
    # the folder's record keeps both invocations: one command, run twice, wall times together
    record = json.loads((out / "reproduce.json").read_text())
    assert len(record["history"]) == 2
    assert "(run 2 times: each run resumes the last)" in (out / "reproduction.md").read_text()


def test_the_wall_time_of_several_invocations_counts_side_by_side_ones_once():
    from discograd.analysis.reproduce import _total, command_lines
    assert _total([]) is None
    assert _total([{"argv": [], "seconds": 50.0}]) == 50.0                  # an old record
    spans = [{"start": 0.0, "end": 100.0}, {"start": 50.0, "end": 120.0},   # side by side
             {"start": 200.0, "end": 210.0}]                                 # a later session
    assert _total(spans) == 130.0
    assert _total([*spans, {"seconds": 5.0}]) == 135.0
    lines = command_lines([["p", "--estimators", "a"], ["p", "--estimators", "b"]], 3)
    assert lines[0].startswith("Commands (3 invocations into this folder")
    assert lines[-1] == "- `python -m analysis.reproduce p --estimators b`"


def test_a_killed_reproduce_command_still_counts_until_its_last_heartbeat(tmp_path):
    """The record is written at the start and rewritten as the command runs: a command killed
    part-way (SIGKILL, as at a session's end) keeps its entry, and one beside it keeps its own."""
    from discograd.analysis.reproduce import _Heartbeat, record_invocation
    record = tmp_path / "reproduce.json"
    code = ("import sys, time; from pathlib import Path; "
            "from discograd.analysis.reproduce import _Heartbeat; "
            "h = _Heartbeat(Path(sys.argv[1]), ['killed'], every=0.1).__enter__(); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(record)], cwd=ROOT)
    try:
        with _Heartbeat(record, ["beside"], every=0.1):
            deadline = time.time() + 60
            while time.time() < deadline and not any(
                    h["argv"] == ["killed"] and h["seconds"] > 1.0 for h in record_invocation(record)):
                time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    history = record_invocation(record)
    assert sorted(h["argv"][0] for h in history) == ["beside", "killed"]
    killed = next(h for h in history if h["argv"] == ["killed"])
    assert killed["end"] - killed["start"] == pytest.approx(killed["seconds"]) and killed["seconds"] > 1.0
    assert json.loads(record.read_text())["seconds"] >= killed["seconds"]


def _reproduce(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "analysis.reproduce", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_pilot_chooses_each_estimators_grid_point_for_the_full_runs(tmp_path):
    """--pilot DIR: a finished pilot sweep's validation selection (its own results table) picks
    one grid point per estimator; the full runs use only that point, and reproduction.md says so.
    A small VAE on real MNIST, 40 steps, learning rates 0.01 and 1e-6 (the pilot must pick 0.01)."""
    small = ["--set", "model.latent_dim=8", "--set", "train.batch_size=20", "--set", "eval.samples=3",
             "--set", "eval.final_samples=0", "--set", "diagnostics.every=0"]
    pilot = tmp_path / "pilot"
    r = _reproduce("jang2016_bernoulli", "--budget", "0.0004", "--evals", "2", "--seeds", "1",
                   "--estimators", "st,gumbel", "--grid", "train.lr=0.01,1e-6",
                   "--grid", "estimator.tau.rate=1e-4,1e-5", "--grid", "estimator.tau.every=500",
                   "--out", pilot, *small)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_csv(pilot / "table.csv").set_index("estimator")
    assert table.loc["st", "setting"] == "train.lr=0.01"          # 1e-6 barely moves in 40 steps
    full = tmp_path / "full"                 # two commands into one folder, as two processes would
    for name in ("st", "gumbel"):
        r = _reproduce("jang2016_bernoulli", "--budget", "0.0004", "--evals", "2", "--seeds", "2",
                       "--estimators", name, "--pilot", pilot, "--out", full, *small)
        assert r.returncode == 0, r.stderr[-3000:]
    from discograd.analysis.runs import collect
    runs = collect(full).runs
    assert len(runs) == 4 and set(runs.status) == {"completed"}
    ran = pd.read_csv(full / "table.csv").set_index("estimator")
    for name in ("st", "gumbel"):
        got = runs[runs["estimator.name"] == name]
        assert sorted(got.seed) == [0, 1] and got["train.lr"].nunique() == 1
        # one point ran, and it is the pilot table's selected setting (read off the runs' configs)
        assert ran.loc[name, "settings"] == 1
        assert ran.loc[name, "setting"] == table.loc[name, "setting"], name
    md = (full / "reproduction.md").read_text()
    assert "chosen by a pilot sweep on validation" in md and str(pilot) in md
    for name in ("st", "gumbel"):          # the last command names the earlier one's choice too
        assert f"  - {name}: {table.loc[name, 'setting']} (-best.valid/bound_3 " in md, name
    assert "over the grid `train.lr` ∈ {0.01, 1e-6}" in md             # the pilot's grid
    assert json.loads((full / "reproduction.json").read_text())["pilot"]["points"]["st"] == {"train.lr": "0.01"}
    # the pilot as committed to docs/results (its record and table, no run folders) chooses the same
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("table.csv", "reproduction.json"):
        shutil.copy(pilot / name, kept / name)
    r = _reproduce("jang2016_bernoulli", "--budget", "0.0004", "--evals", "2", "--seeds", "2",
                   "--estimators", "st,gumbel", "--pilot", kept, "--out", tmp_path / "again",
                   "--dry-run", *small, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("st", "gumbel"):
        (line,) = [x for x in r.stdout.splitlines() if f" estimator={name} " in x]
        words = table.loc[name, "setting"].split()
        assert all((f" {w} " in line or f" estimator.{w} " in line) for w in words), (words, line)
    r = _reproduce("jang2016_categorical", "--pilot", kept, "--dry-run", timeout=120)
    assert r.returncode != 0 and "ran preset jang2016_bernoulli, not jang2016_categorical" in r.stderr
    # refused before any run: another preset's pilot, an estimator the pilot lacks, --grid with it
    for extra, message in [(["jang2016_categorical"], "ran preset jang2016_bernoulli, not jang2016_categorical"),
                           (["jang2016_bernoulli", "--estimators", "reinforce"], "estimator reinforce has no runs"),
                           (["jang2016_bernoulli", "--grid", "train.lr=1"], "--pilot excludes")]:
        r = _reproduce(*extra, "--pilot", pilot, "--dry-run", timeout=120)
        assert r.returncode != 0 and message in r.stderr, (extra, r.stderr[-2000:])
