"""Adam on PyTorch's fused kernel, without ``torch.optim``'s per-call machinery.

The update is Adam (Kingma & Ba 2015, Algorithm 1, with bias correction; no weight decay, no
amsgrad), computed by the same kernel as ``torch.optim.Adam(fused=True)`` (``aten::_fused_adam_``,
one pass per tensor), so the numbers are identical to it (tests/test_run.py checks this). What is
left out is the wrapper around ``torch.optim.Optimizer``'s methods: its first call imports
``torch._dynamo`` (about 0.9 s of every run's start-up on a 2-core CPU) and every step goes
through profiler hooks and a ``torch._dynamo.graph_break`` (tens of microseconds, which matters at
the thousands of steps per second of small models).

``state_dict`` has ``torch.optim.Adam``'s format, so checkpoints written with either load in both.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class Adam:
    def __init__(self, groups: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        groups = list(groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.param_groups = [{"params": list(g["params"])} for g in groups]
        self.params: list[Tensor] = [p for g in self.param_groups for p in g["params"]]
        for p in self.params:
            if not (p.is_floating_point() and p.device.type in ("cpu", "cuda")):
                raise TypeError(f"Adam: the fused kernel needs floating-point CPU or CUDA parameters, "
                                f"got {p.dtype} on {p.device}")
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # per-parameter step counts (float32 on the parameter's device, as the fused kernel wants):
        # a parameter without a gradient at a step is skipped and its count does not advance
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        by_device: dict[tuple, list[int]] = {}
        for i in idx:
            p = self.params[i]
            by_device.setdefault((p.device, p.dtype), []).append(i)
        for ids in by_device.values():
            steps = [self.steps[i] for i in ids]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_([self.params[i] for i in ids], [self.params[i].grad for i in ids],
                               [self.exp_avg[i] for i in ids], [self.exp_avg_sq[i] for i in ids],
                               [], steps, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
                               weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)

    # --- torch.optim.Adam's state_dict format ---------------------------------------------------
    def state_dict(self) -> dict:
        dense = torch.contiguous_format      # a replica's moments are views (experiment/replicas.py)
        state = {i: {"step": self.steps[i].clone(), "exp_avg": self.exp_avg[i].clone(memory_format=dense),
                     "exp_avg_sq": self.exp_avg_sq[i].clone(memory_format=dense)}
                 for i in range(len(self.params)) if float(self.steps[i]) > 0}
        groups, start = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            groups.append({"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0,
                           "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                           "differentiable": False, "fused": True, "decoupled_weight_decay": False,
                           "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        sizes = [len(g["params"]) for g in sd["param_groups"]]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"optimizer state has parameter groups of sizes {sizes}, this run has "
                             f"{[len(g['params']) for g in self.param_groups]}")
        order = [i for g in sd["param_groups"] for i in g["params"]]
        for mine, theirs in enumerate(order):
            s = sd["state"].get(theirs, sd["state"].get(str(theirs)))
            p = self.params[mine]
            if s is None:
                self.exp_avg[mine].zero_()
                self.exp_avg_sq[mine].zero_()
                self.steps[mine].zero_()
                continue
            if s["exp_avg"].shape != p.shape:
                raise ValueError(f"optimizer state of parameter {mine} has shape "
                                 f"{tuple(s['exp_avg'].shape)}, the parameter {tuple(p.shape)}")
            self.exp_avg[mine].copy_(s["exp_avg"])
            self.exp_avg_sq[mine].copy_(s["exp_avg_sq"])
            self.steps[mine].fill_(float(s["step"]))
