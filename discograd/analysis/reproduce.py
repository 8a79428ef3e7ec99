"""``python -m analysis.reproduce PRESET [--budget B] [--seeds N] ...``: one command per published table.

It runs the preset's estimators (``preset.estimators``) x its hyperparameter grid (``preset.grid``:
keys an estimator does not have are skipped for it) x seeds 0..N-1, one Hydra multirun per
estimator into ``OUT/<estimator>/`` (joblib here, submitit on a cluster), then writes
``OUT/reproduction.md``: ours (selected on validation, at the best validation step, mean ± 95 % CI,
significance marks) next to the published numbers, the preset's sources, deviations and unconfirmed
fields, and the budget. ``--budget`` scales ``train.steps`` (a reduced run says so); evaluation and
checkpoint periods follow, with at most ``--evals`` validation evaluations per run. Rerunning the
same command resumes: completed runs are skipped, interrupted ones resume from their checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm", "slurm", "slurm_cpu", "slurm_gpu")


def flat_grid(grid) -> dict[str, list]:
    """``{train: {lr: [a, b]}}`` -> ``{"train.lr": [a, b]}``."""
    out: dict[str, list] = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = list(v) if isinstance(v, (list, tuple)) else [v]
    if grid:
        walk(OmegaConf.to_container(grid, resolve=True) if OmegaConf.is_config(grid) else grid, "")
    return out


def parse_grid_overrides(items: list[str]) -> dict[str, list]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"reproduce: --grid {item!r} is invalid; expected KEY=V1,V2,...")
        key, values = item.split("=", 1)
        out[key] = [v for v in values.split(",") if v]
    return out


def scaled(value: int, budget: float) -> int:
    return max(1, int(round(value * budget)))


def plan(preset: str, budget: float, seeds: int, estimators: list[str] | None,
         grid_override: dict[str, list], max_evals: int, extra: list[str],
         replicas: bool = False, pilot: Path | None = None) -> dict:
    """Everything the runs need, checked before any starts: per estimator, its overrides.
    ``pilot``: a finished pilot sweep of the same preset; each estimator then runs only the grid
    point that the pilot's validation selection chose (:func:`pilot_points`)."""
    from discograd.estimators import ConfigError
    from discograd.experiment.config import compose_config
    from discograd.experiment.build import validate
    if not (budget > 0):
        raise SystemExit(f"reproduce: --budget {budget} is invalid: it must be > 0 (1 = the paper's steps)")
    if seeds < 1:
        raise SystemExit(f"reproduce: --seeds {seeds} is invalid: it must be >= 1")
    try:
        base = compose_config([f"+experiment={preset}", *extra])
    except Exception as e:  # noqa: BLE001 - Hydra's own message names the missing preset
        raise SystemExit(f"reproduce: cannot compose +experiment={preset}: {e}")
    if base.get("preset") is None:
        raise SystemExit(f"reproduce: {preset} is not a paper preset (it sets no preset: block)")
    p = base.preset
    names = estimators or list(p.estimators) or sorted(p.published)
    if not names:
        raise SystemExit(f"reproduce: preset {preset} names no estimators; pass --estimators")
    grid = flat_grid(p.grid)
    grid.update(grid_override)
    chosen = pilot_points(Path(pilot), preset, names) if pilot is not None else None
    tr = base.train
    steps = scaled(int(tr.steps), budget)
    every = max(scaled(int(tr.eval_every), budget), math.ceil(steps / max(1, max_evals)))
    common = [f"+experiment={preset}", f"train.steps={steps}", f"train.eval_every={every}",
              f"train.checkpoint_every={every}",
              f"train.log_every={min(max(scaled(int(tr.log_every), budget), steps // 100), steps)}"]
    probe_every = 0
    if int(base.diagnostics.every) > 0:
        probe_every = max(scaled(int(base.diagnostics.every), budget), every)
        common.append(f"diagnostics.every={probe_every}")
    jobs = {}
    for name in names:
        try:
            cfg = compose_config([*common, f"estimator={name}", *extra])
        except Exception as e:  # noqa: BLE001
            raise SystemExit(f"reproduce: estimator={name} does not compose with {preset}: {e}")
        keys = {k: v for k, v in grid.items() if OmegaConf.select(cfg, k, default=None) is not None}
        if chosen is not None:            # the pilot's point: one value per key it chose
            keys = {k: [chosen["points"][name][k]] for k in keys if k in chosen["points"][name]}
        for point in _points(keys):      # every grid point is a valid config, before any run
            try:
                validate(compose_config([*common, f"estimator={name}", *extra,
                                         *[f"{k}={v}" for k, v in point.items()]]))
            except ConfigError as e:
                raise SystemExit(f"reproduce: estimator={name} with {point}: {e}")
        seeding = [f"seed={','.join(map(str, range(seeds)))}"]
        if replicas and seeds > 1:        # the seeds of one grid point in one process, if it can
            try:
                validate(compose_config([*common, f"estimator={name}", *extra,
                                               f"train.replicas={seeds}"]))
                seeding = ["seed=0", f"train.replicas={seeds}"]
            except ConfigError as e:
                print(f"reproduce: estimator {name} runs its seeds separately: {e}", file=sys.stderr)
        jobs[name] = {"grid": keys, "overrides": [*common, f"estimator={name}", *seeding,
                                                  *[f"{k}={','.join(map(str, v))}" for k, v in keys.items()],
                                                  *extra]}
    return {"preset": preset, "budget": budget, "steps": steps, "paper_steps": int(tr.steps),
            "eval_every": every, "probe_every": probe_every,
            "preset_probe_every": int(base.diagnostics.every), "seeds": seeds, "grid": grid, "jobs": jobs,
            "cfg": base, "pilot": chosen}


