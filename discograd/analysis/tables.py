"""The results table: final test metrics per model x estimator, mean +- std over seeds (n), as
Markdown, LaTeX and CSV, with a ``published`` column when the runs come from a preset that names
published numbers (``preset.published.<estimator>`` in the run's config)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def metric_columns(runs: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(column, display name, sign) of the final test metrics present: bounds shown as positive
    nats (-bound_K), the ELBO as the loss (-ELBO), everything else as logged."""
    out = []
    for c in sorted(c for c in runs.columns if c.startswith("final.test/")):
        name = c[len("final.test/"):]
        if name == "elbo":
            continue
        if name.startswith("bound_"):
            out.append((c, f"test -{name}", -1.0))
        elif name == "loss" and "final.test/elbo" in runs.columns:
            out.append((c, "test -ELBO", 1.0))
        else:
            out.append((c, f"test {name}", 1.0))
    return out


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    done = runs[runs.status == "completed"]
    cols = metric_columns(done)
    rows = []
    for (model, label), g in done.groupby(["model.name", "label"], sort=True):
        row = {"model": model, "estimator": label, "n": len(g)}
        for col, name, sign in cols:
            v = sign * g[col].dropna()
            if v.empty:
                continue
            row[f"{name} mean"] = v.mean()
            row[f"{name} std"] = v.std(ddof=1) if len(v) > 1 else 0.0
        est = label.split(" ")[0]
        pub = f"preset.published.{est}"
        if pub in g.columns and g[pub].notna().any():
            row["published"] = g[pub].dropna().iloc[0]
            row["published metric"] = g.get("preset.metric", pd.Series([""])).dropna().iloc[0] \
                if "preset.metric" in g.columns else ""
        if "timings.steps_per_s" in g.columns:
            row["steps/s"] = g["timings.steps_per_s"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    names = [c[:-5] for c in table.columns if c.endswith(" mean")]
    header = ["model", "estimator", "n", *names]
    extra = [c for c in ("published", "published metric", "steps/s") if c in table.columns]
    header += extra
    body = []
    for _, r in table.iterrows():
        cells = [str(r["model"]), str(r["estimator"]), str(int(r["n"]))]
        for n in names:
            m = r.get(f"{n} mean")
            cells.append("" if pd.isna(m) else f"{m:.4g} ± {r[f'{n} std']:.2g}")
        for e in extra:
            v = r.get(e)
            cells.append("" if v is None or (isinstance(v, float) and pd.isna(v)) else
                         (f"{v:.4g}" if isinstance(v, float) else str(v)))
        body.append(cells)
    return header, body


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no completed runs)\n"
    header, body = _cells(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    if table.empty:
        return "% no completed runs\n"
    header, body = _cells(table)
    esc = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{" + "ll" + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, list[Path]]:
    table = results_table(runs)
    paths = [out / "table.md", out / "table.tex", out / "table.csv"]
    paths[0].write_text(to_markdown(table))
    paths[1].write_text(to_latex(table))
    table.to_csv(paths[2], index=False)
    return table, paths
