"""CPU thread policies on an idle and on a loaded machine: training steps/s of the default linear
VAE (``model=vae estimator=gumbel``, batch 50) as a real ``run.py`` process, one fresh process
per policy and run (OpenMP reads its environment once, when torch loads it).

Conditions: *idle* (whatever else the machine does; the 1-minute load average and the cores busy
just before each round are recorded) and *loaded* (this benchmark starts ``LOAD`` single-thread
CPU-bound Python processes for the phase, stopped afterwards, each bounded in time by itself).
The idle rounds run first, then the loaded rounds, so that the load average of an idle round is
not the tail of this benchmark's own load. Within a round the policies run one after another in
an order rotated each round; the ratio of a policy is the median over rounds of its steps/s over
torch's default's steps/s in the same round.

A run's steps/s: the training steps of its log intervals (``train.log_every=100``; the first is a
warm-up) over their training time (the loop's own ``steps_per_s`` rows of metrics.csv: evaluation
excluded), from the first interval until ``seconds`` of training are measured; the process is
then killed. ``others``: cores used by every other process of the machine during the run
(/proc/stat minus the run's own CPU time).

``python -m benchmarks threads [--quick]`` (the results table); ``python -m benchmarks.threads
[--seconds S] [--rounds R] [--conditions idle,loaded] [POLICY ...]`` to explore (prints only).
This module does not import torch: the children must be the first to load it.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD = 2                 # background single-thread CPU-bound processes of the loaded condition
CONDITIONS = {"idle": 0, "loaded": LOAD, "loaded1": 1}    # condition: background processes
LOG_EVERY = 25           # short intervals: a stalled run (5 steps/s) still logs within seconds
OVERRIDES = ["model=vae", "estimator=gumbel", "train.batch_size=50", "device=cpu",
             "train.steps=100000000", f"train.log_every={LOG_EVERY}", "train.progress=log",
             "train.eval_every=1000000000", "train.checkpoint_every=1000000000",
             "eval.samples=1", "eval.final_samples=0", "diagnostics.every=0", "report.run=false"]

# name: (environment of the child, kwargs of discograd.threads.configure_threads or None).
# Every policy but the configure_threads ones sets DISCOGRAD_THREADS=off, so that the policy of
# discograd.threads (once the command line applies it) does not change what it measures.
OFF = {"DISCOGRAD_THREADS": "off"}
BASELINE = "torch default (2 threads)"
DEFAULT = "discograd.threads (threads from load)"
POLICIES = {
    BASELINE: (OFF, None),
    "OMP_WAIT_POLICY=PASSIVE": ({**OFF, "OMP_WAIT_POLICY": "PASSIVE"}, None),
    "OMP_NUM_THREADS=1": ({**OFF, "OMP_NUM_THREADS": "1"}, None),
    "GOMP_SPINCOUNT=1000": ({**OFF, "GOMP_SPINCOUNT": "1000"}, None),
    "GOMP_SPINCOUNT=10000": ({**OFF, "GOMP_SPINCOUNT": "10000"}, None),
    "GOMP_SPINCOUNT=30000": ({**OFF, "GOMP_SPINCOUNT": "30000"}, None),
    "GOMP_SPINCOUNT=100000": ({**OFF, "GOMP_SPINCOUNT": "100000"}, None),
    DEFAULT: ({}, {}),
    "threads from load + GOMP_SPINCOUNT=1000": ({}, {"spincount": 1000}),
}
FULL = [BASELINE, "OMP_WAIT_POLICY=PASSIVE", "OMP_NUM_THREADS=1", "GOMP_SPINCOUNT=1000",
        "GOMP_SPINCOUNT=10000", DEFAULT, "threads from load + GOMP_SPINCOUNT=1000"]
QUICK = [BASELINE, "OMP_NUM_THREADS=1", DEFAULT]

# the child: apply the policy's environment (and configure_threads), then the real command line
BOOT = r"""
import json, os, sys
env, configure = json.loads(sys.argv[1])
os.environ.update(env)
if configure is not None:
    from discograd.threads import configure_threads
    configure_threads(**configure)
import torch
print("BENCH-THREADS", torch.get_num_threads(), flush=True)
sys.argv = ["run.py", *sys.argv[2:]]
from discograd.cli import main
main()
"""

# a background load: one CPU-bound thread that stops by itself after its deadline
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n" \
       "    for _ in range(100000): pass\n"


def median(xs) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of this process's CPUs since boot (/proc/stat)."""
    cpus = os.sched_getaffinity(0)
    busy = total = 0
    with open("/proc/stat") as fh:
        for line in fh:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cpus:
                v = [int(x) for x in fields[:8]]
                total += sum(v)
                busy += sum(v) - v[3] - v[4]        # all but idle and iowait
    return busy, total


def busy_cores(seconds: float = 0.5) -> float:
    """Cores busy (every process) over the next ``seconds``."""
    b0, t0 = _jiffies()
    time.sleep(seconds)
    b1, t1 = _jiffies()
    return len(os.sched_getaffinity(0)) * (b1 - b0) / max(t1 - t0, 1)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _rates(path: Path) -> list[float]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [float(r["value"]) for r in csv.DictReader(fh)
                if r.get("metric") == "steps_per_s" and r.get("value")]