def pilot_points(pilot: Path, preset: str, names: list[str]) -> dict:
    """The grid point a finished pilot sweep selects per estimator, on validation, as its own
    results table does (``tables.select_settings``: the best mean over the pilot's seeds of the
    best-validation-step metric, among the points whose runs all completed). Returns
    ``{"points": {name: {key: value}}, "chosen": {name: {"setting", "valid", "metric", "tried",
    "excluded"}}, "runs": n, "budget", "steps"}``; refuses a pilot of another preset, or one
    where an estimator has no eligible point."""
    from .runs import collect, grid_keys
    from .tables import select_settings, which_model
    if not pilot.is_dir():
        raise SystemExit(f"reproduce: --pilot {pilot}: no such folder (a reproduce --out folder)")
    if not any(pilot.rglob(".hydra/config.yaml")) and (pilot / "table.csv").exists() \
            and (pilot / "reproduction.json").exists():
        return pilot_from_record(pilot, preset, names)
    try:
        runs = collect(pilot).runs
    except FileNotFoundError:
        runs = None
    if runs is None or runs.empty:
        raise SystemExit(f"reproduce: --pilot {pilot}: no runs in it (nor a committed table.csv "
                         "and reproduction.json of one)")
    of = set(runs.get("preset.name", []).dropna().astype(str)) if "preset.name" in runs else set()
    if of != {preset}:
        raise SystemExit(f"reproduce: --pilot {pilot} ran preset {', '.join(sorted(of)) or 'none'}, "
                         f"not {preset}")
    keys = grid_keys(runs)
    if not keys:
        raise SystemExit(f"reproduce: --pilot {pilot}: its runs have no grid to choose from")
    try:
        chosen = select_settings(runs, keys, which_model(runs))
    except ValueError as e:
        raise SystemExit(f"reproduce: --pilot {pilot}: {e}")
    by_name = {}
    for (_, label), pick in chosen.items():
        name = str(runs.loc[runs.label == label, "estimator.name"].iloc[0])
        if name in by_name:
            raise SystemExit(f"reproduce: --pilot {pilot}: estimator {name} has several labels "
                             f"({label}, ...): one grid point per estimator cannot be read off")
        by_name[name] = pick
    points, picks = {}, {}
    for name in names:
        pick = by_name.get(name)
        if pick is None or pick["setting"] is None:
            why = "no runs" if pick is None else f"no grid point whose runs all completed ({pick['excluded']} excluded)"
            raise SystemExit(f"reproduce: --pilot {pilot}: estimator {name} has {why}; "
                             f"pilot estimators with a choice: "
                             f"{', '.join(n for n, q in sorted(by_name.items()) if q['setting'] is not None)}")
        points[name] = {k: v for k, v in zip(keys, pick["setting"]) if v != ""}
        picks[name] = {**pick, "setting": points[name]}
    done = runs[runs.status == "completed"]
    steps = int(done["train.steps"].max()) if "train.steps" in done and len(done) else None
    facts = {}
    record = pilot / "reproduction.json"
    if record.exists():
        facts = json.loads(record.read_text())
    return {"path": str(pilot), "points": points, "chosen": picks, "runs": int(len(runs)),
            "completed": int(len(done)), "steps": steps, "budget": facts.get("budget"),
            "grid": facts.get("grid") or {k: sorted(set(map(str, runs[k].dropna()))) for k in keys},
            "seeds": sorted(int(s) for s in runs["seed"].dropna().unique()) if "seed" in runs else []}


