"""``python -m analysis.results_index [DIR]``: writes ``DIR/README.md`` (default ``docs/results``)
from the committed data of every reproduction folder in DIR, so that its prose cannot drift from
its tables: every number on the page is read from a folder's files, and every sentence that states
one is written here.

A reproduction folder is what ``python -m analysis.reproduce ... --out FOLDER`` leaves, of which
these files are committed: ``reproduction.json`` (budget, steps, seeds, runs, wall time),
``table.csv`` (ours, published, significance marks, best step), ``convergence.csv`` (the evaluated
metric at the last two evaluations) and, with gradient diagnostics, ``gradients.csv`` (variance,
bias², MSE and MSE x evals at the last probe). Where FOLDER's run folders are committed too (the
command's ``--out``, relative to the repository that holds DIR: configs, logs, metrics and
summary.json, never checkpoints), the section links them. Hand-written context goes in ``DIR/notes.md``,
which is copied in verbatim and may state no number (tests/test_results_docs.py checks both that
and that README.md is what this module writes from the committed files).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from .tables import column_decimals, positive_nats

OTHER = [("layered.md", "latents in layers: short single-seed runs of every estimator on the "
                        "two-layer VAE and the Bernoulli and categorical SBN"),
         ("reinmax2023_poly.md", "ReinMax's polynomial programming, a multirun at the full "
                                 "protocol (no published numbers to compare)")]


def folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/reproduction.json"))


def _join(items: list[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _pct(budget: float) -> str:
    return f"{budget * 100:g} %"


def _duration(seconds) -> str:
    return "" if seconds is None or pd.isna(seconds) else f"{seconds / 60:.0f} min"


class Section:
    """One reproduction folder: its facts, table and the sentences they support."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.facts = json.loads((folder / "reproduction.json").read_text())
        self.table = pd.read_csv(folder / "table.csv")
        conv = folder / "convergence.csv"
        self.conv = pd.read_csv(conv) if conv.exists() else pd.DataFrame()
        grads = folder / "gradients.csv"
        self.grads = pd.read_csv(grads) if grads.exists() else pd.DataFrame()
        metric = str(self.facts["metric"]).split()[0]          # e.g. test/bound_1000
        name = metric.split("/", 1)[1]
        self.col = f"test -{name}" if name.startswith("bound_") else f"test {name}"
        self.nats = positive_nats(name)
        self.unit = " nats" if self.nats else ""
        self.d = column_decimals(self.table[f"{self.col} mean"],
                                 self.table.get(f"{self.col} ci95", pd.Series(dtype=float)))
        from discograd.models.base import higher_is_better
        self.higher = False if self.nats else higher_is_better(metric)   # bounds shown as positive nats
        self.t = self.table.sort_values(f"{self.col} mean", ascending=not self.higher).reset_index(drop=True)

    def v(self, x: float) -> str:
        return f"{x:.{self.d}f}"

    def index_row(self) -> str:
        f = self.facts
        return (f"| `{f['preset']}`: {f['source']} | {f['steps']} of {f['paper_steps']} steps "
                f"({_pct(f['budget'])}) | {f['seeds']} | {f['runs']} | {_duration(f.get('seconds'))} | "
                f"[{self.folder.name}]({self.folder.name}/reproduction.md) |")

    def table_lines(self) -> list[str]:
        pub = "published" in self.t and self.t["published"].notna().any()
        head = ["estimator", f"ours, {self.col} (± 95 % CI)"]
        if pub:
            head += ["published", "ours − published"]
        steps = "best step" in self.t and self.t["best step"].notna().any()
        head += ["vs best"] + (["best step"] if steps else [])
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in self.t.iterrows():
            cells = [str(r.estimator), f"{self.v(r[f'{self.col} mean'])} ± {self.v(r[f'{self.col} ci95'])}"]
            if pub:
                p = r.get("published")
                cells += ["" if pd.isna(p) else f"{p:g}",
                          "" if pd.isna(p) else f"{r[f'{self.col} mean'] - p:+.{self.d}f}"]
            vb = r.get("vs best")
            cells += ["" if pd.isna(vb) else str(vb)]
            if steps:
                cells.append("" if pd.isna(r.get("best step")) else str(int(r["best step"])))
            out.append("| " + " | ".join(cells) + " |")
        return out

    def sentences(self) -> list[str]:
        f, t, out = self.facts, self.t, []
        m = f"{self.col} mean"
        best = t.iloc[0]
        ties = [e for e, vb in zip(t.estimator, t.get("vs best", [])) if vb == "≈"]
        worse = [e for e, vb in zip(t.estimator, t.get("vs best", [])) if vb == "worse"]
        s = f"{best.estimator} has the best mean ({self.v(best[m])}{self.unit})"
        if ties:
            s += f"; {_join(ties)} {'is' if len(ties) == 1 else 'are'} not distinguishable from it"
        if worse:
            s += (f"; {_join(worse)} {'is' if len(worse) == 1 else 'are'} significantly behind it "
                  "(paired t over seeds, Holm-corrected)")
        out.append(s + ".")
        if f["seeds"] < 5:
            dof = f["seeds"] - 1
            out.append(f"With {f['seeds']} seeds these marks rest on {dof} degree{'' if dof == 1 else 's'} "
                       "of freedom: they say the seeds agree, not that the order would hold for others.")
        if "published" in t and t["published"].notna().sum() >= 2:
            pub = t.dropna(subset=["published"])
            ours = list(pub.sort_values(m, ascending=not self.higher).estimator)
            theirs = list(pub.sort_values("published", ascending=not self.higher, kind="stable").estimator)
            pv = dict(zip(pub.estimator, pub["published"]))
            pairs = [(a, b) for i, a in enumerate(ours) for b in ours[i + 1:]]
            # a pair is in the other order only when the published numbers differ (ties are not)
            flipped = [(a, b) for a, b in pairs
                       if (pv[a] < pv[b] if self.higher else pv[a] > pv[b])]
            if not flipped:
                out.append(f"Ours orders the estimators as the published numbers do, best first: "
                           f"{', '.join(ours)}.")
            else:
                out.append(f"Best first, ours orders the estimators {', '.join(ours)}; the published "
                           f"numbers {', '.join(theirs)}, ties kept in our order ({len(flipped)} of "
                           f"{len(pairs)} pairs in the other "
                           f"order: {_join([f'{a}/{b}' for a, b in flipped])}).")
            out.append(self.inside(pub))
            gap = pub[m] - pub["published"]
            if (gap > 0).all() and not self.higher:
                out.append(f"Every one of our numbers is above its published counterpart, by "
                           f"{self.v(gap.min())} to {self.v(gap.max())}{self.unit} "
                           "(lower is better); "
                           f"the runs had {_pct(f['budget'])} of the paper's steps.")
            else:
                out.append(f"Ours minus published ranges from {self.v(gap.min())} to "
                           f"{self.v(gap.max())}{self.unit}.")
        if f.get("at") == "best" and "best step" in t:
            last = int(f["steps"])
            early = t[t["best step"].notna() & (t["best step"] < last)]
            n = int(t["best step"].notna().sum())
            if early.empty:
                out.append(f"For every estimator the best validation step is the last one (step "
                           f"{last}): the reported model is the final one.")
            else:
                named = [f"{e} (median step {int(b)})" for e, b in zip(early.estimator, early["best step"])]
                out.append(f"The best validation step is the last one (step {last}) for "
                           f"{n - len(early)} of {n} estimators; for {_join(named)} it is earlier: "
                           "the validation metric got worse after it.")
        if not self.conv.empty:
            c = self.conv.set_index("estimator")["change per 1000 steps"]
            metric = self.conv["metric"].iloc[0]
            lower_better = bool(self.conv["nats"].iloc[0]) or "loss" in metric
            improving = c[c < 0] if lower_better else c[c > 0]
            getting_worse = c.drop(improving.index)
            dp = 2 if self.nats else 4
            if len(improving):
                out.append(f"At the end, {metric} was still improving for {len(improving)} of "
                           f"{len(c)} estimators, by {abs(improving).min():.{dp}f} to "
                           f"{abs(improving).max():.{dp}f}{self.unit} per 1000 steps between the "
                           "last two evaluations"
                           + (f"; it got worse for {_join(list(getting_worse.index))}" if len(getting_worse) else "")
                           + ".")
            elif len(getting_worse):
                out.append(f"Between the last two evaluations, {metric} got worse for every estimator.")
        if not self.grads.empty:
            g = self.grads
            by_var = list(g.sort_values("var").estimator)
            by_cost = list(g.estimator)                        # gradients.csv is in MSE x evals order
            step = int(g["step"].iloc[0])
            out.append(f"At the last probe (step {step}) the encoder gradient variance ranks "
                       f"{' < '.join(by_var)}, and the mean squared error at equal f-evaluations "
                       f"(MSE × evals) ranks {' < '.join(by_cost)}.")
            biased_unresolved = g[g["floor"] & ~g["unbiased"]]
            if len(biased_unresolved):
                out.append(f"The reference could not resolve the bias of "
                           f"{_join(list(biased_unresolved.estimator))} (bias² below its noise "
                           "floor), so the MSE ranking counts none for them: a lower limit.")
        return out

    def inside(self, pub: pd.DataFrame) -> str:
        """Row by row: whether each published number falls inside our 95 % interval, and where
        it does not, on which side (ours worse or better)."""
        m, ci = f"{self.col} mean", f"{self.col} ci95"
        inside, worse, better, open_ = [], [], [], []
        for _, r in pub.iterrows():
            half = r.get(ci)
            if pd.isna(half) or not math.isfinite(half):
                open_.append(r.estimator)
            elif abs(r[m] - r["published"]) <= half:
                inside.append(r.estimator)
            elif (r[m] < r["published"]) == self.higher:
                worse.append(r.estimator)
            else:
                better.append(r.estimator)
        s = ("The published number falls inside our 95 % interval for "
             + (_join(inside) if inside else "no estimator"))
        outside = ([f"{_join(worse)} (ours worse)"] if worse else []) + \
                  ([f"{_join(better)} (ours better)"] if better else [])
        if outside:
            s += "; outside it for " + " and ".join(outside)
        if open_:
            s += f"; {_join(open_)} {'has' if len(open_) == 1 else 'have'} no interval (one seed)"
        return s + "."

    def runs_folder(self) -> str | None:
        """The run folders behind this table, where they are committed: the ``--out`` of its
        command, relative to the repository holding ``docs/results/<folder>`` (None otherwise)."""
        argv = [str(a) for a in self.facts.get("argv") or []]
        parents = self.folder.resolve().parents
        if "--out" not in argv[:-1] or len(parents) < 3:
            return None
        out = argv[argv.index("--out") + 1]
        return out if any((parents[2] / out).glob("*/*/summary.json")) else None

    def lines(self) -> list[str]:
        f = self.facts
        runs = self.runs_folder()
        where = ""
        if runs is not None:               # README.md is two folders below the repository
            where = f" Its run folders (configs, logs, metrics; no checkpoints): [{runs}](../../{runs})."
        st = ", ".join(f"{n} {k}" for k, n in sorted(f["status"].items()))
        return [f"### `{f['preset']}`", "", f"{str(f['source']).rstrip('.')}. Budget {f['steps']} of the paper's "
                f"{f['paper_steps']} steps ({_pct(f['budget'])}), seeds 0 to {f['seeds'] - 1}, "
                f"{f['runs']} runs ({st}), {_duration(f.get('seconds'))} on this project's CPU. "
                f"Details: [{self.folder.name}/reproduction.md]({self.folder.name}/reproduction.md)."
                + where,
                "", *self.table_lines(), "", *[f"- {s}" for s in self.sentences()], ""]


