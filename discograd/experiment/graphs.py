"""``train.cuda_graphs=true``: the whole training step (forward, backward, Adam) captured once in a
CUDA graph and replayed at every step (README, "Speed").

Why: the models of the literature are small, so on a GPU a step is a sequence of ~60 tiny kernels
whose launch latency (host side, microseconds each) exceeds their run time. A graph launches them
all at once. The step's shapes never change (the last incomplete batch of an epoch is dropped),
which is what a graph needs.

How (the recipe of the PyTorch CUDA-graphs notes, "whole-network capture"): the inputs of a step
(the minibatch and the estimator's uniforms, drawn eagerly from the run's own generators exactly as
without graphs) are copied into static tensors; a few warm-up steps on a side stream initialise
the libraries' workspaces, and the state they changed (parameters, estimator buffers, Adam) is
restored so that the run's numbers are those of the first step; the step is captured once; each
later step copies its inputs in and replays. Gradients are allocated inside the graph, so they
are not reset between replays (the graph writes them afresh). Everything outside the step (logging,
evaluation, diagnostics, checkpoints) stays eager and reads the same parameter memory.

What cannot be captured is refused before any work (:func:`check_cuda_graphs`): a device other
than CUDA, sequential models (their rollout calls back into Python per latent), ``train.on_nan=
skip`` (a host decision per step) and ``train.compile=true``. An estimator whose step synchronises
with the host fails at capture, with a message naming it.
"""
from __future__ import annotations

from typing import Callable

import torch

from discograd.errors import ConfigError
from .config import plain

WARMUP = 3      # eager warm-up steps on a side stream before the capture (then undone)


def check_cuda_graphs(cfg, device: torch.device, sequential: bool, model_name: str) -> None:
    """Refuse ``train.cuda_graphs=true`` where it cannot work (ConfigError names the value and
    what is accepted)."""
    if not bool(cfg.train.cuda_graphs):
        return
    if device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs=true needs a CUDA device, but this run's device is "
                          f"{device.type}; accepted: train.cuda_graphs=false, or device=cuda (or auto) "
                          "on a machine with a GPU")
    if sequential:
        raise ConfigError(f"train.cuda_graphs=true cannot capture model '{model_name}': its "
                          "latents are sequential (the model drives its rollout step by step); "
                          "accepted: train.cuda_graphs=false")
    if plain(cfg.train.on_nan) == "skip":
        raise ConfigError("train.cuda_graphs=true cannot be combined with train.on_nan=skip (a "
                          "host decision per step); accepted: train.on_nan=stop")
    if bool(cfg.train.compile):
        raise ConfigError("train.cuda_graphs=true cannot be combined with train.compile=true; "
                          "accepted: one of them")


class GraphedStep:
    """A training step ``step(x, u) -> (loss, stats)`` (forward, backward and optimizer step, with
    ``x`` and ``u`` its only inputs) replayed from a CUDA graph.

    ``snapshot()`` returns the state the step changes and ``restore(state)`` puts it back in place
    (the same tensors): the warm-up steps are undone. ``zero_grad()`` drops the gradients before
    the capture. ``name``: what to name in an error at capture."""

    def __init__(self, step: Callable, snapshot: Callable, restore: Callable,
                 zero_grad: Callable, name: str):
        self.step, self.snapshot, self.restore, self.zero_grad = step, snapshot, restore, zero_grad
        self.name = name
        self.graph = None

    def _capture(self, x: torch.Tensor, u: torch.Tensor) -> None:
        self.x, self.u = x.clone(), u.clone()
        saved = self.snapshot()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self.zero_grad()
                self.step(self.x, self.u)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.restore(saved)
        self.zero_grad()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.out = self.step(self.x, self.u)
        except RuntimeError as e:
            raise RuntimeError(
                f"train.cuda_graphs=true: the step of {self.name} cannot be captured in a CUDA "
                f"graph ({e}); rerun with train.cuda_graphs=false") from e
        self.graph = graph

    def __call__(self, x: torch.Tensor, u: torch.Tensor):
        """One step on (x, u); the outputs are fresh tensors (the graph's are overwritten by the
        next replay)."""
        if self.graph is None:
            self._capture(x, u)
        self.x.copy_(x)
        self.u.copy_(u)
        self.graph.replay()
        loss, stats = self.out
        return loss.clone(), {k: v.clone() for k, v in stats.items()}