def pilot_from_record(pilot: Path, preset: str, names: list[str]) -> dict:
    """:func:`pilot_points` from a pilot's committed record alone (``reproduction.json`` and
    ``table.csv``, as in docs/results/pilots/): the run folders are not kept in git, and the
    table already holds each estimator's selected setting, as ``key=value`` words whose keys drop
    the ``estimator.`` prefix; the record's grid gives the full keys back."""
    import pandas as pd
    facts = json.loads((pilot / "reproduction.json").read_text())
    if facts.get("preset") != preset:
        raise SystemExit(f"reproduce: --pilot {pilot} ran preset {facts.get('preset') or 'none'}, "
                         f"not {preset}")
    grid = facts.get("grid") or {}
    table = pd.read_csv(pilot / "table.csv", keep_default_na=False)
    table = table[table["at"] == "best"] if "at" in table else table
    have = sorted(set(table.estimator[table.setting != ""]))
    points, picks = {}, {}
    for name in names:
        row = table[table.estimator == name]
        if len(row) != 1 or not row.setting.iloc[0]:
            why = "no runs" if row.empty else "no selected grid point"
            raise SystemExit(f"reproduce: --pilot {pilot}: estimator {name} has {why}; "
                             f"pilot estimators with a choice: {', '.join(have)}")
        row = row.iloc[0]
        point = {}
        for word in str(row.setting).split():
            key, value = word.split("=", 1)
            full = key if key in grid else f"estimator.{key}"
            if full not in grid:
                raise SystemExit(f"reproduce: --pilot {pilot}: table.csv's setting {word} for "
                                 f"{name} names no key of its grid ({', '.join(grid)})")
            point[full] = value
        on = str(row["selected on"]).split(" (")[0]                # e.g. -best.valid/bound_100
        metric, sign = (on[1:], -1.0) if on.startswith("-") else (on, 1.0)
        points[name] = point
        picks[name] = {"setting": point, "valid": sign * float(row["valid"]), "metric": metric,
                       "tried": int(row["settings"]), "excluded": 0}
    completed = int((facts.get("status") or {}).get("completed", 0))
    return {"path": str(pilot), "points": points, "chosen": picks,
            "runs": int(sum((facts.get("status") or {}).values())), "completed": completed,
            "steps": facts.get("steps"), "budget": facts.get("budget"), "grid": grid,
            "seeds": list(range(int(facts.get("seeds") or 0)))}


def _points(grid: dict[str, list]) -> list[dict]:
    points = [{}]
    for k, vs in grid.items():
        points = [{**p, k: v} for p in points for v in vs]
    return points


def command(out: Path, name: str, overrides: list[str], launcher: str, jobs: int) -> list[str]:
    launch = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        launch.append(f"hydra.launcher.n_jobs={jobs}")
    return [sys.executable, "-m", "discograd", "-m", *overrides, *launch,
            f"hydra.sweep.dir={out / name}", "report.sweep=false", "train.progress=log"]


