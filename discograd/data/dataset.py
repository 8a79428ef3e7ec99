"""Binarized MNIST as tensors on the training device (:class:`MNISTData`): minibatches by
indexing, binarization as a protocol choice (``data.binarize``)."""
from __future__ import annotations

import numpy as np
import torch

from .mnist import BINARIZE_MODES, SPLITS, Splits, load_mnist

def _split_seed(seed: int, split: str) -> int:
    """An independent, well-mixed seed per (seed, split): runs with seeds 0 and 1 share no
    stream, and a split's sample does not depend on the other splits."""
    return int(np.random.SeedSequence([int(seed), SPLITS.index(split)]).generate_state(1)[0])


class MNISTData:
    """Binarized MNIST as tensors on the training device; minibatches by indexing, no DataLoader.

    ``binarize`` (a protocol choice, hence a config key):

    * ``threshold``: ``x = 1[k/256 > 0.5]`` for every split.
    * ``static``: every split sampled once, ``x ~ Bernoulli(k/256)``, from a CPU
      ``torch.Generator`` seeded from ``seed`` and the split name (so it is the same on CPU and
      CUDA, and across runs sharing ``seed``).
    * ``none``: no binarization: the grey level ``k/256`` of every split (the classifier's input).
    * ``dynamic``: training images are resampled from their grey level every time they are drawn
      (:meth:`batch` on ``train``, using the global torch RNG of the device). The valid and test
      splits are binarized once, exactly as ``static`` does with the same ``seed``, so evaluation
      is deterministic and comparable across runs and across the two stochastic modes.

    Storage is uint8 on the device (grey levels for dynamic train, 0/1 otherwise), converted to
    float32 per batch.
    """

    def __init__(self, splits: Splits, binarize: str = "dynamic",
                 device: torch.device | str = "cpu", seed: int = 0):
        if binarize not in BINARIZE_MODES:
            raise ValueError(f"unknown binarize mode {binarize!r}; accepted: "
                             f"{', '.join(BINARIZE_MODES)}")
        self.binarize = binarize
        self.device = torch.device(device)
        self.seed = int(seed)
        self._x: dict[str, torch.Tensor] = {}
        self._y: dict[str, torch.Tensor] = {}
        for name in SPLITS:
            if name not in splits:
                raise ValueError(f"split {name!r} missing; expected {', '.join(SPLITS)}")
            images, labels = splits[name]
            grey = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
            if self._resampled(name) or binarize == "none":
                x = grey
            elif binarize == "threshold":
                x = (grey > 128).to(torch.uint8)  # k/256 > 0.5  <=>  k > 128
            else:
                x = self._sample_once(grey, _split_seed(self.seed, name))
            self._x[name] = x.to(self.device)
            self._y[name] = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)

    @classmethod
    def load(cls, root=None, cache_dir=None, binarize: str = "dynamic",
             device: torch.device | str = "cpu", seed: int = 0) -> "MNISTData":
        """``MNISTData(load_mnist(root, cache_dir), binarize, device, seed)``."""
        return cls(load_mnist(root, cache_dir), binarize, device, seed)

    @staticmethod
    def _sample_once(grey: torch.Tensor, seed: int, chunk: int = 10_000) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = torch.empty(grey.shape, dtype=torch.uint8)
        for i in range(0, len(grey), chunk):  # chunks bound the float32 temporaries
            p = grey[i:i + chunk].to(torch.float32) / 256
            out[i:i + chunk] = torch.bernoulli(p, generator=gen).to(torch.uint8)
        return out

    def _resampled(self, split: str) -> bool:
        return self.binarize == "dynamic" and split == "train"

    def _check(self, split: str) -> None:
        if split not in self._x:
            raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")

    @property
    def dim(self) -> int:
        """Pixels per image (784 for MNIST; size * size for the canvases of data/canvas.py)."""
        return int(self._x["train"].shape[1])

    def n(self, split: str) -> int:
        """Number of images in ``split``."""
        self._check(split)
        return len(self._x[split])

    def batch(self, split: str, index: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """float32 ``[len(index), dim]`` in {0, 1} (grey levels k/256 for ``none``); for dynamic/train a fresh sample each call
        (from ``generator`` if given, else the device's global RNG)."""
        self._check(split)
        index = torch.as_tensor(index, device=self.device)
        if index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"index must be an integer tensor, got {index.dtype}")
        x = self._rows(split, index, generator)
        if self._resampled(split):
            # u < p is a Bernoulli(p) draw; about 4x faster on CPU than torch.bernoulli(p)
            p = x.to(torch.float32).div_(256)
            u = torch.rand(p.shape, device=p.device, generator=generator)
            return (u < p).to(torch.float32)
        if self.binarize == "none":
            return x.to(torch.float32) / 256
        return x.to(torch.float32)

    def _rows(self, split: str, index: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """The stored rows ``index`` of ``split`` before the float conversion of :meth:`batch`
        (a hook: data.canvas.CanvasData places training digits on canvases here)."""
        return self._x[split][index]

    def full(self, split: str) -> torch.Tensor:
        """The whole split as float32 ``[N, 784]`` (for dynamic/train: a fresh sample)."""
        self._check(split)
        if self._resampled(split) or self.binarize == "none":
            return self.batch(split, torch.arange(self.n(split), device=self.device))
        return self._x[split].to(torch.float32)

    def train_mean(self) -> torch.Tensor:
        """Per-pixel mean of the training images as the model sees them ([784], float32): the grey
        level k/256 for dynamic binarization, the mean of the fixed binary images otherwise."""
        x = self._x["train"].to(torch.float32).mean(0)
        return x / 256 if self._resampled("train") or self.binarize == "none" else x

    def labels(self, split: str) -> torch.Tensor:
        """int64 labels ``[N]`` on the device."""
        self._check(split)
        return self._y[split]

    def __repr__(self) -> str:
        sizes = "/".join(str(self.n(s)) for s in SPLITS)
        return (f"MNISTData({sizes}, binarize={self.binarize!r}, device={str(self.device)!r}, "
                f"seed={self.seed})")
