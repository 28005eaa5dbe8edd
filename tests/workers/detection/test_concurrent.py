"""One loaded detector predicting in several threads at once (a worker's threads share the model
it loaded once): each call's results are those it gives alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from workers.detection.inference import Detection, Detector
from workers.detection.model import build_model

from .conftest import tiny_model_config
from .test_siamese import CATS, board, randomised

pytestmark = pytest.mark.ml

SLICED = {"slice_size": 64, "overlap": 0.25, "score_threshold": 0.05, "batch_size": 2}


def _rows(dets: list[Detection]) -> list[tuple]:
    return [(d.x1, d.y1, d.x2, d.y2, d.score, d.category_id, d.second_score) for d in dets]


def test_two_threads_slicing_with_one_detector_keep_their_second_scores() -> None:
    """SAHI's merge drops every field but the box, category and score, so ``predict_sliced``
    notes each slice detection's ``second_score`` on the side while it runs: two threads inside
    it at once (held in step before every batch of slices) must each find their own."""
    torch.manual_seed(1)
    det = Detector(randomised(build_model(tiny_model_config(eval_size=64))), CATS, "cpu")
    images: list[np.ndarray] = [board(1)[0], board(2)[0]]  # the same size: as many batches
    alone = [det.predict_sliced(image, **SLICED) for image in images]
    for dets in alone:
        assert len(dets) > 5 and sum(d.second_score is not None for d in dets) > 5
    assert _rows(alone[0]) != _rows(alone[1])

    in_step = threading.Barrier(2, timeout=60)
    predict_batch = det.predict_batch

    def held(*args, **kwargs):
        in_step.wait()  # both threads are inside predict_sliced, each in its own call
        return predict_batch(*args, **kwargs)

    det.predict_batch = held  # what the SAHI adapter calls for each batch of slices
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda image: det.predict_sliced(image, **SLICED), images))
    assert [_rows(d) for d in together] == [_rows(d) for d in alone]
