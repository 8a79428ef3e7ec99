"""``python -m benchmarks [train] [probe] [eval] [startup] [sweep] [memory] [replicas] [defaults] [threads] [--device D] [--quick]``

Runs the benchmarks (all of them without names), prints each table and writes it to
``benchmarks/results/<machine>.md`` (``cpu-<threads>threads`` or ``cuda-<gpu>``), replacing only
the sections that were run, with the command, the machine and the library versions.

Every ratio compares the harness with a plain baseline measured in the same run (the same process
for the in-process benchmarks). Each in-process case runs in a fresh child process, so that its
peak memory (resident set size on CPU, the CUDA allocator's peak on a GPU) is its own.

- train: steps/s of the harness at default logging against the plain loop (benchmarks.plain), per
  model (linear and nonlinear VAE, batch 50; toy) and estimator; ``train.compile=true`` rows too.
- probe: K = 100 gradient estimates and their moments, batched against a loop of K backward
  passes, per model and estimator; and one whole default probe.
- eval: the 1000-sample test bound over the 10k test images, harness against a direct loop.
- startup: wall time of ``python run.py model=toy train.steps=1`` against ``import torch``.
- sweep: a 3 x 3 multirun with the basic launcher against hydra/launcher=joblib (2 jobs).
- memory: peak memory of the harness and of the plain loop, each alone in its process.
- replicas: ``train.replicas=N`` (N = 1, 4, 8, 16, 32; CUDA: 1, 16, 64, 256, eager and with
  ``train.cuda_graphs=true``), aggregate replica-steps/s against N sequential harness runs and N
  plain loops, per estimator (the five of benchmarks.plain), linear VAE batch 50.
- defaults: README command 1's run (``python run.py``: gradient diagnostics and the report on, as
  by default) against the same run with ``diagnostics.every=0 report.run=false``: what the
  default diagnostics and report cost.
- threads: CPU thread policies (torch's default, OMP_WAIT_POLICY=PASSIVE, 1 thread, GOMP_SPINCOUNT
  values, discograd.threads' count from the load) on an idle machine and with 2 background
  CPU-bound processes, training steps/s of the linear VAE (benchmarks.threads; CPU only).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from .common import ROOT, describe, device_of, machine

SECTIONS = ("train", "probe", "eval", "startup", "sweep", "memory", "replicas", "defaults", "threads")
MARK = "BENCH-RESULT "

NOTES = {
    "train": "steps/s: medians over log intervals (harness: the loop's own steps_per_s of a real run "
             "at default log_every, evaluation excluded) and over blocks of as many steps (plain "
             "loop), in 4 interleaved rounds, warm-up excluded; ratio: the median over rounds of "
             "each round's harness / plain (ratio_min: the lowest round); first_interval_s: seconds "
             "of the first log interval (compilation for compile rows, from the on-disk cache "
             "after the first).",
    "probe": "seconds for K estimates and their moments: batched (vmap over grad) against a loop of "
             "K backward passes accumulating the same moments; speedup = loop / batched.",
    "eval": "seconds of the test bound over the test images; speedup = plain / harness; "
            "products_s: the bare matrix products of the bound (encoder on every image, decoder on "
            "every latent sample), interleaved with the harness in 3 rounds after a one-chunk warm-up, "
            "medians; vs_products = harness / products (target <= 1.5).",
    "startup": "median wall seconds of a new process, 3 repeats after one warm-up.",
    "defaults": "wall seconds of whole runs, one each, the default run first; diagnostics_s: the "
                "probes' time (summary.json), report_s: the report's (run.log); overhead: "
                "default / without - 1. --quick: 10,000 steps instead of 50,000.",
    "sweep": "wall seconds of the whole multirun; speedup = basic / joblib.",
    "replicas": "aggregate replica-steps/s (N x a member's logged steps/s) of train.replicas=N on the "
                "linear VAE (batch 50), median over log intervals after a warm-up one; "
                "sequential_harness_steps_s: the steps/s of one ordinary run (= the aggregate of N "
                "runs one after another), measured just before and just after each group (mean); "
                "plain_loops_steps_s: the same for the plain loop; ratios: group / those.",
    "threads": "steps/s of the default linear VAE (batch 50) as a real run.py process (fresh per run: "
               "OpenMP reads its environment at start), over 1.5 s of training after a warm-up log "
               "interval (a stalled run: what it logged within 3 s after its first interval) (the loop's own steps_per_s, train.log_every=25); policies interleaved in 3 "
               "rounds, order rotated; idle rounds first, then loaded rounds (2 background "
               "single-thread Python busy loops); steps_s: median over rounds, with each round's "
               "value; ratio: median over rounds of policy / torch default in the same round; "
               "threads: torch.get_num_threads() in the run; others: cores used by all other "
               "processes during the run (median); load1: 1-minute load average and busy: cores busy "
               "(/proc/stat, 0.5 s) before each round; note: idle rounds that were not idle. "
               "--quick: 3 policies, 1 s.",
    "memory": "peak memory in MiB of a child process that runs only that side (CPU: peak resident "
              "set size, which includes the ~300 MiB of the torch import; CUDA: allocator peak).",
}


def table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def child(case: dict) -> list[dict]:
    """Run one case in a fresh process; its rows."""
    r = subprocess.run([sys.executable, "-m", "benchmarks", "_case", json.dumps(case)], cwd=ROOT,
                       capture_output=True, text=True)
    rows = [json.loads(line[len(MARK):]) for line in r.stdout.splitlines() if line.startswith(MARK)]
    if r.returncode != 0 or not rows:
        raise RuntimeError(f"benchmark case {case} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return rows


def run_case(case: dict) -> list[dict]:
    """In the child: the rows of one case."""
    device = device_of(case["device"])
    bench = case["bench"]
    if bench == "train":
        from . import train
        return [train.run_case(case["model"], case["estimator"], device, case["repeats"],
                               case.get("compile", False), case.get("part", "both"))]
    if bench == "probe":
        from . import probe
        if case.get("full"):
            return [probe.full_probe(device, case["samples"], max(1, case["repeats"] // 2))]
        return [probe.run_case(case["model"], case["estimator"], device, case["samples"],
                               case["repeats"], case.get("part", "both"))]
    if bench == "eval":
        from . import evaluation
        return [evaluation.run_case(device, case["samples"], case["images"], case["repeats"],
                                    case.get("part", "both"))]
    if bench == "replicas":
        from . import replicas
        return replicas.run_case(case["estimator"], device, tuple(case["sizes"]), case["repeats"])
    raise ValueError(f"unknown benchmark case {case}")


def cases(name: str, device: str, quick: bool, repeats: int) -> list[dict]:
    base = {"device": device, "repeats": repeats}
    if name == "train":
        from .plain import ESTIMATORS
        models = ("vae", "toy") if quick else ("vae", "vae_nonlinear", "toy")
        ests = ("st", "gumbel") if quick else ESTIMATORS
        base = {**base, "repeats": min(repeats, 3)}     # x 4 interleaved rounds (benchmarks.train)
        out = [{**base, "bench": "train", "model": m, "estimator": e} for m in models for e in ests]
        compiled = [("vae", "gumbel")] if quick else [("vae", e) for e in ("st", "reinforce", "gumbel")] + \
            [("vae_nonlinear", "gumbel"), ("toy", "gumbel")]
        return out + [{**base, "bench": "train", "model": m, "estimator": e, "compile": True}
                      for m, e in compiled]
    if name == "probe":
        from .probe import ESTIMATORS, MODELS
        models = ("vae", "toy") if quick else MODELS
        ests = ("st", "reinforce") if quick else ESTIMATORS
        out = [{**base, "bench": "probe", "model": m, "estimator": e, "samples": 100}
               for m in models for e in ests]
        return out + [{**base, "bench": "probe", "full": True, "samples": 100}]
    if name == "eval":
        return [{**base, "bench": "eval", "samples": 1000, "images": 1000 if quick else 10000,
                 "repeats": 3}]
    if name == "replicas":
        from .plain import ESTIMATORS
        sizes = (1, 4) if quick else ((1, 16, 64, 256) if device == "cuda" else (1, 4, 8, 16, 32))
        ests = ("gumbel",) if quick else ESTIMATORS
        return [{**base, "bench": "replicas", "estimator": e, "sizes": list(sizes),
                 "repeats": min(repeats, 3)} for e in ests]
    if name == "memory":
        out = []
        for m in ("vae", "vae_nonlinear", "toy"):
            for part in ("harness", "plain"):
                out.append({**base, "bench": "train", "model": m, "estimator": "gumbel", "part": part,
                            "repeats": 2})
        for part in ("batched", "loop"):
            out.append({**base, "bench": "probe", "model": "vae", "estimator": "st", "part": part,
                        "samples": 100, "repeats": 1})
        for part in ("harness", "plain"):
            out.append({**base, "bench": "eval", "samples": 1000, "images": 1000 if quick else 10000,
                        "repeats": 1, "part": part})
        return out
    return []


def memory_rows(rows: list[dict], todo: list[dict]) -> list[dict]:
    out = []
    for case, r in zip(todo, rows):
        what = {"train": f"training, {case.get('model')}, {case.get('estimator')}",
                "probe": f"probe K={case.get('samples')}, {case.get('model')}, {case.get('estimator')}",
                "eval": f"test bound K={case.get('samples')}"}[case["bench"]]
        out.append({"what": what, "side": case["part"], "peak_mb": r["peak_mb"]})
    return out


def run_section(name: str, device: str, quick: bool, repeats: int) -> list[dict]:
    from . import processes
    if name == "startup":
        return processes.startup(device_of(device))
    if name == "defaults":
        return processes.defaults(device_of(device), quick)
    if name == "threads":
        if device != "cpu":
            return [{"skipped": f"CPU thread policies; not measured on {device}"}]
        from . import threads
        return threads.run(quick)
    if name == "sweep":
        steps = 2000 if quick else 20000
        return processes.sweep(["+experiment=quick_toy", "estimator=st,reinforce,gumbel", "seed=0,1,2",
                                f"train.steps={steps}", "diagnostics.every=0", "report.sweep=false",
                                f"device={device}"])
    todo = cases(name, device, quick, repeats)
    rows = []
    for i, case in enumerate(todo):
        print(f"  [{name} {i + 1}/{len(todo)}] {json.dumps(case)}", file=sys.stderr, flush=True)
        rows += child(case)
    return memory_rows(rows, todo) if name == "memory" else rows


def write_results(path: Path, sections: dict[str, str], header: str) -> None:
    """Replace the given sections of the results file, keep the others, in SECTIONS order."""
    old: dict[str, str] = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            title = chunk.split("\n", 1)[0].strip()
            old[title] = "## " + chunk.rstrip() + "\n"
    old.update(sections)
    body = "\n".join(old[s] for s in SECTIONS if s in old)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + body)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_case"]:
        for row in run_case(json.loads(argv[1])):
            print(MARK + json.dumps(row), flush=True)
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    p.add_argument("names", nargs="*", default=[],
                   help=f"benchmarks to run (default: all of {', '.join(SECTIONS)})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case (default 5)")
    p.add_argument("--quick", action="store_true", help="fewer cases and smaller sizes (a smoke run)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update results/")
    a = p.parse_args(argv)
    for n in a.names:
        if n not in SECTIONS:
            p.error(f"unknown benchmark {n!r}; accepted: {', '.join(SECTIONS)}")
    if a.repeats < 1:
        p.error(f"--repeats={a.repeats} is invalid: it must be >= 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device=cuda was requested but CUDA is not available; accepted here: auto, cpu")
    names = [n for n in SECTIONS if n in a.names] or list(SECTIONS)
    device = device_of(a.device)
    command = " ".join(["python -m benchmarks", *argv])
    sections = {}
    for name in names:
        t0 = time.perf_counter()
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows = run_section(name, device.type, a.quick, a.repeats)
        text = table(rows)
        print(f"\n## {name} ({time.perf_counter() - t0:.0f} s)\n{text}\n", flush=True)
        sections[name] = (f"## {name}\n\ncommand: `{command}`" + (" (quick)" if a.quick else "") +
                          f"; {time.strftime('%Y-%m-%d %H:%M')}\n\n{NOTES[name]}\n\n{text}\n")
    if not a.no_write:
        out = Path(__file__).parent / "results" / f"{machine(device)}.md"
        write_results(out, sections, f"# discograd benchmarks: {machine(device)}\n\nmachine: "
                                     f"{describe(device)}\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
