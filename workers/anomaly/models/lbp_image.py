"""The LBP baseline judging whole images (the seed's image-level classical baseline): the same
features as :mod:`.lbp` (uniform LBP, P = 24, R = 3, plus gradient and grey statistics), taken
over the whole input as one patch, standardised, PCA-whitened and scored by the one-class SVM.
One score per image (or per tile of a tiled model): its map is constant, so a flagged image is
suggested as one region covering it. For parts judged as a whole (good / not good) where
nobody needs to know where; :mod:`.lbp` scores patches and can suggest regions."""

from __future__ import annotations

import torch

from ..config import ProgressCallback, TrainConfig
from ..training_data import TrainData
from . import Fitted, ModelSpec, register
from .lbp import build, fit_lbp


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    return fit_lbp(config, data, device, progress, patch=None)


register(ModelSpec("lbp_image", build, fit, min_input_size=64))
