"""``train.replicas=N``: N runs of one configuration, seeds ``seed .. seed+N-1``, trained together
in one process, one vectorised step for all of them (README, "Many runs per process").

Why: the models of the literature are small (784-200-784, batch 50). One run per process leaves
most of a GPU idle (tens of microseconds per kernel launch, ~60 kernels a step) and, on a CPU,
pays the per-operation overhead of PyTorch once per run and step. N replicas pay it once per step.

What a replica is. Each member of the group is an ordinary :class:`~.train.Trainer`, built exactly
as the separate run of its seed would be: its own run folder ``<run dir>/seed=<s>`` with its own
``.hydra/config.yaml`` (``seed=<s>``, ``train.replicas=1``), model initialised from its seed, data
stream, noise generator, logs, checkpoints, ``best.pt`` and ``summary.json``. The analysis cannot
tell it from a separate run, and a separate run of that config (``python run.py seed=<s>
hydra.run.dir=<folder>``) resumes it. What the group changes is where the numbers live: every
member's parameters, persistent buffers (e.g. an EMA baseline) and Adam moments become views into
tensors stacked over the replicas ``[N, ...]``, which the group owns.

One step of the group:
  1. every member draws its minibatch (its data generator) and its uniforms (its noise generator),
     exactly the draws of its separate run;
  2. the forward pass of member 0's modules runs once under ``torch.func.vmap`` with
     ``torch.func.functional_call`` over the stacked tensors (every batched matmul is one
     ``bmm``); the N surrogates are summed and back-propagated once: the replicas share no
     parameter, so slice i of each stacked gradient is replica i's own gradient;
  3. one fused Adam step (:mod:`.optim`) updates the stacked parameters, i.e. every replica;
  4. every member runs its own phases (log, evaluate, probe, checkpoint) on its own views.
The weights of ``nn.Linear`` layers are stacked transposed (``[N, in, out]``; each replica's weight
is a transposed view): the gradient ``x^T g`` of a batched matmul then comes out in the stacked
layout, where the ``[N, out, in]`` layout would cost a strided copy of every weight gradient per
step (measured: a fifth of the step at N = 16 on a CPU).

Replica i's numbers equal its separate run's to float rounding (a batched matmul sums in another
order): tests/test_replicas.py compares them step by step. A replica that diverges ends alone: its
folder says ``diverged`` and the others go on (its slice keeps being computed, on dummy inputs,
and is ignored). Refused, with the reason: sequential models, estimators with trainable parameters
of their own (REBAR, RELAX, the learned baseline: not stacked; REBAR and RELAX also call
``torch.autograd.grad`` inside the forward pass, which vmap cannot batch), ``train.on_nan=skip``
(a per-replica skip of a shared optimizer step) and ``train.compile=true``. The replicas of one
group differ only in their seed.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from discograd.errors import ConfigError
from discograd.files import write_json
from discograd.optim import Adam
from discograd.step import Step
from .build import pick_device, validate
from .config import plain
from .lifecycle import Diverged, Interrupted, Signals
from .train import Trainer

log = logging.getLogger("discograd")


def member_folder(out: Path, seed: int) -> Path:
    """Where the replica of ``seed`` writes its run folder."""
    return Path(out) / f"seed={seed}"


def member_config(cfg: DictConfig, index: int) -> DictConfig:
    """The config of replica ``index``: the group's with ``seed + index`` and ``train.replicas=1``
    (what its separate run would have)."""
    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(c, OmegaConf.is_struct(cfg))
    c.seed = int(cfg.seed) + index
    c.train.replicas = 1
    return c


def _slots(module: nn.Module) -> list[tuple[str, nn.Module, str, bool, bool]]:
    """(name, owner module, attribute, is_parameter, stacked transposed) of every parameter and
    persistent buffer of ``module``, in state_dict order."""
    out = []
    for mod_name, mod in module.named_modules():
        prefix = mod_name + "." if mod_name else ""
        for attr, p in mod._parameters.items():
            if p is not None:
                out.append((prefix + attr, mod, attr, True,
                            isinstance(mod, nn.Linear) and attr == "weight"))
        for attr, b in mod._buffers.items():
            if b is not None and attr not in mod._non_persistent_buffers_set:
                out.append((prefix + attr, mod, attr, False, False))
    return out


class ReplicaGroup:
    """The members of ``train.replicas=N`` and their stacked tensors; :meth:`fit` trains them."""

    def __init__(self, cfg: DictConfig, out_dir: Path, hydra_files: dict[str, str] | None = None):
        self.cfg, self.out = cfg, Path(out_dir)
        n = int(cfg.train.replicas)
        validate(cfg)            # bad input fails before any work (build.check_replicas too)
        pick_device(plain(cfg.device))
        self.out.mkdir(parents=True, exist_ok=True)
        self.members: list[Trainer] = []
        data = None
        try:
            for i in range(n):
                c = member_config(cfg, i)
                seed = int(c.seed)
                m = Trainer(c, member_folder(self.out, seed), interactive=False,
                            hydra_files=self._member_files(hydra_files, c), data=data,
                            tag=f"[seed {seed}] ")
                m.replica = {"index": i, "of": n, "group": str(self.out)}
                data = m.data
                self.members.append(m)
        except BaseException:
            self.close()
            raise
        write_json(self.out / "replicas.json",
                   {"replicas": n, "seeds": [int(m.cfg.seed) for m in self.members],
                    "folders": [m.out.name for m in self.members]})

    @staticmethod
    def _member_files(files: dict[str, str] | None, c: DictConfig) -> dict[str, str] | None:
        if not files:
            return None
        out = dict(files)
        out["config.yaml"] = OmegaConf.to_yaml(c, resolve=True)
        overrides = yaml.safe_load(files.get("overrides.yaml", "[]")) or []
        overrides = [o for o in overrides if not str(o).lstrip("+~").startswith(("seed=", "train.replicas="))]
        out["overrides.yaml"] = OmegaConf.to_yaml(OmegaConf.create([*overrides, f"seed={int(c.seed)}"]))
        return out

    def close(self) -> None:
        for m in self.members:
            m.close()

    # --- the stacked tensors -----------------------------------------------------------------------
    def _stack(self, active: list[Trainer]) -> None:
        """Move the active members' parameters, persistent buffers and Adam moments into tensors
        stacked over the replicas; each member keeps views into them."""
        mods = [Step(m.model, m.estimator) for m in active]
        slots = [_slots(mod) for mod in mods]
        self.stacked: dict[str, torch.Tensor] = {}
        self.transposed = {s[0]: s[4] for s in slots[0]}
        params: list[torch.Tensor] = []
        for j, (name, _, _, is_param, tr) in enumerate(slots[0]):
            cur = [getattr(sl[j][1], sl[j][2]).detach() for sl in slots]
            t = torch.stack([c.t() if tr else c for c in cur]).contiguous()
            if is_param:
                t.requires_grad_(True)
                params.append(t)
            self.stacked[name] = t
            for i, sl in enumerate(slots):
                _, owner, attr, _, _ = sl[j]
                view = t.detach()[i]
                view = view.t() if tr else view
                if is_param:
                    owner._parameters[attr].data = view
                else:
                    owner._buffers[attr] = view
        self.params = params
        self.opt = Adam(params, lr=float(self.cfg.train.lr))
        # the members' Adam moments and step counts become views of the group's
        param_names = [s[0] for s in slots[0] if s[3]]
        for i, (m, mod) in enumerate(zip(active, mods)):
            index = {id(p): n for n, p in mod.named_parameters()}
            for j, p in enumerate(m.opt.params):
                k = param_names.index(index[id(p)])
                tr = self.transposed[param_names[k]]
                for mine, group in ((m.opt.exp_avg, self.opt.exp_avg),
                                    (m.opt.exp_avg_sq, self.opt.exp_avg_sq)):
                    group[k][i].copy_(mine[j].t() if tr else mine[j])
                    mine[j] = group[k][i].t() if tr else group[k][i]
                if i == 0:
                    self.opt.steps[k].copy_(m.opt.steps[j])
                elif float(m.opt.steps[j]) != float(self.opt.steps[k]):
                    raise RuntimeError("replicas with different optimizer step counts")
                m.opt.steps[j] = self.opt.steps[k]
        self.template = mods[0]
        from torch.func import functional_call, vmap

        def one(tensors, x, u):
            return functional_call(self.template, tensors, (x, u))
        # randomness="error": every random number of a step is drawn outside, by the member's
        # own generators; a draw inside would not be the separate run's
        self._vstep = vmap(one, randomness="error")
        self._graphed = None
        if bool(self.cfg.train.cuda_graphs):      # experiment/graphs.py
            from .graphs import GraphedStep
            self._graphed = GraphedStep(self._backward_step, self._snapshot, self._restore,
                                        self._zero_grad, f"a group of {len(active)} replicas")

    def _backward_step(self, X: torch.Tensor, U: torch.Tensor):
        """The vmapped forward, one backward of the summed surrogates, one Adam step:
        (per-replica mean loss [N], stats of [N])."""
        surrogate, loss, stats = self._vstep(self._inputs(), X, U)
        surrogate.sum().backward()
        self.opt.step()
        return loss.mean(-1), stats

    def _zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _snapshot(self) -> tuple:
        return ({n: t.detach().clone() for n, t in self.stacked.items()}, self.opt.state_dict())

    def _restore(self, saved: tuple) -> None:
        with torch.no_grad():
            for n, t in self.stacked.items():
                t.copy_(saved[0][n])
        self.opt.load_state_dict(saved[1])

    def _inputs(self) -> dict[str, torch.Tensor]:
        return {n: (t.transpose(1, 2) if self.transposed[n] else t) for n, t in self.stacked.items()}

    def step(self, active: list[Trainer], live: set[int]) -> list[torch.Tensor | None]:
        """One training step of every member (dead ones compute on dummy inputs, ignored)."""
        xs, us = [], []
        for i, m in enumerate(active):
            if i in live:
                m.estimator.set_step(m.step)
                x = m.next_batch()
                xs.append(x)
                us.append(m.draw_noise(x))
            else:
                xs.append(None)
                us.append(None)
        ref = next(i for i in range(len(active)) if i in live)
        X = torch.stack([x if x is not None else torch.zeros_like(xs[ref]) for x in xs])
        U = torch.stack([u if u is not None else torch.full_like(us[ref], 0.5) for u in us])
        if self._graphed is not None:
            loss, stats = self._graphed(X, U)
        else:
            self._zero_grad()
            loss, stats = self._backward_step(X, U)
        for i in live:
            active[i].account(loss[i], {k: v[i] for k, v in stats.items()})
        return xs

    # --- the run -------------------------------------------------------------------------------
    def checkpoint_bytes(self) -> int:
        """About the size of one member's checkpoint (each member writes its own)."""
        return self.members[0].checkpoint_bytes() if self.members else 0

    def fit(self) -> list[dict]:
        """Train every member to train.steps; their summaries (also in their summary.json)."""
        summaries: dict[int, dict] = {}
        active = []
        for i, m in enumerate(self.members):
            done = m.folder.completed()
            if done is not None:
                log.info("%salready completed (%d steps); nothing to do", m.tag, done["step"])
                summaries[i] = done
            else:
                active.append((i, m))
        if active:
            for i, s in zip([i for i, _ in active], self._fit([m for _, m in active])):
                summaries[i] = s
        return [summaries[i] for i in range(len(self.members))]

    def _fit(self, active: list[Trainer]) -> list[dict]:
        """The members' loop: one vectorised step for all, then each member's phases (the public
        phase methods of Trainer, as its own fit would run them)."""
        resumed = [m.resume() for m in active]
        steps_now = {int(m.cfg.seed): m.step for m in active}
        if len(set(steps_now.values())) > 1:
            where = ", ".join(f"seed {s}: step {k}" for s, k in steps_now.items())
            raise ConfigError(
                f"the replicas to train are at different steps ({where}); a group steps them "
                "together. Finish them as separate runs (python run.py seed=S "
                f"hydra.run.dir={self.out}/seed=S train.replicas=1), or start a new group folder")
        self._stack(active)
        for m in active:              # a member's divergence is reported at the check's step
            m.replayable = False
        steps = [m.prepare_loop() for m in active][0]
        live = set(range(len(active)))
        signals = Signals().install()       # one set of handlers for the group
        with contextlib.ExitStack() as stack:
            logs = [stack.enter_context(m.open_logs()) for m in active]
            runs = {i: m.open_session(signals) for i, m in enumerate(active)}

            def phase(i: int, fn) -> bool:
                """Run one member's phase; a divergence ends that member alone."""
                try:
                    fn()
                    return True
                except Diverged as e:
                    live.discard(i)
                    active[i].close_session(runs[i], e)
                    return False

            try:
                for i, m in enumerate(active):
                    if not resumed[i] and m.step == 0:
                        phase(i, lambda m=m, i=i: m.start_phase(logs[i]))
                while live and active[min(live)].step < steps:
                    xs = self.step(active, live)
                    self._phases(active, live, lambda i: phase(
                        i, lambda: active[i].after_step(logs[i], xs[i])))
                    if signals.received is not None:
                        raise Interrupted(signals.received)
                for i in sorted(live):
                    m = active[i]
                    if phase(i, lambda m=m, i=i: setattr(runs[i], "final", m.final_phase(logs[i]))):
                        m.close_session(runs[i], None)
            except (KeyboardInterrupt, Interrupted) as e:
                for i in sorted(live):
                    active[i].close_session(runs[i], e)     # checkpoint and summary each
                signals.restore()
                signals.pass_on()
                raise
            except Exception as e:  # noqa: BLE001 - every live member records "failed"
                for i in sorted(live):
                    try:
                        active[i].close_session(runs[i], e)
                    except Exception:  # noqa: BLE001 - close_session re-raises after writing
                        pass
                raise
            finally:
                signals.restore()
        return [runs[i].summary for i in range(len(active))]

    @staticmethod
    def _phases(active: list[Trainer], live: set[int], run_phase) -> None:
        """Each live member's phases after a step. A member's steps_per_s is its training time
        alone: the other members' phases count as paused time for it."""
        order = sorted(live)
        spent, before = {}, 0.0
        for i in order:
            active[i].clock.exclude(before)
            t0 = time.perf_counter()
            run_phase(i)
            spent[i] = time.perf_counter() - t0
            before += spent[i]
        total = before
        seen = 0.0
        for i in order:
            seen += spent[i]
            active[i].clock.exclude(total - seen)      # the members after it
