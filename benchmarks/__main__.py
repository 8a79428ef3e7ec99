"""``python -m benchmarks probe [--samples K] [--repeats R]``: run a benchmark, print a table and
write it to ``benchmarks/results/<machine>.md`` with the command and library versions."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node() or 'host'}-{torch.get_num_threads()}threads-{cpu}".replace(" ", "_")


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("name", choices=["probe"])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    from . import probe
    rows = probe.run(samples=a.samples, repeats=a.repeats)
    text = table(rows)
    print(text)
    out = Path(__file__).parent / "results" / "cpu.md" if not torch.cuda.is_available() else \
        Path(__file__).parent / "results" / "cuda.md"
    header = (f"## {a.name}\n\ncommand: `python -m benchmarks {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
              f"machine: {machine()}; torch {torch.__version__}; python {platform.python_version()}\n"
              "times: median seconds of the repeats, after a warm-up, in one process\n\n")
    out.write_text(header + text + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