def _total(history: list[dict]) -> float | None:
    """Wall time of the invocations together: the union of their [start, end] spans (two that ran
    side by side count once), plus the seconds of any recorded without a span."""
    if not history:
        return None
    spans = sorted((h["start"], h["end"]) for h in history if "start" in h)
    total = sum(h["seconds"] for h in history if "start" not in h and h.get("seconds") is not None)
    end = -math.inf
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


def record_invocation(record: Path, entry: dict | None = None) -> list[dict]:
    """The invocations recorded in OUT/reproduce.json, after adding ``entry`` or replacing its
    earlier version (same start and pid): a running command rewrites its own entry as it goes,
    so a command killed part-way (a session's end) still counts up to its last write. Under a
    lock, written atomically: two commands into one OUT side by side keep both entries."""
    from discograd.files import lock, write_json

    def read() -> list[dict]:
        ran = json.loads(record.read_text()) if record.exists() else {}
        return ran.get("history") or ([{"argv": ran["argv"], "seconds": ran["seconds"]}] if ran else [])
    if entry is None:
        return read()
    with lock(record.with_name(record.name + ".lock")):
        key = (entry["start"], entry["pid"])
        history = [h for h in read() if (h.get("start"), h.get("pid")) != key] + [entry]
        write_json(record, {"argv": entry["argv"], "seconds": _total(history), "history": history})
    return history


class _Heartbeat:
    """``with _Heartbeat(record, argv):`` records the invocation at its start and rewrites its
    end every ``every`` seconds and at the exit (record_invocation)."""

    def __init__(self, record: Path, argv: list[str], every: float = 60.0):
        t0 = time.time()
        self.record, self.every, self._stop = record, every, threading.Event()
        self.entry = {"argv": argv, "seconds": 0.0, "start": t0, "end": t0, "pid": os.getpid()}
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def write(self) -> None:
        self.entry["end"] = time.time()
        self.entry["seconds"] = self.entry["end"] - self.entry["start"]
        record_invocation(self.record, dict(self.entry))

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self.write()

    def __enter__(self):
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.write()


