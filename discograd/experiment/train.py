"""The training harness: build everything from the config, train, evaluate, log.

The loop does not know which estimator or model it runs (docs/design.md, "One training step"): it asks
the model for logits and the objective f, the estimator for an Estimate, adds the model's direct
terms (analytic KL) and steps the optimizer. The only host synchronisations happen at log, eval
and checkpoint steps.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from discograd.errors import EXIT_BUSY, EXIT_DATA, EXIT_DIVERGED, EXIT_INVALID, EXIT_IO
from discograd.estimators import ConfigError, Estimator, build_estimator, uniform
from discograd.models import LatentModel, registry
from discograd.models.base import higher_is_better, with_labels
from .config import MISSING_VALUE, RESUMABLE_KEYS, config_diff, fingerprint, plain, run_defining
from .optim import Adam
from .files import (BEST, CHECKPOINT, DAMAGED, PREVIOUS, RunLock, atomic_write, read_checkpoint,
                    save_checkpoint, write_json)
from .launch import SHRINK_ENV, log_to_files, shrink
from .logbook import CSVLog, MetricsLog, versions
from .validate import validate

log = logging.getLogger("discograd")
DATA_STREAM = 1 << 40  # the data generator's seed is seed + DATA_STREAM (Trainer._build)
NOISE_STREAM = 1 << 42  # the estimator noise generator's seed is seed + NOISE_STREAM
LOSS_CHECK = 256     # training losses kept on the device between checks (Trainer._check_losses)


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class FolderInUse(ConfigError):
    """Another process holds the run folder (exit code 75, EX_TEMPFAIL of sysexits.h: a
    temporary condition, try again later)."""


class Diverged(RuntimeError):
    def __init__(self, step: int, quantity: str):
        super().__init__(f"non-finite {quantity} at step {step}")
        self.step, self.quantity = step, quantity


def check_writable(folder: Path) -> None:
    """Fail at start, not at the first checkpoint, when the run folder cannot be written."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to the run folder {folder} ({e.strerror}); choose another "
                          "with hydra.run.dir=... (hydra.sweep.dir=... for sweeps)") from e


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but CUDA is not available; accepted here: auto, cpu")
    return torch.device(name)


def selection_metric(model: LatentModel, cfg) -> str | None:
    """The validation metric that picks the best step (``eval.select``): ``auto`` is the model's
    own choice (VAE: the eval.samples-sample bound; attention: accuracy); None without a
    validation split (the toy) or with ``eval.select=none``."""
    choice = str(cfg.eval.select)
    if choice == "none" or not model.needs_data:
        return None
    if choice == "auto":
        return model.select_metric(int(cfg.eval.samples))
    return choice


def build_model(cfg) -> LatentModel:
    """The model of ``cfg.model`` and ``cfg.data`` (discograd.models.build_model)."""
    return registry.build_model(cfg.model, cfg.data)


def build_data(d, device: torch.device):
    """The data set of config group ``data`` as an MNISTData on ``device``."""
    from .canvas import CANVAS_DATASETS, CanvasData, load_canvas
    from .data import MNISTData, load_fashion_mnist, load_mnist
    if d.name == "fashion_mnist":
        return MNISTData(load_fashion_mnist(d.root, d.cache_dir), plain(d.binarize), device,
                         int(d.seed))
    splits = load_mnist(d.root, d.cache_dir)
    if d.name in CANVAS_DATASETS:
        canvases = load_canvas(splits, int(d.size), int(d.clutter), int(d.fragment),
                               int(d.canvas_seed), d.cache_dir)
        # data.resample: training digits placed afresh per draw (a config saved before the key
        # existed trained on the fixed canvases)
        digits = splits["train"][0] if bool(d.get("resample", False)) else None
        return CanvasData(canvases, digits, size=int(d.size), clutter=int(d.clutter),
                          fragment=int(d.fragment), binarize=plain(d.binarize), device=device,
                          seed=int(d.seed))
    return MNISTData(splits, plain(d.binarize), device, int(d.seed))


def finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """0-dim bool tensor (no sync): every element of every tensor is finite. The largest absolute
    value per tensor (ord=inf) cannot overflow, unlike a 2-norm of large finite values."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors, ord=math.inf))).all()


def step_forward(model: LatentModel, estimator: Estimator, x: torch.Tensor, u: torch.Tensor):
    """(surrogate, per-example loss [B], stats) of one minibatch of a non-sequential model: the
    estimator's Estimate plus the model's direct terms (docs/design.md, "One training step")."""
    logits = model.logits(x)
    est = estimator(logits, model.objective(x, logits), u=u)
    extra = model.extra_loss(x, logits)
    surrogate, loss = est.surrogate, est.loss
    if extra is not None:
        surrogate = surrogate + extra.mean()
        loss = loss + extra.detach()
    return surrogate, loss, est.stats


class SimpleRun:
    """What ``Trainer.fit`` hands back through its guard: the final metrics and the summary."""

    def __init__(self):
        self.final: dict[str, float] = {}
        self.summary: dict | None = None


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


class Batches:
    """Minibatch indices from a permutation of the training set made on the device, one epoch at
    a time (the last incomplete batch of an epoch is dropped)."""

    def __init__(self, n: int, batch_size: int, device: torch.device, generator: torch.Generator):
        self.n, self.bs, self.device, self.generator = n, batch_size, device, generator
        self.per_epoch = n // batch_size
        self.epoch, self.pos, self.perm = 0, 0, None

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos >= self.per_epoch:
            if self.perm is not None:
                self.epoch += 1
            self.perm, self.pos = torch.randperm(self.n, device=self.device, generator=self.generator), 0
        idx = self.perm[self.pos * self.bs:(self.pos + 1) * self.bs]
        self.pos += 1
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "perm": self.perm}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos, self.perm = int(s["epoch"]), int(s["pos"]), s["perm"]


class Trainer:
    def __init__(self, cfg: DictConfig, out_dir: Path, interactive: bool = False,
                 hydra_files: dict[str, str] | None = None, data=None, tag: str = ""):
        """``hydra_files``: Hydra's .hydra/*.yaml texts, written once the folder is held (so a
        refused command never overwrites the folder's own). ``data``: an already loaded data set
        of the same ``data`` config (the members of a replica group share one); ``tag``: a prefix
        of this run's log lines (a replica's seed)."""
        self.cfg, self.out = cfg, Path(out_dir)
        self.interactive = interactive
        self._shared_data, self.tag = data, tag
        self.replica: dict | None = None     # {"index", "of", "group"} when trained as a replica
        self.out.mkdir(parents=True, exist_ok=True)
        check_writable(self.out)
        self.lock = RunLock(self.out)
        try:
            self.hold_folder()            # one writer; a folder of another run is refused
            try:
                validate(cfg)                             # bad input fails before any work
                self.device = pick_device(plain(cfg.device))
            except ConfigError:
                if hydra_files and self._fresh:   # a failed job stays listed by analysis
                    write_hydra_files(self.out, hydra_files)
                raise
            if hydra_files:
                write_hydra_files(self.out, hydra_files)
            self._build(cfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the run folder (the end of the run; also at process exit)."""
        self.lock.release()

    def _build(self, cfg: DictConfig) -> None:
        """Everything heavy, once the folder is held and the config valid."""
        torch.manual_seed(int(cfg.seed))
        self.model = build_model(cfg)
        self.estimator: Estimator = build_estimator(cfg.estimator, self.model.kind, self.model.latent_shape)
        # the pairings of model, estimator and features were checked by validate(); the device
        # is known only here
        from .graphs import check_cuda_graphs
        check_cuda_graphs(cfg, self.device, self.model.sequential, self.model.name)
        dg = cfg.diagnostics
        self.probe = None
        if int(dg.every) > 0:
            from .diagnostics import probe_plan
            self._diag_names, self._diag_reference = probe_plan(dg, self.estimator.name, self.model)
        self.data = None
        if self.model.needs_data:
            self.data = self._shared_data if self._shared_data is not None \
                else build_data(cfg.data, self.device)
            self.model.set_data_mean(self.data.train_mean())
        self.model.to(self.device)
        self.estimator.to(self.device)
        params = [{"params": self.model.parameters()}]
        est_params = list(self.estimator.parameters())
        if est_params:
            params.append({"params": est_params})
        # Adam on the fused kernel (CPU and CUDA): one pass over each parameter instead of a dozen
        # small ops per tensor (the step 250 us -> 95 us on the default VAE, CPU); experiment.optim
        self.opt = Adam(params, lr=float(cfg.train.lr))
        n = self.data.n("train") if self.data is not None else 0
        # the data stream (epoch order, dynamic binarization) has its own generator, seeded by
        # the seed alone: runs with the same seed see the same minibatches whatever the estimator
        # or learning rate, which is what makes comparisons across seeds paired (README, "Seeds")
        self.data_gen = torch.Generator(device=self.device).manual_seed(int(cfg.seed) + DATA_STREAM)
        self.batches = Batches(n, int(cfg.train.batch_size), self.device, self.data_gen)
        # the estimator's uniforms have a generator of their own too, so that nothing else that
        # draws random numbers (a diagnostic probe, another run in the same process: the replicas
        # of train.replicas) moves the training noise of this seed
        self.noise_gen = torch.Generator(device=self.device).manual_seed(int(cfg.seed) + NOISE_STREAM)
        # model selection (README, "Model selection"): the best validation step's model is kept
        # in best.pt and evaluated on test at the end, next to the final model
        self.select = selection_metric(self.model, cfg)
        self.best: dict = {"step": None, "value": None}
        self._no_data = torch.empty(int(cfg.train.batch_size), 0, device=self.device)
        self._like = torch.empty((), device=self.device)       # dtype and device of the noise
        self._forward = self.forward_pass
        if bool(cfg.train.compile):
            # shapes never change during training (the last incomplete batch is dropped), so one
            # static graph; floats such as the temperature are graph inputs (no recompilation)
            self._forward = torch.compile(self.forward_pass, dynamic=False)
        self._graphed = None
        if bool(cfg.train.cuda_graphs):      # captured at the first step (experiment/graphs.py)
            from .graphs import GraphedStep
            self._graphed = GraphedStep(self._backward_step, self._snapshot, self._restore,
                                        self.opt.zero_grad, f"estimator '{self.estimator.name}'")
        self.step = 0
        self.elapsed = 0.0            # training + eval seconds over all sessions (resume-safe)
        self.training_time = 0.0      # training alone (Stopwatch.training), over all sessions
        self.skip_nan = plain(cfg.train.on_nan) == "skip"
        self.skipped = 0              # steps skipped for a non-finite loss or gradient
        # training loss summed since the last log (in step order, so that a resumed run logs the
        # same values), and the (step, 0-dim loss) pairs not yet checked for NaN / inf: both on the
        # device, checked at log steps and every LOSS_CHECK steps
        self._loss_sum = torch.zeros((), device=self.device)
        self._n_sum = 0
        self._losses: list[tuple[int, torch.Tensor]] = []
        self._signal = None
        self.eval_gen = torch.Generator(device=self.device)
        self.log_gen = torch.Generator(device=self.device)
        if int(dg.every) > 0:
            # by default the diagnostic batch has the training batch size: the probe measures the
            # variance of the gradient the run applies (README, "Diagnostics")
            bs = int(dg.batch_size) if dg.batch_size is not None else int(cfg.train.batch_size)
            fit_lr = float(dg.fit_lr) if dg.fit_lr is not None else float(cfg.train.lr)
            from .diagnostics import Probe
            self.probe = Probe(
                self.model, self.estimator, self._diag_names, self._diag_reference,
                int(dg.samples), self.diagnostic_batch(bs), seed=int(cfg.seed),
                trained_cfg=cfg.estimator, fit_steps=int(dg.fit_steps), fit_lr=fit_lr,
                fit_batch=self.fit_batch)

    def fit_batch(self, generator: torch.Generator) -> torch.Tensor:
        """A training minibatch drawn (and binarized) with ``generator``, not the training
        stream: what the diagnostics fit a comparator's own parameters on (toy: B draws)."""
        bs = int(self.cfg.train.batch_size)
        if self.data is None:
            return self._no_data
        index = torch.randint(self.data.n("train"), (bs,), device=self.device, generator=generator)
        return self.inputs("train", index, generator=generator)

    def diagnostic_batch(self, n: int) -> torch.Tensor:
        """The fixed diagnostic minibatch: the first n training images, binarized once with a
        generator seeded by data.seed (toy: n independent draws)."""
        if self.data is None:
            return torch.empty(n, 0, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(int(self.cfg.data.seed))
        return self.inputs("train", torch.arange(n, device=self.device), generator=g)

    def inputs(self, split: str, index: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """Model inputs of ``split`` (all of it if ``index`` is None), with the labels appended
        as the last column for supervised models (models.base.with_labels)."""
        if index is None:
            x = self.data.full(split)
        else:
            x = self.data.batch(split, index, generator=generator)
        if self.model.needs_labels:
            y = self.data.labels(split)
            x = with_labels(x, y if index is None else y[index])
        return x

    # --- pieces of a step -----------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        if self.data is None:            # the toy problem: batch_size independent draws, no data
            return self._no_data
        return self.inputs("train", self.batches.next(), generator=self.data_gen)

    def train_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
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

    def draw_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The uniforms of this step's estimate, from the run's noise generator."""
        return uniform(self.model.noise_shape(self.estimator, x.shape[0]), self._like,
                       generator=self.noise_gen)

    def forward_pass(self, x: torch.Tensor, u: torch.Tensor):
        """(surrogate, per-example loss [B], stats) of one minibatch, for non-sequential models:
        the part of a step that ``train.compile=true`` hands to torch.compile."""
        return step_forward(self.model, self.estimator, x, u)

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
        """Keep this step's training state (known finite) in memory: the model, the estimator,
        Adam, the batch order and every generator the steps draw from. Not for the members of
        a replica group (``replayable`` false): their steps are taken together, not one by one."""
        if not getattr(self, "replayable", True):
            return
        # model and estimator come copied (owned); Adam's state and the batch order are live
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

    @torch.no_grad()
    def hard_loss(self, x: torch.Tensor) -> float:
        """One quantity for every estimator, logged at log steps as ``train/hard_loss``: the
        model's evaluation loss with exact discrete samples (one per example) on this step's
        minibatch (VAE: the negative single-sample ELBO; toy: the exact E[f]). The estimator's own
        ``loss`` is what it optimises (a relaxed objective for gumbel, the S-sample bound for
        vimco), which is not comparable across estimators. Its own generator: training follows
        the same random stream whatever ``log_every`` is."""
        self.model.eval()
        self.log_gen.manual_seed(int(self.cfg.seed) * 1000003 + self.step + (1 << 41))
        res = self.model.evaluate(x if self.data is not None else torch.empty(1, 0, device=self.device),
                                  1, generator=self.log_gen)
        self.model.train()
        return res["loss" if "loss" in res else "exact_loss"].mean().item()

    @torch.no_grad()
    def evaluate(self, split: str, samples_list: list[int], step: int | None = None) -> dict[str, float]:
        self.model.eval()
        step = self.step if step is None else step
        self.eval_gen.manual_seed(int(self.cfg.seed) * 1000003 + step)
        x = self.inputs(split) if self.data is not None else torch.empty(1, 0, device=self.device)
        out: dict[str, float] = {}
        for s in samples_list:
            res = self.model.evaluate(x, s, generator=self.eval_gen)
            for k, v in res.items():
                out.setdefault(k, v.mean().item())
        self.model.train()
        return out

    # --- checkpoints ---------------------------------------------------------------------------
    def training_state(self) -> dict:
        """What the next steps depend on: the model, the estimator, Adam, the batch order and
        every generator the steps draw from (in checkpoints, and the divergence replay's start)."""
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"model": owned(self.model.state_dict()), "estimator": owned(self.estimator.state_dict()),
                "optimizer": self.opt.state_dict(), "batches": self.batches.state_dict(), "rng": rng,
                "data_rng": self.data_gen.get_state(), "noise_rng": self.noise_gen.get_state()}

    def load_training_state(self, s: dict) -> None:
        """The inverse of :meth:`training_state` (on this run's device)."""
        self.model.load_state_dict(s["model"])
        self.estimator.load_state_dict(s["estimator"])
        self.opt.load_state_dict(s["optimizer"])
        self.batches.load_state_dict(s["batches"])
        if "data_rng" in s:
            self.data_gen.set_state(s["data_rng"].cpu())
        if "noise_rng" in s:
            self.noise_gen.set_state(s["noise_rng"].cpu())
        torch.set_rng_state(s["rng"]["cpu"].cpu())
        if "cuda" in s["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["rng"]["cuda"].cpu(), self.device)

    def state(self) -> dict:
        training = self.clock.training() if getattr(self, "clock", None) else self.training_time
        return {"step": self.step, "elapsed": self.elapsed, "training_time": training,
                **self.training_state(), "skipped": self.skipped,
                "best": dict(self.best),
                "log_accumulator": {"sum": self._loss_sum, "n": self._n_sum},
                "probe": self.probe.state_dict() if self.probe is not None else {},
                "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
                "config_fingerprint": self.fingerprint, "fingerprinted_config": self.fingerprinted,
                "device": str(self.device)}

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint: the parameters and buffers of the model and the
        estimator, and Adam's two moments of every trained parameter."""
        tensors = [*self.model.state_dict().values(), *self.estimator.state_dict().values()]
        size = sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
        return size + 2 * sum(p.numel() * p.element_size() for p in self.model.parameters())

    def save(self) -> None:
        save_checkpoint(self.out / CHECKPOINT, self.state())     # the former one -> PREVIOUS

    # --- the run folder: one writer, one run ------------------------------------------------------
    def hold_folder(self) -> None:
        """Take the folder's lock, then refuse a folder that holds another run (a different config
        fingerprint) or whose checkpoints all fail to read; pick the checkpoint to resume from.
        Reads nothing heavy: this runs before the data and the model are built."""
        cfg, out = self.cfg, self.out
        if not self.lock.acquire(wait=False):
            holder = self.lock.describe_holder()
            if not bool(cfg.train.wait):
                raise FolderInUse(
                    f"the run folder {out} is in use by {holder}; one process writes a run folder "
                    "at a time. Wait for it to end, rerun with train.wait=true to wait for it, or "
                    "use another folder (hydra.run.dir=...)")
            log.info("run folder %s is in use by %s; waiting for it to end (train.wait=true)",
                     out, holder)
            self.lock.acquire(wait=True)
            log.info("run folder %s is free; going on", out)
        if self.lock.removed:
            log.warning("removed %d temp file(s) a killed writer left in %s: %s", len(self.lock.removed),
                        out, ", ".join(p.name for p in self.lock.removed))
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self.fingerprint, self.fingerprinted = fingerprint(resolved)
        self._resume_from: tuple[Path, dict] | None = None
        held = [n for n in (CHECKPOINT, PREVIOUS, "summary.json", "metrics.csv") if (out / n).exists()]
        if held == ["summary.json"] and (self._read_summary() or {}).get("status") == "refused":
            held = []                     # a sweep job refused here before: nothing was run
        self._fresh = not held
        if plain(cfg.train.resume) == "never":
            if held:
                raise ConfigError(f"train.resume=never but the run folder {out} already holds a run "
                                  f"({', '.join(held)}); use a new folder (hydra.run.dir=...) or "
                                  "train.resume=auto")
            return
        state, path, unreadable = None, None, []
        for p in (out / CHECKPOINT, out / PREVIOUS):
            if p.exists():
                state, why = read_checkpoint(p)
                if state is not None:
                    path = p
                    break
                unreadable.append((p, why))
        if state is None and unreadable:
            why = dict(unreadable)
            raise ConfigError(
                "cannot resume the run in " + str(out) + ": "
                + "; ".join(f"{p.name} cannot be read ({why[p]})" if p in why else
                            f"there is no {p.name}" for p in (out / CHECKPOINT, out / PREVIOUS))
                + ". Either restore a readable checkpoint.pt, run in a new folder "
                "(hydra.run.dir=...), or start this folder over: delete its checkpoint*.pt, "
                "metrics.csv, grad_stats.csv and summary.json, then rerun")
        if state is not None:
            # the full config, where kept (every checkpoint has it), so that today's list of
            # resumable keys applies to both sides
            recorded = fingerprint(state["config"])[1] if "config" in state \
                else state.get("fingerprinted_config", {})
            self._refuse_another_run(recorded, f"{path.name} (step {int(state['step'])})")
            self._resume_from = (path, state)
        else:
            summary = self._read_summary()
            if summary and summary.get("fingerprinted_config") is not None:
                self._refuse_another_run(summary["fingerprinted_config"], "summary.json")
        if unreadable and path is not None:   # fall back to the previous checkpoint
            step = int(state["step"])
            last = _last_logged_step(out / "metrics.csv")
            redo = f"steps {step + 1}..{last} will be recomputed" if last > step else \
                f"training goes on from step {step}"
            p, why = unreadable[0]
            os.replace(p, out / DAMAGED)
            log.warning("%s cannot be read (%s; kept as %s); resuming from %s at step %d: %s",
                        p.name, why, DAMAGED, path.name, step, redo)
        elif path is not None and path.name == PREVIOUS:
            log.warning("%s is missing (a checkpoint write was interrupted); resuming from %s at "
                        "step %d", CHECKPOINT, PREVIOUS, int(state["step"]))

    def _refuse_another_run(self, recorded: dict, source: str) -> None:
        diff = config_diff(run_defining(recorded), self.fingerprinted)
        # a key on one side only (added or removed by another version of discograd) decides
        # nothing by itself: switching a group changes its name, which both sides have
        if all(MISSING_VALUE in (a, b) for _, a, b in diff):
            return
        diff.sort(key=lambda d: MISSING_VALUE in d[1:])       # keys both sides have first
        shown = [f"  {k}: {_show(a)} -> {_show(b)}" for k, a, b in diff[:30]]
        if len(diff) > 30:
            shown.append(f"  ... and {len(diff) - 30} more")
        raise ConfigError(
            f"the run folder {self.out} holds a run with another configuration: its {source} "
            f"differs from this command in {len(diff)} key(s) (old -> new):\n" + "\n".join(shown)
            + "\nA run folder holds one run. Either run this config in a new folder "
            "(hydra.run.dir=..., or hydra.sweep.dir=... for a sweep), or start it afresh in an empty "
            "folder with train.resume=never; to continue the old run, rerun it with its values. "
            "Keys that may change when resuming: " + ", ".join(RESUMABLE_KEYS))

    def _read_summary(self) -> dict | None:
        try:
            return json.loads((self.out / "summary.json").read_text())
        except (OSError, ValueError):
            return None

    def try_resume(self) -> bool:
        if self._resume_from is None:
            # nothing to resume from: rows of an earlier attempt killed before its first
            # checkpoint would be logged twice; this attempt rewrites them
            dropped = CSVLog.truncate_after(self.out / "metrics.csv", -1)
            dropped += CSVLog.truncate_after(self.out / "grad_stats.csv", -1)
            if dropped:
                log.warning("no checkpoint in %s: starting at step 0 (%d log rows of an earlier "
                            "attempt dropped)", self.out, dropped)
            return False
        path, s = self._resume_from
        self._resume_from = None
        s = _to_device(s, self.device)
        if s.get("device", str(self.device)) != str(self.device):
            log.warning("resuming on %s a run checkpointed on %s: the steps from here on are not "
                        "bit-identical to an uninterrupted run", self.device, s["device"])
        self.load_training_state(s)
        self.best = dict(s.get("best", self.best))
        self.step, self.elapsed = int(s["step"]), float(s["elapsed"])
        self.training_time = float(s.get("training_time", s["elapsed"]))
        self.skipped = int(s.get("skipped", 0))
        acc = s.get("log_accumulator", {"sum": torch.zeros(()), "n": 0})
        self._loss_sum, self._n_sum = acc["sum"].to(self.device), int(acc["n"])
        if self.probe is not None:               # the fitted comparators of the diagnostics
            self.probe.load_state_dict(s.get("probe", {}))
        dropped = CSVLog.truncate_after(self.out / "metrics.csv", self.step)
        dropped += CSVLog.truncate_after(self.out / "grad_stats.csv", self.step)
        log.info("resumed from %s at step %d (%d log rows after it dropped)", path, self.step, dropped)
        done = self._read_summary() or {}
        if done.get("status") == "completed" and self.step < int(self.cfg.train.steps):
            log.info("extending the completed run of %d steps to train.steps=%d", int(done["step"]),
                     int(self.cfg.train.steps))
        return True

    # --- the run -------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._signal = signum               # acted on at the next step boundary

    def _install_signals(self) -> dict:
        """SIGTERM / SIGUSR1 (what SLURM sends before preemption) and SIGUSR2 (submitit's
        timeout signal): checkpoint at the next step boundary, then exit or pass the signal on to
        the previous handler (submitit's, which requeues the job)."""
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:               # not the main thread: leave signals alone
                pass
        return previous

    def _completed_summary(self) -> dict | None:
        path = self.out / "summary.json"
        if not path.exists():
            return None
        try:
            s = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if s.get("status") == "completed" and int(s.get("step", -1)) >= int(self.cfg.train.steps):
            return s
        return None

    def fit(self) -> dict:
        """Train to ``train.steps``, evaluate, checkpoint; returns the summary (also written to
        summary.json). The phases of a step are named methods below; ``_guard`` maps a divergence,
        an interruption or a failure to the run's status and writes the summary."""
        done = self._completed_summary()
        if done is not None:                # never overwrite a completed run
            log.info("run folder %s already holds a completed run of %d steps; nothing to do",
                     self.out, done["step"])
            return done
        resumed = self.try_resume()
        steps = self.prepare_loop()
        with self._logs() as logs, self._guard() as run:
            if not resumed and self.step == 0:
                self.start_phase(logs)
            self._remember()                 # the start of the first replay (check_finite)
            while self.step < steps:
                x = self.next_batch()
                self.account(*self.train_step(x))
                self.after_step(logs, x)
                if self._signal is not None:
                    raise Interrupted(self._signal)
            run.final = self.final_phase(logs)
        return run.summary

    # --- the phases of fit ------------------------------------------------------------------------
    def prepare_loop(self) -> int:
        """Read the loop's periods from the config once (an OmegaConf lookup costs microseconds,
        which the toy's 10,000 steps per second would pay at every step); train.steps."""
        tr, never = self.cfg.train, 1 << 62
        self._steps = int(tr.steps)
        self._every = {"log": int(tr.log_every), "eval": int(tr.eval_every),
                       "checkpoint": int(tr.checkpoint_every),
                       "probe": int(self.cfg.diagnostics.every) if self.probe is not None else never}
        return self._steps

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
        values["hard_loss"] = self.hard_loss(x)        # after the rate: counted as training time
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
            ev = self.evaluate(split, [int(self.cfg.eval.samples)])
        logs.metrics.log(self.step, self.batches.epoch, wall if self.step else 0.0, split, ev)
        if not all(math.isfinite(v) for v in ev.values()):
            raise Diverged(self.step, f"{split} metrics")
        if split == "valid":
            self.consider_best(ev)
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

    def consider_best(self, valid: dict[str, float]) -> None:
        """After a validation evaluation: keep the model in best.pt if it is the best so far on
        the selection metric (ties keep the earlier step)."""
        if self.select is None:
            return
        value = valid[self.select]
        best = self.best["value"]
        if best is not None and not (value > best if higher_is_better(self.select) else value < best):
            return
        self.best = {"step": self.step, "value": value}
        save_checkpoint(self.out / BEST, {"step": self.step, "metric": f"valid/{self.select}",
                                          "valid": dict(valid), "model": owned(self.model.state_dict())},
                        keep_previous=False)

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
                ev = self.evaluate(split, ss)
                logs.metrics.log(self.step, self.batches.epoch, self.elapsed, split, ev)
                final.update({f"{split}/{k}": v for k, v in ev.items()})
                if not all(math.isfinite(v) for v in ev.values()):
                    raise Diverged(self.step, f"final {split} metrics")
                if split == "valid":
                    self.consider_best(ev)
            self.best_metrics = self.evaluate_best(final, samples)
        self.elapsed = self.clock.elapsed()
        self.save()
        return final

    def evaluate_best(self, final: dict[str, float], samples: list[int]) -> dict | None:
        """summary.json's ``best``: the step, the selection metric and the valid and test metrics
        of the best validation step's model (the final model's when that step is the last)."""
        if self.select is None:
            return None
        step = self.best["step"]
        head = {"step": step, "metric": f"valid/{self.select}"}
        if step == self.step:
            return {**head, **final}
        kept, _ = read_checkpoint(self.out / BEST, self.device)
        if kept is None or int(kept["step"]) != step:
            raise RuntimeError(f"{self.out / BEST} does not hold the model of the best validation "
                               f"step {step} (found {None if kept is None else kept['step']})")
        now = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            self.model.load_state_dict(kept["model"])
            test = self.evaluate("test", samples, step=step)
        finally:
            self.model.load_state_dict(now)
        return {**head, **{f"valid/{k}": v for k, v in kept["valid"].items()},
                **{f"test/{k}": v for k, v in test.items()}}

    @contextlib.contextmanager
    def _logs(self):
        """The open logs of a session: metrics.csv, grad_stats.csv, the progress bar."""
        from types import SimpleNamespace
        logs = SimpleNamespace(bar=None, grads=None, metrics=MetricsLog(
            self.out / "metrics.csv", tensorboard=bool(self.cfg.logger.tensorboard)))
        try:
            if self.probe is not None:
                from .diagnostics import GRAD_STATS_HEADER
                logs.grads = CSVLog(self.out / "grad_stats.csv", GRAD_STATS_HEADER)
            steps = int(self.cfg.train.steps)
            if self.interactive and self.step < steps:
                from tqdm import tqdm
                logs.bar = tqdm(total=steps, initial=self.step, dynamic_ncols=True,
                                desc=self.estimator.name)
            yield logs
        finally:
            logs.metrics.close()
            if logs.grads is not None:
                logs.grads.close()
            if logs.bar is not None:
                logs.bar.close()

    @contextlib.contextmanager
    def _guard(self):
        """Signals in, status out: a divergence or an interruption ends the run with that status
        (an interruption writes a checkpoint of finite parameters, then passes the signal on, e.g.
        to submitit's requeue); any other error is recorded as ``failed`` and re-raised. The
        summary is written to summary.json in every case."""
        run = self.open_session()
        try:
            yield run
        except BaseException as e:
            self.close_session(run, e)
        else:
            self.close_session(run, None)

    def open_session(self, signals: bool = True) -> SimpleRun:
        """Start the clock (and, unless ``signals`` is False, catch SIGTERM / SIGUSR1 / SIGUSR2)."""
        self.clock = Stopwatch(self.elapsed, self.step, self.training_time)
        self._previous_handlers = self._install_signals() if signals else {}
        return SimpleRun()

    def close_session(self, run: SimpleRun, exc: BaseException | None, pass_on: bool = True) -> None:
        """End a session with the status that ``exc`` (None: completed) means, write summary.json.
        ``pass_on``: after an interruption, hand the signal to the previous handler and exit
        (a replica group does that once for all its members)."""
        previous = self._previous_handlers
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
            self.elapsed = self.clock.elapsed()
            try:
                self.check_finite()
                healthy = True
            except Diverged:
                healthy = False
            if healthy:                         # never save NaN parameters
                self.save()
                log.warning("interrupted by %s at step %d; checkpoint written, a rerun resumes",
                            signal.Signals(sig).name, self.step)
            else:
                log.warning("interrupted by %s at step %d; the parameters are not finite, so no "
                            "checkpoint was written", signal.Signals(sig).name, self.step)
        except Exception as e:  # noqa: BLE001 - recorded, then re-raised
            error = {"step": self.step, "message": repr(e)}
            write_json(self.out / "summary.json", self._summary_now("failed", run.final, error))
            raise
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        run.summary = self._summary_now(status, run.final, error)
        write_json(self.out / "summary.json", run.summary)
        if status == "interrupted" and self._signal is not None and pass_on:
            handler = previous.get(self._signal)
            if callable(handler):           # e.g. submitit's: requeue the job
                handler(self._signal, None)
            raise SystemExit(128 + int(self._signal))

    def _summary_now(self, status: str, final: dict, error) -> dict:
        return self.summary(status, final, error, self.clock.seconds["eval"],
                            self.clock.seconds["diagnostics"])

    def summary(self, status: str, final: dict, error, eval_s: float, diag_s: float = 0.0) -> dict:
        m = self.model
        return {
            "status": status,
            "step": self.step,
            "steps": int(self.cfg.train.steps),
            "error": error,
            "final": final,
            "best": getattr(self, "best_metrics", None) if status == "completed" else None,
            "main_metric": m.main_metric,
            "skipped_steps": self.skipped,
            "timings": {"elapsed_s": round(self.elapsed, 3), "eval_s_this_session": round(eval_s, 3),
                        "diagnostics_s_this_session": round(diag_s, 3),
                        "steps_per_s": round(self.step / max(self.elapsed - eval_s - diag_s, 1e-9), 2)},
            "estimator": {**self.estimator.properties(),
                          "evals": self.model.evals_per_step(self.estimator),
                          **self.model.estimator_mode(self.estimator)},
            "model": {"name": m.name, "kind": m.kind, "latent_shape": list(m.latent_shape),
                      "parameters": sum(p.numel() for p in m.parameters())},
            "device": str(self.device),
            "seed": int(self.cfg.seed),
            **({"replica": self.replica} if self.replica else {}),
            "config_fingerprint": self.fingerprint,
            "fingerprinted_config": self.fingerprinted,
            "versions": versions(),
        }


def owned(state: dict) -> dict:
    """A state_dict whose tensors own their memory: a replica's parameters are views into the
    stacked tensors of its group (experiment/replicas.py), and torch.save writes a view's whole
    storage."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) if isinstance(v, torch.Tensor)
            else v for k, v in state.items()}


def _show(value) -> str:
    return value if value == MISSING_VALUE else json.dumps(value, default=str)


def _to_device(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _last_logged_step(path: Path) -> int:
    """The largest step in a CSV log with a ``step`` column (-1 if none)."""
    import csv
    try:
        with open(path, newline="") as fh:
            return max((int(r["step"]) for r in csv.DictReader(fh) if r.get("step", "").isdigit()),
                       default=-1)
    except OSError:
        return -1


def write_hydra_files(out: Path, files: dict[str, str]) -> None:
    """.hydra/config.yaml, hydra.yaml, overrides.yaml (Hydra's own content and names; Hydra
    itself writes none: configs/config.yaml sets hydra.output_subdir=null)."""
    folder = out / ".hydra"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        atomic_write(folder / name, text.encode())


def report(summary: dict) -> str:
    f = summary["final"]
    parts = [f"status {summary['status']} after {summary['step']} steps"]
    for k in sorted(f):
        if k.startswith("test/"):
            v = f[k]
            name = k[5:]
            if name == "elbo" or name.startswith("bound_"):
                parts.append(f"test -{name} {-v:.2f} nats")
            elif name != "loss":
                parts.append(f"test {name} {v:.5g}")
    return "; ".join(parts)


def write_report(folder: Path) -> None:
    """``python -m analysis FOLDER``: report.md, tables and figures in FOLDER/analysis. A report
    that fails is logged, never fatal: the run's own files are already complete."""
    t0 = time.perf_counter()
    try:
        from discograd.analysis.report import make_report
        path = make_report(folder)
    except Exception as e:  # noqa: BLE001 - the run is done; the report is a convenience
        log.warning("could not write the report of %s (%r); run python -m analysis %s", folder, e,
                    folder)
        return
    log.info("report %s (%.1f s)", path, time.perf_counter() - t0)


def hydra_entry(cfg: DictConfig):
    """Entry point called by run.py inside Hydra's job context. In a sweep, a job that is refused
    or fails says so in one line and in its folder (summary.json, run.log) and returns: the other
    jobs go on, and the sweep's report lists it (experiment/callbacks.py)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    launcher = str(OmegaConf.select(hc, "launcher._target_", default="") or "")
    if "joblib" in launcher.lower():
        # parallel jobs on one machine: one intra-op thread each, so n_jobs processes do not
        # oversubscribe the cores (the speed of a joblib sweep comes from running jobs side by side)
        torch.set_num_threads(1)
    held = HeldFileLogs()            # run.log may be another run's until the folder is ours
    shrunk = shrink(cfg)
    if shrunk:
        log.warning("%s is set: a smoke test, not a result (%s)", SHRINK_ENV, "; ".join(shrunk))
    progress = plain(cfg.train.progress)
    interactive = progress == "bar" or (progress == "auto" and not sweep and sys.stderr.isatty())
    hydra_files = {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
                   "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
                   "overrides.yaml": OmegaConf.to_yaml(hc.overrides.task)}
    job = f"job {hc.job.num}: " if sweep else ""
    if int(cfg.train.replicas) > 1:
        return replica_entry(cfg, out, sweep, hydra_files, job, held)
    try:
        trainer = Trainer(cfg, out, interactive=interactive, hydra_files=hydra_files)
    except Exception as e:
        held.release(keep=not isinstance(e, ConfigError))     # a refusal leaves run.log alone
        return _stopped(e, sweep, out, job)    # refused, or e.g. the data could not be read
    held.release(keep=True)
    try:
        summary = trainer.fit()
    except Exception as e:
        if not sweep:
            _fail(e, out, trainer.checkpoint_bytes())     # a message and its exit code, or a traceback
        return _job_failed(e, out, job)     # summary.json says failed (Trainer._guard)
    finally:
        trainer.close()
    log.info("%s; run folder %s", report(summary), out)
    if bool(cfg.report.run) and not sweep:     # a sweep's jobs: one report for the sweep (callback)
        write_report(out)
    if summary["status"] == "diverged" and not sweep:
        sys.exit(EXIT_DIVERGED)
    return summary["final"].get(f"test/{trainer.model.main_metric}")


class HeldFileLogs:
    """Hold back the records meant for the run's log files (Hydra's run.log) until the run owns
    its folder: a process refused there (the folder is in use, or holds another run) must not
    write into that run's log. ``release(keep)`` writes the held records (keep) or drops them."""

    def __init__(self):
        import logging.handlers
        self.pairs = []
        for lg in {id(x): x for x in (logging.getLogger(), log)}.values():
            for h in list(lg.handlers):
                if isinstance(h, logging.FileHandler):
                    mh = logging.handlers.MemoryHandler(1 << 30, flushLevel=logging.CRITICAL + 1)
                    mh.setLevel(h.level)
                    mh.setFormatter(h.formatter)
                    lg.removeHandler(h)
                    lg.addHandler(mh)
                    self.pairs.append((lg, h, mh))

    def release(self, keep: bool) -> None:
        for lg, h, mh in self.pairs:
            lg.removeHandler(mh)
            lg.addHandler(h)
            if keep:
                mh.setTarget(h)
                mh.flush()
            mh.close()
        self.pairs = []


def _refused(e: ConfigError, sweep: bool, out: Path, job: str = ""):
    """A refused configuration, said once on stderr: exit code 2 (75: the run folder is in use).
    A refusal writes nothing into a folder that holds a run (its run.log is that run's), and a
    single run leaves no folder made for it alone (:func:`_remove_fresh`). In a sweep the job
    returns instead, and its fresh folder records the refusal in summary.json (status
    ``refused``) and run.log, for the sweep's report."""
    what, code = ("run folder in use", EXIT_BUSY) if isinstance(e, FolderInUse) else \
        ("invalid configuration", EXIT_INVALID)
    print(f"discograd: {job}{what}: {e}", file=sys.stderr, flush=True)
    fresh = not isinstance(e, FolderInUse) and not any(
        (out / n).exists() for n in (CHECKPOINT, PREVIOUS, "summary.json", "metrics.csv"))
    if not sweep:
        if fresh:
            _remove_fresh(out)
        sys.exit(code)
    if fresh and (out / ".hydra").exists():
        log_to_files(logging.ERROR, "%s: %s", what, e)
        write_json(out / "summary.json", {"status": "refused", "error": {"message": str(e)}})
    return None


def _remove_fresh(out: Path) -> None:
    """Remove what a refused single run made in a folder that held nothing before it: Hydra's
    run.log, the lock files and .hydra/; then the folder itself if that left it empty (a folder
    with anything else in it is the user's, and stays)."""
    for h in logging.getLogger().handlers + log.handlers:       # run.log is not written again
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == out.resolve():
            h.close()
            for lg in (logging.getLogger(), log):
                if h in lg.handlers:
                    lg.removeHandler(h)
    for name in ("run.log", ".lock", ".lock.json"):
        with contextlib.suppress(OSError):
            (out / name).unlink()
    hydra = out / ".hydra"
    if hydra.is_dir() and {p.name for p in hydra.iterdir()} <= {"config.yaml", "hydra.yaml",
                                                               "overrides.yaml"}:
        for p in hydra.iterdir():
            p.unlink()
        hydra.rmdir()
    with contextlib.suppress(OSError):
        out.rmdir()                            # only when empty


def _stopped(e: Exception, sweep: bool, out: Path, job: str):
    """A run that could not go on: a ConfigError is a refusal (:func:`_refused`); any other error
    ends a single run with :func:`_fail` and is recorded as a failed job in a sweep."""
    if isinstance(e, ConfigError):
        return _refused(e, sweep, out, job)
    if not sweep:
        _fail(e, out)
    return _job_failed(e, out, job)


def _chain(e: BaseException):
    """``e`` and the exceptions it was raised from or while handling (torch wraps an OSError of
    a full disk in a RuntimeError, for instance)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def expected_failure(e: BaseException, out: Path, need: int = 0) -> tuple[int, str] | None:
    """(exit code, message) for a failure a user can act on, None for a bug. The message names
    the file or folder, what happened and what to do (README, "Exit codes")."""
    from .data import DataError
    for x in _chain(e):
        if isinstance(x, DataError):
            return EXIT_DATA, f"the data could not be read: {x}"
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return EXIT_IO, _disk_full(out, x, need)
        if isinstance(x, OSError) and x.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = x.filename or out
            return EXIT_IO, (f"cannot write {where} ({x.strerror}): a run needs a writable run "
                             "folder; choose another with hydra.run.dir=DIR (hydra.sweep.dir=DIR "
                             "for a sweep)")
    return None


def _disk_full(out: Path, e: OSError, need: int = 0) -> str:
    """What a full disk means for this run: the folder, the last complete checkpoint (it stays:
    writes are atomic, the half-written temp file is removed), the space a checkpoint takes."""
    state, _ = read_checkpoint(out / CHECKPOINT) if (out / CHECKPOINT).exists() else (None, None)
    size = max([(out / n).stat().st_size for n in (CHECKPOINT, PREVIOUS) if (out / n).exists()],
               default=need)
    where = f" writing {Path(e.filename).name}" if e.filename else ""
    kept = (f"the last complete checkpoint (step {state['step']}) is intact" if state
            else "no checkpoint was complete yet")
    need = f" (a checkpoint takes {size / 2**20:.1f} MiB; two are kept)" if size else ""
    return (f"no space left on the device holding {out}{where}: {kept}, nothing half-written "
            f"remains. Free space there{need} and rerun the same command: it resumes.")


def _fail(e: BaseException, out: Path, need: int = 0) -> None:
    """End a single run that failed: an expected failure is one line on stderr (and in run.log,
    when there is room) and its exit code; anything else is a bug: re-raised for its traceback,
    after a line that says so."""
    known = expected_failure(e, out, need)
    if known is None:
        print(f"discograd: an unexpected error, which is a bug: please report it with the "
              f"traceback below and {out / 'run.log'}", file=sys.stderr, flush=True)
        raise e
    code, message = known
    with contextlib.suppress(OSError):
        log_to_files(logging.ERROR, "%s", message)
    print(f"discograd: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _job_failed(e: BaseException, out: Path, job: str):
    """A sweep's job that failed at run time: the traceback goes to its run.log, one line to
    stderr; the sweep goes on (its report lists the job with this error)."""
    known = expected_failure(e, out)
    message = known[1] if known else repr(e)
    with contextlib.suppress(OSError):
        log_to_files(logging.ERROR, "the run failed: %s\n%s", message,
                     "".join(traceback.format_exception(e)))
        if (out / ".hydra").exists() and not (out / "summary.json").exists():
            write_json(out / "summary.json", {"status": "failed", "error": {"message": message}})
    print(f"discograd: {job}failed: {message}" + ("" if known else f" (traceback in {out / 'run.log'})"),
          file=sys.stderr, flush=True)
    return None


def replica_entry(cfg: DictConfig, out: Path, sweep: bool, hydra_files: dict[str, str], job: str = "",
                  held: "HeldFileLogs | None" = None):
    """``train.replicas=N``: the N members train in one process (experiment/replicas.py), each in
    its run folder ``out/seed=<s>``; returns the mean over the members of the test main metric."""
    from .replicas import ReplicaGroup
    held = held or HeldFileLogs()
    try:
        group = ReplicaGroup(cfg, out, hydra_files=hydra_files)
    except Exception as e:
        held.release(keep=not isinstance(e, ConfigError))
        return _stopped(e, sweep, out, job)
    held.release(keep=True)
    try:
        summaries = group.fit()
    except Exception as e:
        return _stopped(e, sweep, out, job)
    finally:
        group.close()
    main = group.members[0].model.main_metric
    for m, s in zip(group.members, summaries):
        log.info("%s%s; run folder %s", m.tag, report(s), m.out)
    if bool(cfg.report.run) and not sweep:
        write_report(out)
    if any(s["status"] == "diverged" for s in summaries) and not sweep:
        sys.exit(EXIT_DIVERGED)
    values = [s["final"].get(f"test/{main}") for s in summaries]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None
