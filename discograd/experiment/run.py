"""One run's state (:class:`Run`): the folder it is claimed in, what it is built from, the
model, estimator, optimizer, data and random streams, what a checkpoint holds and resumes, and
what summary.json says. experiment/train.py trains it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from discograd.diagnostics import Probe
from discograd.errors import ConfigError
from discograd.estimators import uniform
from discograd.files import CHECKPOINT, save_checkpoint
from discograd.models.base import with_labels
from discograd.optim import Adam
from .build import build, build_data, pick_device, selection_metric
from .config import plain
from .evaluation import Evaluator, owned
from .folder import RunFolder, write_hydra_files
from .lifecycle import Signals
from .logbook import versions
from .validate import check_keys

log = logging.getLogger("discograd")
DATA_STREAM = 1 << 40  # the data generator's seed is seed + DATA_STREAM
NOISE_STREAM = 1 << 42  # the estimator noise generator's seed is seed + NOISE_STREAM


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


class Run:
    """One run's state: its folder, config, model, estimator, optimizer, data and random
    streams, step and clocks; what a checkpoint holds and what summary.json says. The training
    loop that advances it is :class:`~.train.Trainer`."""

    def __init__(self, cfg: DictConfig, out_dir: Path, interactive: bool = False,
                 hydra_files: dict[str, str] | None = None, data=None, tag: str = ""):
        """Claim the run folder ``out_dir``, check and build the run (a ConfigError names a bad
        value before any work; the folder is let go on any failure). ``hydra_files``: Hydra's
        .hydra/*.yaml texts, written once the folder is held (so a refused command never
        overwrites the folder's own). ``data``: an already loaded data set of the same ``data``
        config (the members of a replica group share one); ``tag``: a prefix of this run's log
        lines (a replica's seed)."""
        self.cfg, self.out = cfg, Path(out_dir)
        self.interactive, self.tag = interactive, tag
        self.replica: dict | None = None     # {"index", "of", "group"} when trained as a replica
        self.replayable = True               # False in a replica group (steps taken together)
        self.folder = RunFolder(self.out, cfg)
        try:
            self.folder.claim()           # one writer; a folder of another run is refused
            try:                          # bad input fails before any work
                check_keys(cfg)
                self.device = pick_device(plain(cfg.device))
                parts = build(cfg, self.device)
            except ConfigError:
                if hydra_files and self.folder.fresh:   # a failed job stays listed by analysis
                    write_hydra_files(self.out, hydra_files)
                raise
            if hydra_files:
                write_hydra_files(self.out, hydra_files)
            self._setup(cfg, parts, data)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the run folder (the end of the run; also at process exit)."""
        self.folder.release()

    def _setup(self, cfg: DictConfig, parts, data) -> None:
        """Everything heavy, once the folder is held and the config valid."""
        self.model, self.estimator = parts.model, parts.estimator
        self.data = None
        if self.model.needs_data:
            self.data = data if data is not None else build_data(cfg.data, self.device)
            self.model.set_data_mean(self.data.train_mean())
        self.model.to(self.device)
        self.estimator.to(self.device)
        params = [{"params": self.model.parameters()}]
        est_params = list(self.estimator.parameters())
        if est_params:
            params.append({"params": est_params})
        # Adam on the fused kernel (CPU and CUDA): one pass over each parameter instead of a dozen
        # small ops per tensor (the step 250 us -> 95 us on the default VAE, CPU); discograd.optim
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
        # evaluation and model selection (README, "Model selection")
        self.evaluation = Evaluator(self.model, self.split_inputs, self.device, int(cfg.seed),
                                    self.out, selection_metric(self.model, cfg))
        self.best_metrics = None
        self._no_data = torch.empty(int(cfg.train.batch_size), 0, device=self.device)
        self._like = torch.empty((), device=self.device)       # dtype and device of the noise
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
        self.signals = Signals()
        self.probe = None
        if parts.probe is not None:
            dg = cfg.diagnostics
            # by default the diagnostic batch has the training batch size: the probe measures the
            # variance of the gradient the run applies (README, "Diagnostics")
            bs = int(dg.batch_size) if dg.batch_size is not None else int(cfg.train.batch_size)
            fit_lr = float(dg.fit_lr) if dg.fit_lr is not None else float(cfg.train.lr)
            names, reference = parts.probe
            self.probe = Probe(
                self.model, self.estimator, names, reference, int(dg.samples),
                self.diagnostic_batch(bs), seed=int(cfg.seed), trained_cfg=cfg.estimator,
                fit_steps=int(dg.fit_steps), fit_lr=fit_lr, fit_batch=self.fit_batch)

    # --- inputs -----------------------------------------------------------------------------------
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

    def split_inputs(self, split: str) -> torch.Tensor | None:
        """A whole split's inputs, for evaluation; None without data (the toy)."""
        return self.inputs(split) if self.data is not None else None

    def next_batch(self) -> torch.Tensor:
        if self.data is None:            # the toy problem: batch_size independent draws, no data
            return self._no_data
        return self.inputs("train", self.batches.next(), generator=self.data_gen)

    def draw_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The uniforms of this step's estimate, from the run's noise generator."""
        return uniform(self.model.noise_shape(self.estimator, x.shape[0]), self._like,
                       generator=self.noise_gen)

    # --- state and checkpoints ---------------------------------------------------------------------
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
        """A checkpoint: the training state, the clocks, the loop's accumulators, model selection,
        the probe's fitted comparators and the config (README, "Resuming")."""
        training = self.clock.training() if getattr(self, "clock", None) else self.training_time
        return {"step": self.step, "elapsed": self.elapsed, "training_time": training,
                **self.training_state(), "skipped": self.skipped,
                "best": dict(self.evaluation.best),
                "log_accumulator": {"sum": self._loss_sum, "n": self._n_sum},
                "probe": self.probe.state_dict() if self.probe is not None else {},
                "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
                "config_fingerprint": self.folder.fingerprint,
                "fingerprinted_config": self.folder.fingerprinted, "device": str(self.device)}

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint: the parameters and buffers of the model and the
        estimator, and Adam's two moments of every trained parameter."""
        tensors = [*self.model.state_dict().values(), *self.estimator.state_dict().values()]
        size = sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
        return size + 2 * sum(p.numel() * p.element_size() for p in self.model.parameters())

    def save(self) -> None:
        save_checkpoint(self.out / CHECKPOINT, self.state())     # the former one -> PREVIOUS

    def resume(self) -> bool:
        """Load the checkpoint the folder chose (:meth:`RunFolder.claim`); False without one."""
        found = self.folder.take_resume()
        if found is None:
            return False
        path, s = found
        s = _to_device(s, self.device)
        if s.get("device", str(self.device)) != str(self.device):
            log.warning("resuming on %s a run checkpointed on %s: the steps from here on are not "
                        "bit-identical to an uninterrupted run", self.device, s["device"])
        self.load_training_state(s)
        self.evaluation.best = dict(s.get("best", self.evaluation.best))
        self.step, self.elapsed = int(s["step"]), float(s["elapsed"])
        self.training_time = float(s.get("training_time", s["elapsed"]))
        self.skipped = int(s.get("skipped", 0))
        acc = s.get("log_accumulator", {"sum": torch.zeros(()), "n": 0})
        self._loss_sum, self._n_sum = acc["sum"].to(self.device), int(acc["n"])
        if self.probe is not None:               # the fitted comparators of the diagnostics
            self.probe.load_state_dict(s.get("probe", {}))
        dropped = self.folder.truncate_logs(self.step)
        log.info("resumed from %s at step %d (%d log rows after it dropped)", path, self.step, dropped)
        done = self.folder.read_summary() or {}
        if done.get("status") == "completed" and self.step < int(self.cfg.train.steps):
            log.info("extending the completed run of %d steps to train.steps=%d", int(done["step"]),
                     int(self.cfg.train.steps))
        return True

    def summary(self, status: str, final: dict, error) -> dict:
        """summary.json (docs/design.md, "Files of one run")."""
        m, seconds = self.model, self.clock.seconds
        eval_s, diag_s = seconds["eval"], seconds["diagnostics"]
        return {
            "status": status,
            "step": self.step,
            "steps": int(self.cfg.train.steps),
            "error": error,
            "final": final,
            "best": self.best_metrics if status == "completed" else None,
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
            "config_fingerprint": self.folder.fingerprint,
            "fingerprinted_config": self.folder.fingerprinted,
            "versions": versions(),
        }


def _to_device(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
