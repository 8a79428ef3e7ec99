"""The training harness: build everything from the config, train, evaluate, log.

The loop does not know which estimator or model it runs (DESIGN.md, "One training step"): it asks
the model for logits and the objective f, the estimator for an Estimate, adds the model's direct
terms (analytic KL) and steps the optimizer. The only host synchronisations happen at log, eval
and checkpoint steps.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from estimators import ConfigError, Estimator, build_estimator
from models import MODELS, LatentModel
from .config import plain
from .logbook import (CSVLog, MetricsLog, load_checkpoint, save_checkpoint, versions, write_json)
from .validate import validate

log = logging.getLogger("discograd")


class Diverged(RuntimeError):
    def __init__(self, step: int, quantity: str):
        super().__init__(f"non-finite {quantity} at step {step}")
        self.step, self.quantity = step, quantity


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but CUDA is not available; accepted here: auto, cpu")
    return torch.device(name)


def build_model(cfg) -> LatentModel:
    m = cfg.model
    kind = plain(m.latent)
    if m.name == "toy":
        return MODELS["toy"](dim=m.dim, t=m.t, latent=kind, classes=m.classes)
    latent_dim = m.latent_dim if m.latent_dim is not None else (200 if kind == "bernoulli" else 20)
    return MODELS["vae"](latent=kind, latent_dim=latent_dim, classes=m.classes,
                         hidden=list(m.hidden), kl=plain(m.kl))


class Batches:
    """Minibatch indices from a permutation of the training set made on the device, one epoch at
    a time (the last incomplete batch of an epoch is dropped)."""

    def __init__(self, n: int, batch_size: int, device: torch.device):
        self.n, self.bs, self.device = n, batch_size, device
        self.per_epoch = n // batch_size
        self.epoch, self.pos, self.perm = 0, 0, None

    def next(self) -> torch.Tensor:
        if self.perm is None or self.pos >= self.per_epoch:
            if self.perm is not None:
                self.epoch += 1
            self.perm, self.pos = torch.randperm(self.n, device=self.device), 0
        idx = self.perm[self.pos * self.bs:(self.pos + 1) * self.bs]
        self.pos += 1
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "perm": self.perm}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos, self.perm = int(s["epoch"]), int(s["pos"]), s["perm"]


class Trainer:
    def __init__(self, cfg: DictConfig, out_dir: Path, interactive: bool = False):
        self.cfg, self.out = cfg, Path(out_dir)
        self.interactive = interactive
        validate(cfg)                                     # bad input fails before any work
        self.device = pick_device(plain(cfg.device))
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(int(cfg.seed))
        self.model = build_model(cfg)
        self.estimator: Estimator = build_estimator(cfg.estimator, self.model.kind, self.model.latent_shape)
        if self.model.sequential and self.estimator.multi_eval:
            raise ConfigError(f"estimator '{self.estimator.name}' evaluates f {self.estimator.evals} times "
                              f"per example, which model '{self.model.name}' (sequential latents) cannot do")
        dg = cfg.diagnostics
        self.probe = None
        if int(dg.every) > 0:
            from . import diagnostics
            spec = dg.estimators
            if spec is not None and not isinstance(spec, str):
                spec = list(spec)
            self._diag_names = diagnostics.resolve_estimators(
                spec, self.estimator.name, self.model.kind, self.model.sequential)
            self._diag_reference = diagnostics.parse_reference(dg.reference, self.model)
        self.data = None
        if self.model.needs_data:
            from .data import MNISTData, load_mnist
            d = cfg.data
            self.data = MNISTData(load_mnist(d.root, d.cache_dir), plain(d.binarize), self.device, int(d.seed))
            self.model.set_data_mean(self.data.train_mean())
        self.model.to(self.device)
        self.estimator.to(self.device)
        params = [{"params": self.model.parameters()}]
        est_params = list(self.estimator.parameters())
        if est_params:
            params.append({"params": est_params})
        self.opt = torch.optim.Adam(params, lr=float(cfg.train.lr))
        n = self.data.n("train") if self.data is not None else 0
        self.batches = Batches(n, int(cfg.train.batch_size), self.device)
        self._no_data = torch.empty(int(cfg.train.batch_size), 0, device=self.device)
        self.step = 0
        self.elapsed = 0.0            # training + eval seconds over all sessions (resume-safe)
        self.eval_gen = torch.Generator(device=self.device)
        if int(dg.every) > 0:
            self.probe = diagnostics.Probe(self.model, self.estimator, self._diag_names,
                                           self._diag_reference, int(dg.samples),
                                           self.diagnostic_batch(int(dg.batch_size)), seed=int(cfg.seed))

    def diagnostic_batch(self, n: int) -> torch.Tensor:
        """The fixed diagnostic minibatch: the first n training images, binarized once with a
        generator seeded by data.seed (toy: n independent draws)."""
        if self.data is None:
            return torch.empty(n, 0, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(int(self.cfg.data.seed))
        return self.data.batch("train", torch.arange(n, device=self.device), generator=g)

    # --- pieces of a step -----------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        if self.data is None:            # the toy problem: batch_size independent draws, no data
            return self._no_data
        return self.data.batch("train", self.batches.next())

    def train_step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.estimator.set_step(self.step)
        # zero first: an estimator with parameters of its own may write their gradients during its
        # forward pass (e.g. RELAX's variance objective, computed with torch.autograd.grad)
        self.opt.zero_grad(set_to_none=True)
        logits = self.model.logits(x)
        est = self.estimator(logits, self.model.objective(x, logits))
        surrogate, loss = est.surrogate, est.loss
        extra = self.model.extra_loss(x, logits)
        if extra is not None:
            surrogate = surrogate + extra.mean()
            loss = loss + extra.detach()
        surrogate.backward()
        self.opt.step()
        return loss.mean(), est.stats

    @torch.no_grad()
    def evaluate(self, split: str, samples_list: list[int]) -> dict[str, float]:
        self.model.eval()
        self.eval_gen.manual_seed(int(self.cfg.seed) * 1000003 + self.step)
        x = self.data.full(split) if self.data is not None else torch.empty(1, 0, device=self.device)
        out: dict[str, float] = {}
        for s in samples_list:
            res = self.model.evaluate(x, s, generator=self.eval_gen)
            for k, v in res.items():
                out.setdefault(k, v.mean().item())
        self.model.train()
        return out

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"step": self.step, "elapsed": self.elapsed, "model": self.model.state_dict(),
                "estimator": self.estimator.state_dict(), "optimizer": self.opt.state_dict(),
                "batches": self.batches.state_dict(), "rng": rng,
                "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)}

    def save(self) -> None:
        save_checkpoint(self.out / "checkpoint.pt", self.state())

    def try_resume(self) -> bool:
        path = self.out / "checkpoint.pt"
        if plain(self.cfg.train.resume) != "auto" or not path.exists():
            return False
        s = load_checkpoint(path, self.device)
        self.model.load_state_dict(s["model"])
        self.estimator.load_state_dict(s["estimator"])
        self.opt.load_state_dict(s["optimizer"])
        self.batches.load_state_dict(s["batches"])
        torch.set_rng_state(s["rng"]["cpu"].cpu())
        if "cuda" in s["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["rng"]["cuda"].cpu(), self.device)
        self.step, self.elapsed = int(s["step"]), float(s["elapsed"])
        dropped = CSVLog.truncate_after(self.out / "metrics.csv", self.step)
        dropped += CSVLog.truncate_after(self.out / "grad_stats.csv", self.step)
        log.info("resumed from %s at step %d (%d log rows after it dropped)", path, self.step, dropped)
        return True

    # --- the run -------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, tr = self.cfg, self.cfg.train
        summary_path = self.out / "summary.json"
        resumed = self.try_resume()
        metrics = MetricsLog(self.out / "metrics.csv")
        grad_log = None
        if self.probe is not None:
            from .diagnostics import GRAD_STATS_HEADER
            grad_log = CSVLog(self.out / "grad_stats.csv", GRAD_STATS_HEADER)
        diag_every = int(cfg.diagnostics.every)
        diag_s = 0.0

        def probe() -> float:
            t0 = time.perf_counter()
            grad_log.write(self.probe.run(self.step))
            return time.perf_counter() - t0
        steps = int(tr.steps)
        log_every, eval_every, ckpt_every = int(tr.log_every), int(tr.eval_every), int(tr.checkpoint_every)
        main_split = "valid" if self.data is not None else "test"
        bar = None
        if self.interactive and self.step < steps:
            from tqdm import tqdm
            bar = tqdm(total=steps, initial=self.step, dynamic_ncols=True, desc=self.estimator.name)
        status, error = "completed", None
        loss_sum = torch.zeros((), device=self.device)
        n_sum, t_mark, step_mark, paused = 0, time.perf_counter(), self.step, 0.0
        t_session = time.perf_counter()
        elapsed0 = self.elapsed
        eval_s = 0.0
        final: dict[str, float] = {}
        try:
            if not resumed and self.step == 0:
                metrics.log(0, 0, 0.0, main_split, self.evaluate(main_split, [int(cfg.eval.samples)]))
                if grad_log is not None:
                    diag_s += probe()
                t_mark = time.perf_counter()
            while self.step < steps:
                loss, stats = self.train_step(self.next_batch())
                self.step += 1
                loss_sum += loss.detach()
                n_sum += 1
                s = self.step
                wall = elapsed0 + time.perf_counter() - t_session
                if s % log_every == 0 or s == steps:
                    mean_loss = (loss_sum / n_sum).item()   # the one sync of a log step
                    now = time.perf_counter()
                    # steps_per_s counts training time only: evals, probes, checkpoints excluded
                    rate = (s - step_mark) / max(now - t_mark - paused, 1e-9)
                    t_mark, step_mark, paused = now, s, 0.0
                    if not math.isfinite(mean_loss):
                        raise Diverged(s, "training loss")
                    values = {"loss": mean_loss, "evals": self.estimator.evals,
                              "steps_per_s": rate, **self.estimator.scalars(),
                              **{k: v.item() for k, v in stats.items()}}
                    metrics.log(s, self.batches.epoch, wall, "train", values)
                    loss_sum.zero_()
                    n_sum = 0
                    msg = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "evals")
                    if bar is not None:
                        bar.update(s - bar.n)
                        bar.set_postfix_str(msg)
                    else:
                        log.info("step %d/%d %s", s, steps, msg)
                t_other = time.perf_counter()
                if s % eval_every == 0 and s != steps:
                    t0 = time.perf_counter()
                    ev = self.evaluate(main_split, [int(cfg.eval.samples)])
                    eval_s += time.perf_counter() - t0
                    metrics.log(s, self.batches.epoch, wall, main_split, ev)
                    if not all(math.isfinite(v) for v in ev.values()):
                        raise Diverged(s, f"{main_split} metrics")
                    log.info("step %d %s %s", s, main_split,
                             " ".join(f"{k} {v:.4f}" for k, v in ev.items()))
                if grad_log is not None and s % diag_every == 0:
                    diag_s += probe()
                if s % ckpt_every == 0 and s != steps:
                    self.elapsed = elapsed0 + time.perf_counter() - t_session
                    self.save()
                paused += time.perf_counter() - t_other
            if bar is not None:
                bar.close()
            # final evaluation
            t0 = time.perf_counter()
            self.elapsed = elapsed0 + time.perf_counter() - t_session
            samples_list = [int(cfg.eval.samples)]
            if int(cfg.eval.final_samples) > 0 and self.data is not None:
                samples_list.append(int(cfg.eval.final_samples))
            splits = {"valid": samples_list[:1], "test": samples_list} if self.data is not None \
                else {"test": samples_list}
            for split, samples in splits.items():
                ev = self.evaluate(split, samples)
                metrics.log(self.step, self.batches.epoch, self.elapsed, split, ev)
                final.update({f"{split}/{k}": v for k, v in ev.items()})
            eval_s += time.perf_counter() - t0
            self.elapsed = elapsed0 + time.perf_counter() - t_session
            self.save()
        except Diverged as e:
            status, error = "diverged", {"step": e.step, "quantity": e.quantity, "message": str(e)}
            log.error("run diverged: %s", e)
        except KeyboardInterrupt:
            status, error = "interrupted", {"step": self.step}
            self.save()
        except Exception as e:  # noqa: BLE001 - recorded, then re-raised
            status, error = "failed", {"step": self.step, "message": repr(e)}
            write_json(summary_path, self.summary(status, final, error, eval_s, diag_s))
            raise
        finally:
            metrics.close()
            if grad_log is not None:
                grad_log.close()
            if bar is not None:
                bar.close()
        summary = self.summary(status, final, error, eval_s, diag_s)
        write_json(summary_path, summary)
        return summary

    def summary(self, status: str, final: dict, error, eval_s: float, diag_s: float = 0.0) -> dict:
        m = self.model
        return {
            "status": status,
            "step": self.step,
            "steps": int(self.cfg.train.steps),
            "error": error,
            "final": final,
            "main_metric": m.main_metric,
            "timings": {"elapsed_s": round(self.elapsed, 3), "eval_s_this_session": round(eval_s, 3),
                        "diagnostics_s_this_session": round(diag_s, 3),
                        "steps_per_s": round(self.step / max(self.elapsed - eval_s - diag_s, 1e-9), 2)},
            "estimator": self.estimator.properties(),
            "model": {"name": m.name, "kind": m.kind, "latent_shape": list(m.latent_shape),
                      "parameters": sum(p.numel() for p in m.parameters())},
            "device": str(self.device),
            "seed": int(self.cfg.seed),
            "versions": versions(),
        }


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


def hydra_entry(cfg: DictConfig):
    """Entry point called by run.py inside Hydra's job context."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    progress = plain(cfg.train.progress)
    interactive = progress == "bar" or (progress == "auto" and not sweep and sys.stderr.isatty())
    try:
        trainer = Trainer(cfg, out, interactive=interactive)
    except ConfigError as e:
        log.error("invalid configuration: %s", e)
        if sweep:
            raise
        print(f"discograd: invalid configuration: {e}", file=sys.stderr)
        sys.exit(2)
    summary = trainer.fit()
    log.info("%s; run folder %s", report(summary), out)
    if summary["status"] == "diverged" and not sweep:
        sys.exit(3)
    return summary["final"].get(f"test/{trainer.model.main_metric}")
