"""ONNX export (network without NMS) and ONNX Runtime inference with the same NMS."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifact import artifact_sha256, load_artifact
from .config import ModelConfig
from .data import Category
from .errors import DetectionError, WeightsNotFound
from .inference import RuntimeDetector

# Bumped whenever the exported graph or its metadata change meaning: :func:`load_detector`
# then re-exports instead of running an export made by older code.
EXPORT_VERSION = "1"


# Input names of the Siamese export (the single-image export's one input is ``images``).
SIAMESE_INPUTS = ("image", "reference")


class _Exportable(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)


class _ExportablePair(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, image: torch.Tensor, reference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image, reference)


def _export(model: torch.nn.Module, dummy: torch.Tensor, output: Path, opset: int) -> None:
    torch.onnx.export(
        _Exportable(model),
        (dummy,),
        str(output),
        input_names=["images"],
        output_names=["scores", "boxes"],
        dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}, "boxes": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def _export_pair(model: torch.nn.Module, dummy: torch.Tensor, output: Path, opset: int) -> None:
    axes = {name: {0: "batch"} for name in (*SIAMESE_INPUTS, "scores", "boxes")}
    torch.onnx.export(
        _ExportablePair(model),
        (dummy, dummy.clone()),
        str(output),
        input_names=list(SIAMESE_INPUTS),
        output_names=["scores", "boxes"],
        dynamic_axes=axes,
        opset_version=opset,
        dynamo=False,
    )


def export_onnx(
    artifact: str | Path, output: str | Path, size: int | None = None, opset: int = 17
) -> Path:
    """Export an artifact to ONNX: input ``images`` [N, 3, S, S] in [0, 1]; outputs ``scores``
    [N, L, C] and ``boxes`` [N, L, 4] (pixels of the input). Categories, the model config, the
    input size and the artifact's sha256 are stored in the ONNX metadata, so the file is
    self-describing and a stale export can be recognised. Written atomically.

    A Siamese artifact is exported with two inputs, ``image`` and ``reference`` (both
    [N, 3, S, S] in [0, 1]), and the metadata ``loupe_reference`` = ``"siamese"`` (its model
    config says so too)."""
    model, cats, _ = load_artifact(artifact, "cpu")
    model.convert_to_deploy().eval()
    size = size or model.cfg.eval_size
    if size % 32:
        raise ValueError("size must be a multiple of 32")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    dummy = torch.zeros(1, 3, size, size)
    try:
        with warnings.catch_warnings():
            # The position embedding and anchors are built from the (fixed) input size;
            # tracing freezing them as constants is intended, so the TracerWarnings are noise.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter, on purpose
            (_export_pair if model.cfg.siamese else _export)(model, dummy, tmp, opset)
        import onnx

        proto = onnx.load(str(tmp))
        meta = {
            "loupe_categories": json.dumps([{"id": c.id, "name": c.name} for c in cats]),
            "loupe_model_config": json.dumps(model.cfg.to_dict()),
            "loupe_input_size": str(size),
            "loupe_artifact_sha256": artifact_sha256(artifact),
            "loupe_export_version": EXPORT_VERSION,
        }
        if model.cfg.siamese:
            meta["loupe_reference"] = model.cfg.reference
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The ``loupe_*`` metadata of an exported file ({} if it cannot be read)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable means "no usable export", nothing more
        return {}
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("loupe_")}


def describe_export(meta: dict[str, str]) -> tuple[list[Category], ModelConfig, int]:
    """Categories, model config and input size from an export's metadata."""
    cats = [
        Category(id=int(c["id"]), name=str(c["name"]), index=i)
        for i, c in enumerate(json.loads(meta["loupe_categories"]))
    ]
    cfg = ModelConfig.from_dict(json.loads(meta["loupe_model_config"]))
    return cats, cfg, int(meta["loupe_input_size"])


def onnx_session(path: str | Path, threads: int | None = None, providers: Any = None) -> Any:
    """An ONNX Runtime session on ``threads`` intra-op threads (default: torch's count), one
    inter-op thread: a worker runs one image at a time and its slices batch by batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


class OnnxDetector(RuntimeDetector):
    """A detector run from an exported ONNX file by ONNX Runtime (CPU by default): whole-image
    ``predict``, ``predict_batch`` and SAHI ``predict_sliced`` exactly as :class:`Detector`,
    with the same NMS; the input size is the export's. A Siamese export is fed the image and
    its reference (``reference=`` as for :class:`Detector`)."""

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFound(
                f"{path} not found; create it with `python -m workers.detection export-onnx`"
            )
        self.path = path
        self.session = onnx_session(path, threads, providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        cats, cfg, size = describe_export(meta)
        super().__init__(self.raw, cats, cfg, size, runtime="onnx")
        self.size = size
        self.precision = meta.get("loupe_precision", "fp32")

    def raw(
        self, images: np.ndarray, references: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs for a float32 [N, 3, S, S] batch (and, for a Siamese export, the
        references' batch of the same shape)."""
        images = images.astype(np.float32, copy=False)
        if self.model_config.siamese:
            if references is None:
                raise DetectionError(
                    f"{self.path.name} is a {self.model_config.kind} detector: it needs the "
                    "reference batch too"
                )
            feeds = dict(
                zip(
                    SIAMESE_INPUTS, (images, references.astype(np.float32, copy=False)), strict=True
                )
            )
        elif references is not None:
            raise DetectionError(f"{self.path.name} is a single-image detector: no reference")
        else:
            feeds = {"images": images}
        scores, boxes = self.session.run(None, feeds)
        return scores, boxes
