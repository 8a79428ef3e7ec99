"""``python -m analysis PATH [--out DIR]``: tidy tables, figures, results table and report.md for
every run folder under PATH (single runs, sweeps, nested). Default DIR: PATH/analysis."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    p.add_argument("path", help="a run folder, a sweep folder, or any folder above them")
    p.add_argument("--out", default=None, help="output folder (default: PATH/analysis)")
    p.add_argument("--at", default="auto", choices=("auto", "best", "final"),
                   help="which model of each run the table shows: the best validation step's "
                        "(auto when the runs have it) or the final one")
    p.add_argument("--select", default=None,
                   help="comma-separated config keys to select per estimator on validation, e.g. "
                        "train.lr,estimator.tau.rate (default: the runs' preset.grid; '' for none)")
    a = p.parse_args(argv)
    if not Path(a.path).exists():
        print(f"analysis: {a.path} does not exist", file=sys.stderr)
        return 2
    from .report import make_report
    try:
        select = None if a.select is None else [k for k in a.select.split(",") if k]
        report = make_report(a.path, a.out, at=a.at, select=select)
    except (FileNotFoundError, ValueError) as e:
        print(f"analysis: {e}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
