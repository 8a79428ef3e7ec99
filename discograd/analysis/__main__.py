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
    a = p.parse_args(argv)
    if not Path(a.path).exists():
        print(f"analysis: {a.path} does not exist", file=sys.stderr)
        return 2
    from .report import make_report
    try:
        report = make_report(a.path, a.out)
    except FileNotFoundError as e:
        print(f"analysis: {e}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
