"""How many CPU threads a run uses: the cores that other processes leave free when it starts.

Call :func:`configure_threads` before torch is imported (the top of :mod:`discograd.cli`): torch's
OpenMP runtime (libgomp in the PyPI CPU wheels) reads ``OMP_NUM_THREADS`` once, when torch loads
it. It sets ``OMP_NUM_THREADS`` to the cores of this process's CPU set minus the cores other
processes kept busy over a 0.1 s window (/proc/stat; the 1-minute load average where there is no
/proc/stat), rounded, at least 1: on an idle 2-core machine 2 threads (torch's own default), with
one or more busy processes beside it 1 thread.

Why (``python -m benchmarks threads``, ``benchmarks/results/cpu-2threads.md``, default linear
VAE, batch 50, 2-core VM): torch's default of one thread per core with libgomp's default wait
policy (an idle thread spins ~300k iterations before it sleeps) is the fastest setting on an idle
machine, and collapses as soon as another process wants a core: the two threads meet at a barrier
after every operation, and whenever the scheduler runs the other process on one core, the thread
on the other core spins, waiting. Measured on 2026-12-06 (medians of 3 rounds, steps/s, idle /
with 2 background busy processes): torch default 301 / 3.7; ``OMP_WAIT_POLICY=PASSIVE`` 172 /
125; one thread 312 / 208; ``GOMP_SPINCOUNT=1000`` 273 / 175; ``GOMP_SPINCOUNT=10000`` 371 / 46;
this policy 343 / 186 (2 threads idle, 1 loaded; 51x torch's default when loaded, at par idle).
With one other busy process: torch default 4-93, one thread 287-337. No fixed setting wins both
by a margin that holds on other days (one thread was 0.8x torch's default idle in the issue's
measurement, PASSIVE halves the idle speed, any spin count >= 10k collapses under load); the
count chosen at start does, and a lower spin count on top (1000) bought nothing. What it does
not see: load that starts after the run started (the run keeps its threads).

An explicit choice wins: if ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, the count is left
alone; ``DISCOGRAD_THREADS=off`` turns the policy off (torch's default), ``DISCOGRAD_THREADS=N``
uses N threads. The joblib launcher's one thread per job (``experiment.entry.hydra_entry``,
``torch.set_num_threads(1)`` after import) is applied after this and wins. The variables this
function set are named, with its process id, in ``DISCOGRAD_THREADS_SET``: a child process (a
launcher's worker) sees that they were not the user's and chooses again from the load it sees.
"""
from __future__ import annotations

import os
import time

ENV = "DISCOGRAD_THREADS"          # auto (default) | off | N
MARK = "DISCOGRAD_THREADS_SET"     # "<pid>:VAR,VAR": what configure_threads set, and in which process
COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
SPIN_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
WINDOW = 0.1                       # seconds of /proc/stat sampling at start


def cpus() -> set[int]:
    """The CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _jiffies(which: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot of the CPUs ``which`` (/proc/stat), None if unreadable."""
    busy = total = seen = 0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in which:
                    continue
                v = [int(x) for x in fields[:8]]     # user nice system idle iowait irq softirq steal
                total += sum(v)
                busy += sum(v) - v[3] - v[4]
                seen += 1
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if seen else None


def busy_cores(window: float = WINDOW) -> float | None:
    """Cores of this process's CPU set that other processes keep busy, measured over ``window``
    seconds while this process sleeps; the 1-minute load average where /proc/stat is missing;
    None where neither exists."""
    which = cpus()
    a = _jiffies(which)
    if a is None:
        try:
            return min(float(os.getloadavg()[0]), float(len(which)))
        except (AttributeError, OSError):
            return None
    time.sleep(window)
    b = _jiffies(which)
    if b is None or b[1] <= a[1]:
        return None
    return len(which) * (b[0] - a[0]) / (b[1] - a[1])


def threads_for(busy: float | None, cores: int) -> int:
    """The policy: the cores not busy (rounded: a thread goes once others use over half a core)."""
    if busy is None:
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def configure_threads(environ=None, *, spincount: int | None = None,
                      window: float = WINDOW) -> dict[str, str]:
    """Set ``OMP_NUM_THREADS`` from the load (module doc) unless the user chose; before torch is
    imported. Returns what it set (empty: nothing). Idempotent within a process.

    ``spincount``: also set ``GOMP_SPINCOUNT`` (unless the user set a wait policy or spin count);
    not the default (see the module doc), kept for ``benchmarks.threads``."""
    environ = os.environ if environ is None else environ
    pid, _, names = environ.get(MARK, "").partition(":")
    if pid == str(os.getpid()):
        return {}                                    # done already in this process
    ours = set(filter(None, names.split(",")))       # inherited from a parent: not the user's
    user = {v for v in (*COUNT_VARS, *SPIN_VARS) if v in environ and v not in ours}
    setting = environ.get(ENV, "auto").strip().lower() or "auto"
    if setting in ("off", "torch", "false", "no", "0"):
        return {}
    n = None
    if setting != "auto":                  # checked even when an explicit count makes it moot
        try:
            n = int(setting)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV}={environ[ENV]!r} is invalid: accepted: auto, off or a "
                             "number of threads >= 1")
    done: dict[str, str] = {}
    if not user & set(COUNT_VARS):
        if n is None:
            n = threads_for(busy_cores(window), len(cpus()))
        done["OMP_NUM_THREADS"] = str(n)
    if spincount is not None and not user & set(SPIN_VARS):
        done["GOMP_SPINCOUNT"] = str(spincount)
    for v in ours - set(done):                        # a parent's choice that we did not redo
        environ.pop(v, None)
    environ.update(done)
    environ[MARK] = f"{os.getpid()}:{','.join(sorted(done))}"
    return done
