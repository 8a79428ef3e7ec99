"""The image sides of the data sets, which the models read from the data config (the attention
classifier's glimpse grid) and the data harness uses to draw canvases: here so that the models
never import discograd.experiment."""
from __future__ import annotations

DIGIT = 28                                                   # MNIST's (and Fashion-MNIST's) side
CANVAS_DATASETS = ("translated_mnist", "cluttered_mnist")   # data.size x data.size canvases


def image_side(data_cfg) -> int:
    """Side of the square images of a data config: ``data.size`` for the canvases, 28 for MNIST."""
    return int(data_cfg.size) if data_cfg.name in CANVAS_DATASETS else DIGIT