def render(root: Path) -> str:
    sections = [Section(f) for f in folders(root)]
    lines = ["# Reproduced tables", "",
             "<!-- written by `python -m analysis.results_index docs/results` from the committed "
             "files of each folder; edit notes.md or the generator, not this page -->", "",
             "Each folder was written by the `python -m analysis.reproduce` command quoted at the "
             "top of its `reproduction.md`: the report, figures and tables of the runs. Checkpoints "
             "are never committed; where a table's run folders are (configs, logs, metrics), its "
             "section links them and rerunning its command finds every run complete; elsewhere "
             "rerunning the command makes them again. This "
             "page is written from each folder's `reproduction.json`, `table.csv`, "
             "`convergence.csv` and `gradients.csv`: every number below is read from them.", "",
             "| table | budget | seeds | runs | wall time | folder |", "|---|---|---|---|---|---|",
             *[s.index_row() for s in sections], "",
             "## What each table says", ""]
    for s in sections:
        lines += s.lines()
    notes = root / "notes.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    lines += ["## Other results", ""]
    lines += [f"- [{name}]({name}): {what}." for name, what in OTHER if (root / name).exists()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.results_index", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", default="docs/results")
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if not folders(root):
        print(f"results_index: no reproduction folders (with reproduction.json) under {root}",
              file=sys.stderr)
        return 2
    text = render(root)
    path = root / "README.md"
    if a.check:
        ok = path.exists() and path.read_text() == text
        print(f"results_index: {path} is {'up to date' if ok else 'out of date'}")
        return 0 if ok else 1
    path.write_text(text)
    print(f"results_index: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