def write_reproduction(out: Path, p: dict, commands: list[list[str]], seconds: float | None,
                       invocations: int = 1) -> Path:
    """OUT/reproduction.md (and OUT/analysis/: report.md, figures, tidy tables)."""
    from .report import make_report
    from .runs import collect
    from .tables import caption, results_table, to_markdown
    col = collect(out)
    runs = col.runs
    # the grid keys of the runs made so far (a key of one estimator only appears with its runs)
    keys = sorted({k for j in p["jobs"].values() for k in j["grid"]} & set(runs.columns))
    report = make_report(out, out / "analysis", select=keys)
    table = results_table(runs, keys=keys)
    at = table["at"].dropna().iloc[0] if "at" in table and table["at"].notna().any() else "final"
    pre = p["cfg"].preset
    reduced = p["budget"] < 1
    lines = [f"# Reproduction: `{p['preset']}` — {pre.source}", "",
             *command_lines(commands, invocations), "",
             f"- **Budget: {p['budget']:g}** of the paper's steps: {p['steps']} of {p['paper_steps']} "
             + ("(**reduced**: numbers are not comparable to the published ones at face value)"
                if reduced else "(full)"),
             f"- Seeds: 0..{p['seeds'] - 1}; " + (
                 f"validation every {p['eval_every']} steps; the best validation step's model is "
                 "the one reported (eval.select)." if at == "best" else
                 f"evaluation every {p['eval_every']} steps; the final model is the one reported "
                 "(no validation metric to select a step on).")
             + (f" Gradient diagnostics every {p['probe_every']} steps." if p.get("probe_every") else ""),
             *grid_lines(p),
             f"- Published metric: `{pre.metric}`; protocol: {pre.protocol}",
             f"- Runs: {len(runs)} ({', '.join(f'{n} {s}' for s, n in runs.status.value_counts().items())})"
             + (f"; wall time {'of this command' if invocations == 1 else f'of its {invocations} invocations (side by side counted once)'} "
                f"{seconds / 60:.1f} min" if seconds else ""),
             "", "## Ours next to the published numbers", "", caption(table), "", to_markdown(table),
             "## Deviations from the source (deliberate or unavoidable)", ""]
    lines += [f"- {d}" for d in pre.deviations] or ["- none listed"]
    if p.get("probe_every") and p["probe_every"] != p.get("preset_probe_every"):
        lines.append(f"- at this budget the periods are scaled: the runs probed every "
                     f"{p['probe_every']} steps, not the preset's {p['preset_probe_every']} "
                     "(a deviation above that quotes the preset's period means that one)")
    lines += ["", "## Fields no primary source confirmed", ""]
    lines += [f"- {d}" for d in pre.unconfirmed] or ["- none"]
    conv = convergence_table(col, keys)
    conv.to_csv(out / "convergence.csv", index=False)
    rows = convergence(col, keys)
    lines += ["", "## Still improving at the end?", ""]
    if len(rows) > 2:
        lines += ["The evaluated metric (validation; test where there is no validation split) at "
                  "the last two evaluations of the selected runs (mean over seeds), and its change "
                  "per 1000 steps: a large change says the budget, not the estimator, limits the "
                  "number.", "", *rows]
    else:
        lines += ["Not measurable: the runs have fewer than two evaluations."]
    lines += ["", f"Figures, tidy tables and the full report: [analysis/report.md]({report.relative_to(out)}).", ""]
    path = out / "reproduction.md"
    path.write_text("\n".join(lines))
    # the facts docs/results/README.md is written from (analysis.results_index), beside table.csv
    facts = {"preset": p["preset"], "source": str(pre.source), "metric": str(pre.metric),
             "budget": p["budget"], "steps": p["steps"], "paper_steps": p["paper_steps"],
             "seeds": p["seeds"], "eval_every": p["eval_every"], "probe_every": p.get("probe_every", 0),
             "at": at, "runs": int(len(runs)), "status": {str(k): int(v) for k, v in
                                                          runs.status.value_counts().items()},
             "seconds": seconds, "grid": {k: list(map(str, v)) for k, v in p["grid"].items()},
             "argv": list(commands[-1]), "commands": [list(c) for c in commands],
             "invocations": invocations, "pilot": p.get("pilot")}
    (out / "reproduction.json").write_text(json.dumps(facts, indent=1) + "\n")
    if not col.grad_stats.empty:           # the equal-cost view at the last probe, per estimator
        from . import plots
        from .report import figure_rows
        ids = selected_runs_of(col, keys)
        g = col.grad_stats[col.grad_stats.run.isin(ids)]
        if not g.empty:
            g, _ = figure_rows(g)
            plots.equal_cost(g).assign(step=int(g.step.max())).to_csv(out / "gradients.csv", index=False)
    table.to_csv(out / "table.csv", index=False)
    return path


def command_lines(commands: list[list[str]], invocations: int) -> list[str]:
    """The command that made the folder; or the commands, when several ran into it (estimators
    apart, or sessions resuming one another)."""
    def show(c):
        return f"`python -m analysis.reproduce {' '.join(shlex.quote(a) for a in c)}`"
    if len(commands) == 1:
        return [f"Command: {show(commands[0])}" + (f" (run {invocations} times: each run resumes "
                                                    "the last)" if invocations > 1 else "")]
    return [f"Commands ({invocations} invocations into this folder, in this order; a rerun "
            "resumes, so together they ran every run once):", "",
            *[f"- {show(c)}" for c in commands]]