def run_policy(name: str, seconds: float, cap: float = 45.0) -> dict:
    """One fresh ``run.py`` process under policy ``name``: its steps/s (see the module doc)."""
    env, configure = POLICIES[name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        log = open(Path(tmp) / "out.txt", "w+")
        cmd = [sys.executable, "-c", BOOT, json.dumps([env, configure]), *OVERRIDES,
               f"hydra.run.dir={folder}"]
        # the child's environment: ours without any thread setting of the caller's shell
        base = {k: v for k, v in os.environ.items()
                if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                             "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "DISCOGRAD_THREADS",
                             "DISCOGRAD_THREADS_SET")}
        b0, t0 = _jiffies()
        start = time.monotonic()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=base)
        rates: list[float] = []
        first = None                    # when the warm-up interval was logged
        try:
            while time.monotonic() - start < cap:
                time.sleep(0.05)
                rates = _rates(folder / "metrics.csv")
                if rates and first is None:
                    first = time.monotonic()
                if len(rates) >= 3 and sum(LOG_EVERY / r for r in rates[1:]) >= seconds:
                    break
                # a stalled run: what it logged within twice the window after its first interval
                if first is not None and time.monotonic() - first >= 2 * seconds:
                    break
                if p.poll() is not None:
                    break
            ticks = _cpu_ticks(p.pid)
            b1, t1 = _jiffies()
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        log.seek(0)
        out = log.read()
        log.close()
    if not rates:
        raise RuntimeError(f"policy {name!r}: no steps/s after {cap:.0f} s:\n{out[-3000:]}")
    threads = [int(line.split()[1]) for line in out.splitlines() if line.startswith("BENCH-THREADS")]
    hz = os.sysconf("SC_CLK_TCK")
    wall = max(t1 - t0, 1) / len(os.sched_getaffinity(0)) / hz
    measured = rates[1:] or rates      # stalled: only the warm-up interval came (then counted)
    return {"steps_s": len(measured) * LOG_EVERY / sum(LOG_EVERY / r for r in measured),
            "threads": threads[0] if threads else -1,
            "others": ((b1 - b0) - ticks) / hz / wall}


class Load:
    """``n`` background CPU-bound single-thread processes, each stopping by itself after
    ``seconds`` at the latest; stopped on exit."""

    def __init__(self, n: int, seconds: float):
        self.n, self.seconds, self.procs = n, seconds, []

    def __enter__(self):
        code = BUSY.format(seconds=self.seconds)
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def measure(policies: list[str], rounds: int, seconds: float,
            conditions=("idle", "loaded"), verbose: bool = True) -> list[dict]:
    """Rows: one per condition and policy (medians over rounds, ratios to BASELINE)."""
    results = {c: {p: [] for p in policies} for c in conditions}
    info = {c: {"threads": {p: [] for p in policies}, "others": {p: [] for p in policies},
                "load1": [], "busy": []} for c in conditions}
    for cond in conditions:
        budget = rounds * len(policies) * (seconds + 25) + 60
        with (Load(CONDITIONS[cond], budget) if CONDITIONS[cond] else _Nothing()):
            for r in range(rounds):
                info[cond]["load1"].append(os.getloadavg()[0])
                info[cond]["busy"].append(busy_cores(0.5))
                order = policies[r % len(policies):] + policies[:r % len(policies)]
                for p in order:
                    got = run_policy(p, seconds)
                    results[cond][p].append(got["steps_s"])
                    info[cond]["threads"][p].append(got["threads"])
                    info[cond]["others"][p].append(got["others"])
                    if verbose:
                        print(f"  [threads {cond} round {r + 1}/{rounds}] {p}: "
                              f"{got['steps_s']:.0f} steps/s, {got['threads']} threads, "
                              f"others {got['others']:.2f} cores", file=sys.stderr, flush=True)
    rows = []
    for cond in conditions:
        i = info[cond]
        notes = [f"round {k + 1} not idle (load1 {l:.2f}, busy {b:.2f})"
                 for k, (l, b) in enumerate(zip(i["load1"], i["busy"])) if cond == "idle" and
                 (l > 0.5 or b > 0.5)]
        for p in policies:
            ratios = [a / b for a, b in zip(results[cond][p], results[cond][BASELINE])] \
                if BASELINE in policies else []
            th = sorted(set(i["threads"][p]))
            rows.append({
                "condition": cond, "policy": p,
                "threads": "/".join(str(t) for t in th),
                "steps_s": median(results[cond][p]),
                "rounds_steps_s": " / ".join(f"{x:.0f}" for x in results[cond][p]),
                "ratio": median(ratios) if ratios else float("nan"),
                "ratio_min": min(ratios, default=float("nan")),
                "ratio_max": max(ratios, default=float("nan")),
                "others": median(i["others"][p]),
                "load1": " / ".join(f"{x:.2f}" for x in i["load1"]),
                "busy": " / ".join(f"{x:.2f}" for x in i["busy"]),
                "note": "; ".join(notes),
            })
    return rows


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def run(quick: bool = False) -> list[dict]:
    """The section of ``python -m benchmarks threads``: ~6 min (--quick: ~2.5 min) on 2 cores."""
    if quick:
        return measure(QUICK, rounds=3, seconds=1.0)
    return measure(FULL, rounds=3, seconds=1.5)


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads")
    p.add_argument("policies", nargs="*", default=FULL, help=f"of: {', '.join(POLICIES)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--conditions", default="idle,loaded")
    a = p.parse_args(argv)
    for n in a.policies:
        if n not in POLICIES:
            p.error(f"unknown policy {n!r}")
    t0 = time.perf_counter()
    rows = measure(list(a.policies), a.rounds, a.seconds, tuple(a.conditions.split(",")))
    for r in rows:
        print(json.dumps(r))
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
