"""PP-YOLOE+-SOD small-object detector in PyTorch (training, sliced inference, COCO eval).

A plain library: no Django, no Celery. Typical use from a job::

    from workers.detection import ModelConfig, TrainConfig, train, load_detector, evaluate

    result = train("train.json", "model.pt", image_root="images/", progress=callback)
    detector = load_detector(result.artifact)   # ONNX Runtime on CPU, torch on CUDA
    detections = detector.predict_sliced(big_image, slice_size=640, overlap=0.25)

Heavy imports (torch, sahi, pycocotools) happen when the names are first used, so importing
the package itself is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    Cancelled,
    CheckpointError,
    DetectionDataError,
    DetectionError,
    RuntimeUnavailable,
    SliceMismatch,
    WeightsNotFound,
)

if TYPE_CHECKING:  # pragma: no cover
    from .artifact import load_artifact, read_artifact, save_artifact
    from .config import ModelConfig, TrainConfig, model_config_for, train_sizes_around
    from .convert import ConversionReport, convert_pdparams, convert_state_dict, read_pdparams
    from .data import Category, CocoDetectionDataset
    from .evaluation import EvalResult, evaluate
    from .inference import Detection, Detector, RuntimeDetector, one_per_place
    from .model import PPYOLOE, build_model
    from .onnx_export import OnnxDetector, export_onnx
    from .quantize import check_int8
    from .runtimes import RUNTIMES, ensure_onnx_export, load_detector
    from .sahi_model import LoupeSahiModel
    from .trainer import ProgressCallback, TrainResult, train
    from .tta import predict_views
    from .two_stage import PairConfig, PairDetector

_LAZY = {
    "ModelConfig": "config",
    "model_config_for": "config",
    "train_sizes_around": "config",
    "TrainConfig": "config",
    "PPYOLOE": "model",
    "build_model": "model",
    "Category": "data",
    "CocoDetectionDataset": "data",
    "train": "trainer",
    "TrainResult": "trainer",
    "ProgressCallback": "trainer",
    "Detector": "inference",
    "Detection": "inference",
    "RuntimeDetector": "inference",
    "one_per_place": "inference",
    "load_detector": "runtimes",
    "ensure_onnx_export": "runtimes",
    "RUNTIMES": "runtimes",
    "evaluate": "evaluation",
    "EvalResult": "evaluation",
    "LoupeSahiModel": "sahi_model",
    "save_artifact": "artifact",
    "load_artifact": "artifact",
    "read_artifact": "artifact",
    "convert_pdparams": "convert",
    "convert_state_dict": "convert",
    "read_pdparams": "convert",
    "ConversionReport": "convert",
    "export_onnx": "onnx_export",
    "OnnxDetector": "onnx_export",
    "check_int8": "quantize",
    "PairConfig": "two_stage",
    "PairDetector": "two_stage",
    "predict_views": "tta",
}

__all__ = [
    "Cancelled",
    "CheckpointError",
    "RuntimeUnavailable",
    "SliceMismatch",
    "DetectionDataError",
    "DetectionError",
    "WeightsNotFound",
    "ModelConfig",
    "model_config_for",
    "train_sizes_around",
    "TrainConfig",
    "PPYOLOE",
    "build_model",
    "Category",
    "CocoDetectionDataset",
    "train",
    "TrainResult",
    "ProgressCallback",
    "Detector",
    "Detection",
    "RuntimeDetector",
    "one_per_place",
    "load_detector",
    "ensure_onnx_export",
    "RUNTIMES",
    "evaluate",
    "EvalResult",
    "LoupeSahiModel",
    "save_artifact",
    "load_artifact",
    "read_artifact",
    "convert_pdparams",
    "convert_state_dict",
    "read_pdparams",
    "ConversionReport",
    "export_onnx",
    "OnnxDetector",
    "check_int8",
    "PairConfig",
    "PairDetector",
    "predict_views",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