def grid_lines(p: dict) -> list[str]:
    """The reproduction.md lines that say how each estimator's hyperparameters were chosen."""
    from .tables import _describe, positive_nats
    def show(g):
        return ", ".join(f"`{k}` ∈ {{{', '.join(map(str, v))}}}" for k, v in g.items()) or "none"
    pil = p.get("pilot")
    if not pil:
        return ["- Grid (selected per estimator on validation): " + show(p["grid"])]
    grid = show(pil["grid"])
    steps = f"{pil['steps']} steps" + (f" (budget {pil['budget']:g})" if pil.get("budget") else "")
    lines = [f"- Grid point per estimator chosen by a pilot sweep on validation: `{pil['path']}` "
             f"({pil['completed']} of {pil['runs']} runs completed, {steps}, seeds "
             f"{', '.join(map(str, pil['seeds']))}), over the grid {grid}; each estimator here "
             "runs only its chosen point:"]
    for name, c in pil["chosen"].items():
        sign = -1.0 if positive_nats(c["metric"]) else 1.0
        setting = _describe(list(c["setting"]), tuple(c["setting"].values()))
        lines.append(f"  - {name}: {setting} ({'-' if sign < 0 else ''}{c['metric']} "
                     f"{sign * c['valid']:.2f}, best of {c['tried']} points"
                     + (f"; {c['excluded']} excluded: a run did not complete" if c["excluded"] else "")
                     + ")")
    return lines


def selected_runs_of(col, keys: list[str]) -> set[str]:
    from .report import selected_runs
    from .tables import which_model
    return selected_runs(col.runs, keys, which_model(col.runs)) if keys else set(col.runs.run)


def convergence_table(col, keys: list[str]):
    """Per estimator label (its selected runs): the evaluated metric (validation; test where
    there is no validation split) at its last two evaluations, mean over seeds, shown as the
    table shows it (bounds as positive nats), and its change per 1000 steps (``convergence.csv``)."""
    import pandas as pd
    from .report import selected_runs
    from .tables import positive_nats, which_model
    ids = selected_runs(col.runs, keys, which_model(col.runs)) if keys else set(col.runs.run)
    split = "valid" if (col.metrics.split == "valid").any() else "test"
    m = col.metrics[col.metrics.run.isin(ids) & (col.metrics.split == split)]
    rows = []
    for label, g in m.groupby("label"):
        name = next((n for n in sorted(g.metric.unique()) if n.startswith("bound_")), None) or g.metric.iloc[0]
        g = g[g.metric == name]
        steps = sorted(g.step.unique())
        if len(steps) < 2:
            continue
        a, b = steps[-2], steps[-1]
        sign = -1.0 if positive_nats(name) else 1.0                     # bounds as positive nats
        va, vb = sign * g[g.step == a].value.mean(), sign * g[g.step == b].value.mean()
        rows.append({"estimator": label, "metric": f"{split}/{'-' if sign < 0 else ''}{name}",
                     "nats": sign < 0, "step": int(a), "value": float(va), "last step": int(b),
                     "last value": float(vb), "change per 1000 steps": float((vb - va) / (b - a) * 1000)})
    return pd.DataFrame(rows)


