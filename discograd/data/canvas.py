"""Translated and cluttered MNIST (Mnih et al. 2014, arXiv:1406.6247, section 4.1), generated
deterministically from the 50k/10k/10k MNIST split and cached like MNIST itself.

* ``translated_mnist``: each 28x28 digit pasted at a uniformly random position of a
  ``size`` x ``size`` black canvas (60x60 in the paper).
* ``cluttered_mnist``: the same, plus ``clutter`` random ``fragment`` x ``fragment`` crops of other
  digits of the same split at random positions (the paper: 8x8 fragments on 60x60). The clutter is
  drawn first and the digit on top of it; overlaps keep the brighter pixel (max).

Every choice (position, fragment source, crop offset, fragment position) comes from a numpy
generator seeded by ``(seed, split, size, clutter, fragment)``, so a split does not depend on the
other splits and the same config always gives the same images. Labels are the digits' labels.
Pixels keep MNIST's uint8 grey level ``k`` (probability ``k/256``); binarization, if any, is applied
later by :class:`~.dataset.MNISTData` exactly as for MNIST.

Cache: ``canvas-v1-<size>-<clutter>-<fragment>-<seed>-<source hash>.npz`` (compressed npz, arrays
``{split}_images`` / ``{split}_labels``) plus its ``.sha256`` sidecar, written atomically, sidecar
last, under the MNIST cache lock; the checksum is verified before the file is parsed and a cache
that fails it is discarded and regenerated. The source hash (MNIST's content hash) ties the cache
to the digits it was made from.

On-the-fly training canvases (``data.resample=true``, the default of both data sets):
:class:`CanvasData` keeps the 28x28 training digits on the device and :func:`place` pastes each
minibatch digit (and, for ``cluttered_mnist``, ``clutter`` fresh fragments of other training
digits) at fresh uniformly random positions every time it is drawn (Mnih et al. resample the
position each time an image is used), so the model cannot memorise 50k fixed placements. The
draws use the device's global torch RNG (or the ``generator`` passed to ``batch``), whose state the
checkpoints keep, so a resumed run continues the same stream. Valid and test stay the fixed,
cached canvases above, so evaluation is deterministic and comparable across runs.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from discograd.files import atomic_write, lock
# the image sides live in discograd.images (the models read them too); re-exported here
from discograd.images import CANVAS_DATASETS, DIGIT, image_side  # noqa: F401
from .dataset import MNISTData
from .mnist import (LOCK_NAME, SPLITS, Splits, _Corrupt, _sha256, content_sha256,
                    default_cache_dir, make_cache_dir, read_verified)

log = logging.getLogger(__name__)


def _rng(seed: int, split: str, size: int, clutter: int, fragment: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(
        [int(seed), SPLITS.index(split), int(size), int(clutter), int(fragment)]))


def render(images: np.ndarray, size: int, clutter: int, fragment: int,
           rng: np.random.Generator) -> np.ndarray:
    """Canvases uint8 ``[N, size*size]`` from 28x28 digits uint8 ``[N, 784]``.

    Fragments of image i come from other images j != i of the same array."""
    n = len(images)
    if size < DIGIT:
        raise ValueError(f"canvas size {size} is smaller than a {DIGIT}x{DIGIT} digit")
    if clutter and not 1 <= fragment <= DIGIT:
        raise ValueError(f"fragment size {fragment} must be in 1..{DIGIT}")
    digits = np.asarray(images, dtype=np.uint8).reshape(n, DIGIT, DIGIT)
    out = np.zeros((n, size, size), dtype=np.uint8)
    pos = rng.integers(0, size - DIGIT + 1, size=(n, 2))
    if clutter and n > 1:
        src = (np.arange(n)[:, None] + rng.integers(1, n, size=(n, clutter))) % n   # never i itself
        crop = rng.integers(0, DIGIT - fragment + 1, size=(n, clutter, 2))
        where = rng.integers(0, size - fragment + 1, size=(n, clutter, 2))
        for i in range(n):
            for k in range(clutter):
                (a, b), (r, c) = crop[i, k], where[i, k]
                piece = digits[src[i, k], a:a + fragment, b:b + fragment]
                view = out[i, r:r + fragment, c:c + fragment]
                np.maximum(view, piece, out=view)
    for i in range(n):
        r, c = pos[i]
        view = out[i, r:r + DIGIT, c:c + DIGIT]
        np.maximum(view, digits[i], out=view)
    return out.reshape(n, size * size)


def make_canvas(splits: Splits, size: int = 60, clutter: int = 0, fragment: int = 8,
                seed: int = 0) -> Splits:
    """Every split of ``splits`` rendered on canvases; labels unchanged (copied)."""
    return {name: (render(x, size, clutter, fragment, _rng(seed, name, size, clutter, fragment)),
                   np.asarray(y, dtype=np.int64).copy())
            for name, (x, y) in splits.items()}


def _cache_name(size: int, clutter: int, fragment: int, seed: int, source: str) -> str:
    return f"canvas-v1-{size}-{clutter}-{fragment}-{seed}-{source[:12]}.npz"


def _read(path: Path, sum_path: Path, splits: Splits, size: int) -> Splits | None:
    """The cached canvases, None when absent; raises ValueError when present but bad."""
    try:
        blob = read_verified(path, sum_path)
    except _Corrupt as exc:
        raise ValueError(str(exc)) from exc
    if blob is None:
        return None
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        out = {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in splits}
    for s, (x, y) in out.items():
        n = len(splits[s][1])
        if x.shape != (n, size * size) or x.dtype != np.uint8 or not np.array_equal(y, splits[s][1]):
            raise ValueError(f"cache {path}: split {s} does not match its source")
    return out


def load_canvas(splits: Splits, size: int = 60, clutter: int = 0, fragment: int = 8,
                seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Splits:
    """:func:`make_canvas` of ``splits``, read from / written to the cache (see module doc)."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = _cache_name(size, clutter, fragment, seed, content_sha256(splits))
    path, sum_path = directory / name, directory / (name + ".sha256")
    with contextlib.suppress(ValueError, OSError):
        cached = _read(path, sum_path, splits, size)
        if cached is not None:
            return cached
    make_cache_dir(directory, "DISCOGRAD_DATA or data.cache_dir to a writable directory")
    with lock(directory / LOCK_NAME):
        try:
            cached = _read(path, sum_path, splits, size)
            if cached is not None:
                return cached
        except (ValueError, OSError) as exc:
            log.warning("discarding the canvas cache: %s; regenerating", exc)
            for p in (sum_path, path):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        log.info("generating %dx%d canvases (clutter %d) into %s", size, size, clutter, path)
        out = make_canvas(splits, size, clutter, fragment, seed)
        buf = io.BytesIO()
        np.savez_compressed(buf, **{f"{s}_{k}": a for s in out
                                    for k, a in zip(("images", "labels"), out[s])})
        blob = buf.getvalue()
        atomic_write(path, blob)
        atomic_write(sum_path, f"{_sha256(blob)}  {name}\n".encode())
        return out


