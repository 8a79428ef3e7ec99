"""Evaluation and model selection (README, "Model selection").

:class:`Evaluator` computes the model's evaluation metrics on a split with exact discrete samples
(each evaluation from a generator seeded by the seed and the step, so a resumed run evaluates
identically), keeps the best validation step's model in best.pt, and evaluates that model on test
at the end, next to the final model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from discograd.files import BEST, read_checkpoint, save_checkpoint
from discograd.models.base import higher_is_better


def owned(state: dict) -> dict:
    """A state_dict whose tensors own their memory: a replica's parameters are views into the
    stacked tensors of its group (experiment/replicas.py), and torch.save writes a view's whole
    storage."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) if isinstance(v, torch.Tensor)
            else v for k, v in state.items()}


class Evaluator:
    """``inputs(split)``: the model's inputs of a whole split (None without data: the toy, whose
    evaluation is exact); ``select``: the validation metric that picks the best step (None: no
    selection); ``best``: {"step", "value"} of the best validation evaluation so far (in
    checkpoints)."""

    def __init__(self, model, inputs, device: torch.device, seed: int, out: Path,
                 select: str | None):
        self.model, self.inputs, self.device = model, inputs, device
        self.seed, self.out, self.select = int(seed), Path(out), select
        self.best: dict = {"step": None, "value": None}
        self.eval_gen = torch.Generator(device=device)
        self.log_gen = torch.Generator(device=device)
        self._none = torch.empty(1, 0, device=device)

    @torch.no_grad()
    def evaluate(self, split: str, samples_list: list[int], step: int) -> dict[str, float]:
        """Mean metrics of ``split`` with each number of importance samples in ``samples_list``
        (the first value of a metric name wins)."""
        self.model.eval()
        self.eval_gen.manual_seed(self.seed * 1000003 + step)
        x = self.inputs(split)
        out: dict[str, float] = {}
        for s in samples_list:
            res = self.model.evaluate(self._none if x is None else x, s, generator=self.eval_gen)
            for k, v in res.items():
                out.setdefault(k, v.mean().item())
        self.model.train()
        return out

    @torch.no_grad()
    def hard_loss(self, x: torch.Tensor, step: int, has_data: bool) -> float:
        """One quantity for every estimator, logged at log steps as ``train/hard_loss``: the
        model's evaluation loss with exact discrete samples (one per example) on this step's
        minibatch (VAE: the negative single-sample ELBO; toy: the exact E[f]). The estimator's own
        ``loss`` is what it optimises (a relaxed objective for gumbel, the S-sample bound for
        vimco), which is not comparable across estimators. Its own generator: training follows
        the same random stream whatever ``log_every`` is."""
        self.model.eval()
        self.log_gen.manual_seed(self.seed * 1000003 + step + (1 << 41))
        res = self.model.evaluate(x if has_data else self._none, 1, generator=self.log_gen)
        self.model.train()
        return res["loss" if "loss" in res else "exact_loss"].mean().item()

    def consider_best(self, valid: dict[str, float], step: int) -> None:
        """After a validation evaluation: keep the model in best.pt if it is the best so far on
        the selection metric (ties keep the earlier step)."""
        if self.select is None:
            return
        value = valid[self.select]
        best = self.best["value"]
        if best is not None and not (value > best if higher_is_better(self.select) else value < best):
            return
        self.best = {"step": step, "value": value}
        save_checkpoint(self.out / BEST, {"step": step, "metric": f"valid/{self.select}",
                                          "valid": dict(valid), "model": owned(self.model.state_dict())},
                        keep_previous=False)

    def evaluate_best(self, final: dict[str, float], samples: list[int], step: int) -> dict | None:
        """summary.json's ``best``: the step, the selection metric and the valid and test metrics
        of the best validation step's model (the final model's when that step is the last,
        ``step``: one model, evaluated once)."""
        if self.select is None:
            return None
        best = self.best["step"]
        head = {"step": best, "metric": f"valid/{self.select}"}
        if best == step:
            return {**head, **final}
        kept, _ = read_checkpoint(self.out / BEST, self.device)
        if kept is None or int(kept["step"]) != best:
            raise RuntimeError(f"{self.out / BEST} does not hold the model of the best validation "
                               f"step {best} (found {None if kept is None else kept['step']})")
        now = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            self.model.load_state_dict(kept["model"])
            test = self.evaluate("test", samples, step=best)
        finally:
            self.model.load_state_dict(now)
        return {**head, **{f"valid/{k}": v for k, v in kept["valid"].items()},
                **{f"test/{k}": v for k, v in test.items()}}
