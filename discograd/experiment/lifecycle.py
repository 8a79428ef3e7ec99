"""How a run's session begins and ends: its clocks (:class:`Stopwatch`), the signals that ask it
to stop (:class:`Signals`: SLURM's preemption and submitit's timeout), and the ways it ends other
than completing (:class:`Diverged`, :class:`Interrupted`), which the trainer maps to the status in
summary.json."""
from __future__ import annotations

import contextlib
import signal
import time


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class Diverged(RuntimeError):
    def __init__(self, step: int, quantity: str):
        super().__init__(f"non-finite {quantity} at step {step}")
        self.step, self.quantity = step, quantity


class Signals:
    """SIGTERM / SIGUSR1 (what SLURM sends before preemption) and SIGUSR2 (submitit's timeout
    signal), caught while installed: ``received`` is the last one, acted on at the next step
    boundary (checkpoint, then :meth:`pass_on`). One instance per process that trains: a replica
    group installs one for all its members."""

    CAUGHT = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def _on(self, signum, frame) -> None:
        self.received = signum

    def install(self) -> "Signals":
        for sig in self.CAUGHT:
            try:
                self.previous[sig] = signal.signal(sig, self._on)
            except ValueError:               # not the main thread: leave signals alone
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def pass_on(self) -> None:
        """After the checkpoint: hand the received signal to the handler it replaced (e.g.
        submitit's, which requeues the job), then exit with 128 + its number."""
        if self.received is None:
            return
        handler = self.previous.get(self.received)
        if callable(handler):
            handler(self.received, None)
        raise SystemExit(128 + int(self.received))


class Stopwatch:
    """The run's clocks. ``elapsed()``: seconds of this run over all its sessions (training,
    evaluation, diagnostics; what checkpoints keep). ``training()``: seconds of training alone over
    all sessions (steps and their logging; not evaluations, probes, checkpoints or start-up:
    every ``paused()`` and ``timed()`` span is excluded), the x axis of the wall-time curves
    (``train/training_s`` in metrics.csv). ``rate(step)``: steps per second of training alone
    since the last call. ``timed(phase)``: also adds the time to ``seconds[phase]`` (this
    session's eval and diagnostics seconds, in summary.json)."""

    def __init__(self, elapsed0: float, step: int, training0: float = 0.0):
        self.start, self.elapsed0, self.training0 = time.perf_counter(), float(elapsed0), float(training0)
        self.seconds = {"eval": 0.0, "diagnostics": 0.0}
        self._excluded, self._depth, self._out = 0.0, 0, 0.0
        self.mark(step)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.start

    def training(self) -> float:
        now = time.perf_counter()
        inside = now - self._out if self._depth else 0.0      # inside an excluded span now
        return self.training0 + now - self.start - self._excluded - inside

    def mark(self, step: int) -> None:
        self._t, self._step, self._paused = time.perf_counter(), step, 0.0

    def rate(self, step: int) -> float:
        now = time.perf_counter()
        r = (step - self._step) / max(now - self._t - self._paused, 1e-9)
        self._t, self._step, self._paused = now, step, 0.0
        return r

    def exclude(self, seconds: float) -> None:
        """``seconds`` spent on something else (another replica's phases): not training."""
        self._paused += seconds
        self._excluded += seconds

    @contextlib.contextmanager
    def _span(self):
        t0 = time.perf_counter()
        self._depth += 1
        if self._depth == 1:
            self._out = t0
        try:
            yield t0
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._excluded += time.perf_counter() - self._out

    @contextlib.contextmanager
    def paused(self):
        with self._span() as t0:
            try:
                yield
            finally:
                self._paused += time.perf_counter() - t0

    @contextlib.contextmanager
    def timed(self, phase: str):
        with self._span() as t0:
            try:
                yield
            finally:
                self.seconds[phase] += time.perf_counter() - t0