def convergence(col, keys: list[str]) -> list[str]:
    """Markdown rows of :func:`convergence_table`."""
    t = convergence_table(col, keys)
    split = t["metric"].iloc[0].split("/")[0] if len(t) else "valid"
    rows = [f"| estimator | {split} metric | step | value | last step | value | change per 1000 steps |",
            "|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        d = 2 if r["nats"] or abs(r["last value"]) >= 10 else 4   # nats to 0.01; a small metric to 4 places
        rows.append(f"| {r.estimator} | {r.metric.split('/', 1)[1]} | {r.step} | {r.value:.{d}f} | "
                    f"{r['last step']} | {r['last value']:.{d}f} | {r['change per 1000 steps']:+.{d}f} |")
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m analysis.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help="a paper preset in discograd/configs/experiment/ (e.g. arm2019_linear)")
    ap.add_argument("--budget", type=float, default=1.0, help="fraction of the paper's steps (default 1)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--estimators", default=None, help="comma-separated (default: the preset's)")
    ap.add_argument("--replicas", action="store_true",
                    help="train the seeds of each grid point together in one process "
                         "(train.replicas=N), for the estimators that allow it")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="replace one grid key's values (repeatable), e.g. train.lr=1e-3,3e-4")
    ap.add_argument("--no-grid", action="store_true", help="no hyperparameter grid: the preset's values")
    ap.add_argument("--evals", type=int, default=10, help="at most this many validation evaluations per run")
    ap.add_argument("--launcher", default="joblib", choices=LAUNCHERS)
    ap.add_argument("--jobs", type=int, default=2, help="parallel jobs of the joblib launcher")
    ap.add_argument("--out", default=None, help="output folder (default reproductions/PRESET-bB-sN)")
    ap.add_argument("--report-only", action="store_true", help="only (re)write the tables from OUT")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--two-phase", action="store_true",
                    help="train without the final K-sample test bound (eval.final_samples=0), then "
                         "compute it only for the runs the validation selection keeps "
                         "(python -m analysis.final_bound --selected)")
    ap.add_argument("--pilot", default=None, metavar="DIR",
                    help="a finished pilot sweep of this preset (a reproduce --out folder, e.g. at "
                         "--budget 0.1 --seeds 1): each estimator runs only the grid point the "
                         "pilot's validation selection chose; reproduction.md says which")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="an extra config override for every run (repeatable), e.g. diagnostics.every=0")
    a = ap.parse_args(argv)
    final_samples = None
    if a.two_phase:        # phase 1 trains without the expensive bound; phase 2 below adds it
        from discograd.experiment.config import compose_config
        final_samples = int(compose_config([f"+experiment={a.preset}", *a.overrides]).eval.final_samples)
        a.overrides = [*a.overrides, "eval.final_samples=0"]
    if a.pilot and (a.no_grid or a.grid):
        raise SystemExit("reproduce: --pilot excludes --no-grid and --grid (the pilot chooses the "
                         "grid point of each estimator)")
    grid_override = parse_grid_overrides(a.grid)
    p = plan(a.preset, a.budget, a.seeds, a.estimators.split(",") if a.estimators else None,
             grid_override, a.evals, a.overrides, a.replicas, a.pilot)
    if a.no_grid:
        for j in p["jobs"].values():
            j["overrides"] = [o for o in j["overrides"] if o.split("=")[0] not in j["grid"]]
            j["grid"] = {}
        p["grid"] = {}
    out = Path(a.out or f"reproductions/{a.preset}-b{a.budget:g}-s{a.seeds}")
    cmds = {name: command(out, name, j["overrides"], a.launcher, a.jobs) for name, j in p["jobs"].items()}
    if a.dry_run:
        for c in cmds.values():
            print(shlex.join(c))
        return 0
    record = out / "reproduce.json"
    if not a.report_only:
        out.mkdir(parents=True, exist_ok=True)
        with _Heartbeat(record, argv):
            for name, c in cmds.items():
                print(f"reproduce: {name}: {shlex.join(c[2:])}", flush=True)
                r = subprocess.run(c)
                if r.returncode != 0:          # a failed job: the table still shows what finished
                    print(f"reproduce: estimator {name}: the multirun exited with {r.returncode}",
                          file=sys.stderr)
            if final_samples:
                from .final_bound import main as final_bound
                print(f"reproduce: phase 2: the {final_samples}-sample test bound of the selected runs",
                      flush=True)
                final_bound([str(out), "--samples", str(final_samples), "--selected"])
    # the commands that ran the runs (for --report-only): a reproduction that spans sessions, or
    # whose estimators ran as separate commands, sums their wall times and lists each command
    history = record_invocation(record)
    if p.get("pilot"):
        # the table shows every estimator in OUT, those of earlier invocations too (--estimators
        # split across commands): name the pilot's choice for each, not only this command's
        ran = set(p["jobs"]) | {d.parent.name for d in out.glob("*/multirun.yaml")}
        shown = [n for n in dict.fromkeys([*(p["cfg"].preset.get("estimators") or []), *p["jobs"],
                                           *sorted(ran)]) if n in ran]
        if set(shown) != set(p["jobs"]):
            try:
                p["pilot"] = pilot_points(Path(a.pilot), a.preset, shown)
            except SystemExit:          # one the pilot did not run (ran without --pilot): as planned
                pass
    commands = list(dict.fromkeys(tuple(h["argv"]) for h in history)) or [tuple(argv)]
    seconds = _total(history)
    try:
        path = write_reproduction(out, p, [list(c) for c in commands], seconds, len(history))
    except FileNotFoundError as e:
        print(f"reproduce: nothing to report: {e}", file=sys.stderr)
        return 1
    print(f"reproduction: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
