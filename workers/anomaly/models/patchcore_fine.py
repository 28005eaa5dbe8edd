"""PatchCore on the backbone's finer features: Lite0's ``blocks.1`` and ``blocks.2`` (strides
4 and 8) instead of ``blocks.2`` and ``blocks.4`` (8 and 16). One patch per 4 px of the input,
each seeing less context: maps that follow a defect's outline, where the standard layers blur
it over 16 px (bottle: pixel AUROC 0.983 to 0.993, docs/benchmarks-anomaly.md). The network,
the memory bank and the runtimes are :mod:`.patchcore`'s.

Four times the patches per image: ``TrainConfig.coreset_ratio`` counts the standard layers'
patches (one per 8 px), so the bank keeps a quarter of that share of the fine patches, as many
rows as the standard model's for the same images (on bottle the full share scored the same,
0.993 pixel AUROC, and took four times as long to predict), and the candidate pool is sampled
more thinly (``TrainConfig.max_candidates``).
"""

from __future__ import annotations

import torch

from ..config import ProgressCallback, TrainConfig
from ..training_data import TrainData
from . import Fitted, ModelSpec, register
from .patchcore import FINE_LAYERS, build
from .patchcore import fit as fit_patchcore


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    return fit_patchcore(config, data, device, progress, layers=FINE_LAYERS, bank_share=0.25)


register(ModelSpec("patchcore_fine", build, fit, quantized_modules=("feature_extractor",)))