def place(digits: torch.Tensor, index: torch.Tensor, size: int, clutter: int = 0,
          fragment: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fresh canvases ``[B, size*size]`` (dtype of ``digits``) of the digits ``digits[index]``.

    ``digits`` ``[N, 784]`` holds 28x28 digits on the device. Each digit lands at a uniformly random
    top-left corner in ``0..size-28`` (both axes); with ``clutter`` > 0, ``clutter`` random
    ``fragment`` x ``fragment`` crops of other digits ``j != index[b]`` of ``digits`` go first at
    uniformly random positions, and overlaps keep the brighter pixel (max), as in :func:`render`.
    Vectorised (index arithmetic and ``scatter_reduce``; no loop over images); every draw comes from
    ``generator`` if given, else the global RNG of the device."""
    if size < DIGIT:
        raise ValueError(f"canvas size {size} is smaller than a {DIGIT}x{DIGIT} digit")
    dev, n, B = digits.device, digits.shape[0], index.shape[0]

    def draw(high: int, shape: tuple[int, ...], low: int = 0) -> torch.Tensor:
        return torch.randint(low, high, shape, device=dev, generator=generator)

    def flat(top: torch.Tensor, left: torch.Tensor, side: int, width: int) -> torch.Tensor:
        """Flat pixel indices ``[..., side*side]`` of the side x side boxes at (top, left) of
        images of width ``width``."""
        r = torch.arange(side, device=dev)
        rows = (top.unsqueeze(-1) + r) * width                         # [..., side]
        cols = left.unsqueeze(-1) + r
        return (rows.unsqueeze(-1) + cols.unsqueeze(-2)).flatten(-2)

    pos = draw(size - DIGIT + 1, (B, 2))
    canvas = digits.new_zeros(B, size * size)
    if clutter and n > 1:
        if not 1 <= fragment <= DIGIT:
            raise ValueError(f"fragment size {fragment} must be in 1..{DIGIT}")
        src = (index.unsqueeze(1) + draw(n, (B, clutter), low=1)) % n         # never index[b]
        crop = draw(DIGIT - fragment + 1, (B, clutter, 2))
        where = draw(size - fragment + 1, (B, clutter, 2))
        pieces = digits[src].gather(-1, flat(crop[..., 0], crop[..., 1], fragment, DIGIT))
        canvas.scatter_reduce_(1, flat(where[..., 0], where[..., 1], fragment, size).flatten(1),
                               pieces.flatten(1), "amax")
    canvas.scatter_reduce_(1, flat(pos[:, 0], pos[:, 1], DIGIT, size), digits[index], "amax")
    return canvas


class CanvasData(MNISTData):
    """:class:`~.dataset.MNISTData` of canvases. ``splits`` are the (cached) canvases; with
    ``resample=True`` the training split is replaced by the 28x28 ``train_digits`` ``[N, 784]``,
    placed afresh by :func:`place` each time a training image is drawn (binarization, if any, of
    the digit as MNISTData does it: fixed for static/threshold, resampled for dynamic, after the
    placement). Valid and test are the fixed canvases of ``splits``."""

    def __init__(self, splits: Splits, train_digits: np.ndarray | None = None, *,
                 size: int = 60, clutter: int = 0, fragment: int = 8, binarize: str = "none",
                 device: torch.device | str = "cpu", seed: int = 0):
        self.size, self.clutter, self.fragment = int(size), int(clutter), int(fragment)
        self.resample = train_digits is not None
        if self.resample:
            splits = {**splits, "train": (train_digits, splits["train"][1])}
        super().__init__(splits, binarize, device, seed)

    def _placed(self, split: str) -> bool:
        return self.resample and split == "train"

    def _rows(self, split, index, generator=None):
        if self._placed(split):
            return place(self._x["train"], index, self.size, self.clutter, self.fragment, generator)
        return super()._rows(split, index, generator)

    @property
    def dim(self) -> int:
        return self.size * self.size

    def full(self, split: str) -> torch.Tensor:
        if self._placed(split):
            return self.batch(split, torch.arange(self.n(split), device=self.device))
        return super().full(split)

    def train_mean(self) -> torch.Tensor:
        if not self.resample:
            return super().train_mean()
        # one placement of every training digit with a generator seeded by data.seed (the
        # expectation over placements, up to sampling noise; deterministic)
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        total = torch.zeros(self.dim, device=self.device)
        n = self.n("train")
        for i in range(0, n, 5000):
            index = torch.arange(i, min(n, i + 5000), device=self.device)
            total += self._rows("train", index, gen).to(torch.float32).sum(0)
        mean = total / n
        return mean / 256 if self.binarize in ("dynamic", "none") else mean

    def __repr__(self) -> str:
        return (f"Canvas{super().__repr__()[:-1]}, size={self.size}, clutter={self.clutter}, "
                f"resample={self.resample})")
