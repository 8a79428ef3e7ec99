"""One run's training: the step and the loop that advance a run's state (experiment/run.py;
docs/design.md, "One training step", "One run").

The loop does not know which estimator or model it runs: each step asks the model for logits and
the objective f, the estimator for an Estimate (discograd/step.py), and steps the optimizer. The
only host synchronisations happen at log, eval and checkpoint steps. Around the steps, the
phases of :meth:`Trainer.fit` (log, evaluate, probe, checkpoint, final) are public methods, which
a replica group (experiment/replicas.py) drives for each of its members.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal

import torch
from omegaconf import DictConfig

from discograd.files import write_json
from discograd.step import finite, step_forward
from .graphs import GraphedStep
from .lifecycle import Diverged, Interrupted, Signals, Stopwatch
from .logbook import open_logs
from .evaluation import owned
from .run import Run

log = logging.getLogger("discograd")
LOSS_CHECK = 256     # training losses kept on the device between checks (Trainer._check_losses)


class Session:
    """One session of a run (from start or resume to its end): ``final`` metrics and, at the end,
    the ``summary``."""

    def __init__(self):
        self.final: dict[str, float] = {}
        self.summary: dict | None = None


class Trainer(Run):
    """Trains a :class:`~.run.Run`: :meth:`fit` from its state to ``train.steps``."""

    def _setup(self, cfg: DictConfig, parts, data) -> None:
        super()._setup(cfg, parts, data)
        self._forward = self.forward_pass
        if bool(cfg.train.compile):
            # shapes never change during training (the last incomplete batch is dropped), so one
            # static graph; floats such as the temperature are graph inputs (no recompilation)
            self._forward = torch.compile(self.forward_pass, dynamic=False)
        self._graphed = None
        if bool(cfg.train.cuda_graphs):      # captured at the first step (experiment/graphs.py)
            self._graphed = GraphedStep(self._backward_step, self._snapshot, self._restore,
                                        self.opt.zero_grad, f"estimator '{self.estimator.name}'")

    # --- one step ---------------------------------------------------------------------------------
    def forward_pass(self, x: torch.Tensor, u: torch.Tensor):
        """(surrogate, per-example loss [B], stats) of one minibatch, for non-sequential models:
        the part of a step that ``train.compile=true`` hands to torch.compile."""
        return step_forward(self.model, self.estimator, x, u)

    def train_step(self, x: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """One step on minibatch ``x``: (mean loss, on the device; None if skipped, stats)."""
        self.estimator.set_step(self.step)
        if self._graphed is not None:       # train.cuda_graphs: the same step, replayed
            return self._graphed(x, self.draw_noise(x))
        # zero first: an estimator with parameters of its own may write their gradients during its
        # forward pass (e.g. RELAX's variance objective, computed with torch.autograd.grad)
        self.opt.zero_grad()
        if self.model.sequential:   # the model drives the rollout through the estimator's hooks
            est = self.model.sequential_estimate(x, self.estimator, self.draw_noise(x))
            surrogate, loss, stats = est.surrogate, est.loss, est.stats
        else:
            # the estimator's uniforms are drawn here, eagerly, exactly as the estimator would draw
            # them itself: the random stream is the same with and without train.compile
            surrogate, loss, stats = self._forward(x, self.draw_noise(x))
        surrogate.backward()
        loss = loss.mean()
        if self.skip_nan:                   # opt-in: one host sync per step
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if not bool(torch.isfinite(loss) & finite(grads)):
                self.skipped += 1
                self.opt.zero_grad()
                return None, stats
        # otherwise nothing is checked per step: the loss is checked later (check_finite), and the
        # gradient is not (a pass over every gradient costs ~7 % of a step): a non-finite gradient
        # makes Adam write NaN into the parameters, so the loss of the next step is non-finite;
        # the parameters are checked at log steps and before every checkpoint, which catches a
        # non-finite gradient at the last step before them.
        self.opt.step()
        return loss, stats

    def _backward_step(self, x: torch.Tensor, u: torch.Tensor):
        """Forward, backward and Adam on a non-sequential model, gradients not reset: the step
        that train.cuda_graphs captures. (mean loss, stats)."""
        surrogate, loss, stats = self._forward(x, u)
        surrogate.backward()
        self.opt.step()
        return loss.mean(), stats

    def _snapshot(self) -> tuple:
        return (owned(self.model.state_dict()), owned(self.estimator.state_dict()),
                self.opt.state_dict())

    def _restore(self, saved: tuple) -> None:
        self.model.load_state_dict(saved[0])
        self.estimator.load_state_dict(saved[1])
        self.opt.load_state_dict(saved[2])

    def account(self, loss: torch.Tensor | None, stats: dict) -> None:
        """After a step: count it, keep its loss on the device (summed for the log interval, and
        checked for NaN every LOSS_CHECK steps), keep its stats for the next log."""
        self.step += 1
        self._stats = stats
        if loss is not None:
            self._loss_sum += loss
            self._n_sum += 1
            self._losses.append((self.step, loss))
            if len(self._losses) >= LOSS_CHECK:
                self._check_losses()

    # --- divergence -------------------------------------------------------------------------------
    def _check_losses(self) -> None:
        """Check the training losses kept since the last check (one sync); raise Diverged at the
        first non-finite one."""
        if not self._losses:
            return
        ok = torch.isfinite(torch.stack([v for _, v in self._losses]))
        if not bool(ok.all()):
            first = int((~ok).nonzero()[0, 0])
            raise Diverged(self._losses[first][0], "training loss")
        self._losses.clear()

    def check_finite(self) -> None:
        """At log steps and before checkpoints (no per-step host sync): a non-finite training
        loss since the last check, or a non-finite parameter now, is a divergence. Its step is
        then located exactly (:meth:`_locate`): a bad update need not make the next loss
        non-finite (the toy's loss stays finite with its logits at inf), so neither the first
        bad loss nor this step is necessarily the first bad step. A state that passes is kept
        in memory as the start of the next replay."""
        try:
            self._check_losses()
            if not bool(finite(list(self.model.parameters()))):
                raise Diverged(self.step, "parameter")
        except Diverged as e:
            raise self._locate(e) from None
        self._remember()

    def _remember(self) -> None:
        """Keep this step's training state (known finite) in memory. Not for the members of a
        replica group (``replayable`` false): their steps are taken together, not one by one."""
        if self.replayable:
            self._good = (self.step, copy.deepcopy(self.training_state()))

    def _locate(self, found: Diverged) -> Diverged:
        """The first bad step: replay the steps from the last good state (:meth:`_remember`) to
        this one, checking the loss and the parameters after every step. A step is bit-identical
        on replay (same batches, noise, estimator state), so the first step whose loss or update
        is non-finite is found; if none is (a nondeterministic kernel), the check's own step is
        reported with the range it lies in."""
        good = getattr(self, "_good", None)
        if good is None or good[0] >= self.step:
            return found
        start, s = good
        end = self.step
        self.load_training_state(s)
        self.step = start
        params = list(self.model.parameters())
        while self.step < end:
            loss, _ = self.train_step(self.next_batch())
            self.step += 1
            if loss is not None and not bool(torch.isfinite(loss)):
                return Diverged(self.step, "training loss")
            if not bool(finite(params)):
                return Diverged(self.step, "parameter (after this step's update)")
        self.step = end
        return Diverged(found.step, f"{found.quantity} (first bad step not reproduced on replay "
                                    f"from step {start}: between {start + 1} and {found.step})")

    # --- the run ----------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``train.steps``, evaluate, checkpoint; returns the summary (also written to
        summary.json). The phases of a step are the public methods below; a divergence, an
        interruption or a failure ends the session with that status (:meth:`close_session`)."""
        done = self.folder.completed()
        if done is not None:                # never overwrite a completed run
            log.info("run folder %s already holds a completed run of %d steps; nothing to do",
                     self.out, done["step"])
            return done
        resumed = self.resume()
        steps = self.prepare_loop()
        with self.open_logs() as logs, self._session() as run:
            if not resumed and self.step == 0:
                self.start_phase(logs)
            self._remember()                 # the start of the first replay (check_finite)
            while self.step < steps:
                x = self.next_batch()
                self.account(*self.train_step(x))
                self.after_step(logs, x)
                if self.signals.received is not None:
                    raise Interrupted(self.signals.received)
            run.final = self.final_phase(logs)
        return run.summary

    def prepare_loop(self) -> int:
        """Read the loop's periods from the config once (an OmegaConf lookup costs microseconds,
        which the toy's 10,000 steps per second would pay at every step); train.steps."""
        tr, never = self.cfg.train, 1 << 62
        self._steps = int(tr.steps)
        self._every = {"log": int(tr.log_every), "eval": int(tr.eval_every),
                       "checkpoint": int(tr.checkpoint_every),
                       "probe": int(self.cfg.diagnostics.every) if self.probe is not None else never}
        return self._steps

    def open_logs(self):
        """The session's logs (logbook.open_logs): metrics.csv, grad_stats.csv, a progress bar."""
        steps = int(self.cfg.train.steps)
        bar = dict(total=steps, initial=self.step, dynamic_ncols=True, desc=self.estimator.name) \
            if self.interactive and self.step < steps else None
        return open_logs(self.out, bool(self.cfg.logger.tensorboard), self.probe is not None, bar)

    def start_phase(self, logs) -> None:
        """Before the first step of a fresh run: evaluate and probe the initial model."""
        self.evaluate_phase(logs)
        self.probe_phase(logs)
        self.clock.mark(self.step)

    def after_step(self, logs, x: torch.Tensor) -> None:
        """What follows a step that brought the run to ``self.step``: log, evaluate, probe,
        checkpoint, each at its period."""
        s, steps, every = self.step, self._steps, self._every
        if s % every["log"] == 0 or s == steps:
            self.log_phase(logs, x)
        with self.clock.paused():       # not training time: excluded from steps_per_s
            if s % every["eval"] == 0 and s != steps:
                self.evaluate_phase(logs)
            if s % every["probe"] == 0:
                self.probe_phase(logs)
            if s % every["checkpoint"] == 0 and s != steps:
                self.checkpoint_phase()

    def log_phase(self, logs, x: torch.Tensor) -> None:
        """Train metrics of the interval since the last log. The host syncs of training happen
        only here: the loss and parameter checks and the mean loss of the interval."""
        s, wall = self.step, self.clock.elapsed()
        self.check_finite()
        mean_loss = (self._loss_sum / self._n_sum).item() if self._n_sum else math.nan
        values = {"loss": mean_loss, "hard_loss": None,
                  "evals": self.model.evals_per_step(self.estimator),
                  "steps_per_s": self.clock.rate(s), "training_s": self.clock.training(),
                  **self.estimator.scalars(),
                  **{k: v.item() for k, v in self._stats.items()}}
        # after the rate: counted as training time
        values["hard_loss"] = self.evaluation.hard_loss(x, s, self.data is not None)
        if self.skip_nan:
            values["skipped_steps"] = self.skipped
        logs.metrics.log(s, self.batches.epoch, wall, "train", values)
        self._loss_sum.zero_()
        self._n_sum = 0
        msg = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "evals")
        if logs.bar is not None:
            logs.bar.update(s - logs.bar.n)
            logs.bar.set_postfix_str(msg)
        else:
            log.info("%sstep %d/%d %s", self.tag, s, int(self.cfg.train.steps), msg)

    def evaluate_phase(self, logs) -> None:
        """The periodic evaluation of the main split (valid; the toy: test) with eval.samples."""
        split = "valid" if self.data is not None else "test"
        wall = self.clock.elapsed()
        with self.clock.timed("eval"):
            ev = self.evaluation.evaluate(split, [int(self.cfg.eval.samples)], self.step)
        logs.metrics.log(self.step, self.batches.epoch, wall if self.step else 0.0, split, ev)
        if not all(math.isfinite(v) for v in ev.values()):
            raise Diverged(self.step, f"{split} metrics")
        if split == "valid":
            self.evaluation.consider_best(ev, self.step)
        if self.step:
            log.info("%sstep %d %s %s", self.tag, self.step, split, " ".join(f"{k} {v:.4f}" for k, v in ev.items()))

    def probe_phase(self, logs) -> None:
        if self.probe is None:
            return
        with self.clock.timed("diagnostics"):
            logs.grads.write(self.probe.run(self.step))

    def checkpoint_phase(self) -> None:
        self.check_finite()                    # never checkpoint non-finite parameters
        self.elapsed = self.clock.elapsed()
        self.save()

    def final_phase(self, logs) -> dict[str, float]:
        """The final evaluation and checkpoint: the final model on valid (a selection candidate
        too) and on test (eval.samples and eval.final_samples); then, with model selection, the
        best validation step's model (best.pt) on test, into ``self.best_metrics``."""
        if logs.bar is not None:
            logs.bar.close()
        self.check_finite()
        final: dict[str, float] = {}
        with self.clock.timed("eval"):
            self.elapsed = self.clock.elapsed()
            samples = [int(self.cfg.eval.samples)]
            if int(self.cfg.eval.final_samples) > 0 and self.data is not None:
                samples.append(int(self.cfg.eval.final_samples))
            splits = {"valid": samples[:1], "test": samples} if self.data is not None \
                else {"test": samples}
            for split, ss in splits.items():
                ev = self.evaluation.evaluate(split, ss, self.step)
                logs.metrics.log(self.step, self.batches.epoch, self.elapsed, split, ev)
                final.update({f"{split}/{k}": v for k, v in ev.items()})
                if not all(math.isfinite(v) for v in ev.values()):
                    raise Diverged(self.step, f"final {split} metrics")
                if split == "valid":
                    self.evaluation.consider_best(ev, self.step)
            self.best_metrics = self.evaluation.evaluate_best(final, samples, self.step)
        self.elapsed = self.clock.elapsed()
        self.save()
        return final

    # --- sessions ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self):
        run = self.open_session()
        try:
            yield run
        except BaseException as e:
            self.close_session(run, e)
        else:
            self.close_session(run, None)

    def open_session(self, signals: Signals | None = None) -> Session:
        """Start the clock, and catch SIGTERM / SIGUSR1 / SIGUSR2 (``signals``: a replica group's,
        which it installs, restores and passes on itself)."""
        self.clock = Stopwatch(self.elapsed, self.step, self.training_time)
        self._own_signals = signals is None
        self.signals = Signals().install() if signals is None else signals
        return Session()

    def close_session(self, run: Session, exc: BaseException | None) -> None:
        """End a session with the status that ``exc`` (None: completed) means, write summary.json:
        a divergence or an interruption ends the run with that status (an interruption writes a
        checkpoint of finite parameters, then passes the signal on, e.g. to submitit's requeue);
        any other error is recorded as ``failed`` and re-raised."""
        status, error = "completed", None
        try:
            if exc is not None:
                raise exc
        except Diverged as e:
            status, error = "diverged", {"step": e.step, "quantity": e.quantity, "message": str(e)}
            log.error("%srun diverged: %s", self.tag, e)
        except (KeyboardInterrupt, Interrupted) as e:
            sig = e.signum if isinstance(e, Interrupted) else signal.SIGINT
            status, error = "interrupted", {"step": self.step, "signal": signal.Signals(sig).name}
            self._checkpoint_on_interrupt(signal.Signals(sig).name)
        except Exception as e:  # noqa: BLE001 - recorded, then re-raised
            error = {"step": self.step, "message": repr(e)}
            write_json(self.out / "summary.json", self.summary("failed", run.final, error))
            raise
        if self._own_signals:
            self.signals.restore()
        run.summary = self.summary(status, run.final, error)
        write_json(self.out / "summary.json", run.summary)
        if status == "interrupted" and self._own_signals:
            self.signals.pass_on()

    def _checkpoint_on_interrupt(self, name: str) -> None:
        self.elapsed = self.clock.elapsed()
        try:
            self.check_finite()
        except Diverged:                        # never save NaN parameters
            log.warning("interrupted by %s at step %d; the parameters are not finite, so no "
                        "checkpoint was written", name, self.step)
            return
        self.save()
        log.warning("interrupted by %s at step %d; checkpoint written, a rerun resumes", name, self.step)

