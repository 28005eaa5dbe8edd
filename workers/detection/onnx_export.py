"""ONNX export (network without NMS) and ONNX Runtime inference with the same NMS."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .artifact import load_artifact
from .data import Category, load_image, resize_stretched, to_tensor
from .errors import WeightsNotFound
from .inference import Detection
from .nms import multiclass_nms


class _Exportable(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)


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


def export_onnx(
    artifact: str | Path, output: str | Path, size: int | None = None, opset: int = 17
) -> Path:
    """Export an artifact to ONNX: input ``images`` [N, 3, S, S] in [0, 1]; outputs ``scores``
    [N, L, C] and ``boxes`` [N, L, 4] (pixels of the input). Categories and the model config
    are stored in the ONNX metadata so the file is self-describing."""
    model, cats, _ = load_artifact(artifact, "cpu")
    model.convert_to_deploy().eval()
    size = size or model.cfg.eval_size
    if size % 32:
        raise ValueError("size must be a multiple of 32")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        # The position embedding and anchors are built from the (fixed) input size; tracing
        # freezing them as constants is intended, so the TracerWarnings are noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter, chosen on purpose
        _export(model, dummy, output, opset)
    import onnx

    proto = onnx.load(str(output))
    meta = {
        "loupe_categories": json.dumps([{"id": c.id, "name": c.name} for c in cats]),
        "loupe_model_config": json.dumps(model.cfg.to_dict()),
        "loupe_input_size": str(size),
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(output))
    return output


class OnnxDetector:
    """Whole-image inference from an exported ONNX file (CPU ONNX Runtime by default)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise WeightsNotFound(
                f"{path} not found; create it with `python -m workers.detection export-onnx`"
            )
        self.session = ort.InferenceSession(
            str(path), providers=providers or ["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.categories = [
            Category(id=int(c["id"]), name=str(c["name"]), index=i)
            for i, c in enumerate(json.loads(meta["loupe_categories"]))
        ]
        cfg = json.loads(meta["loupe_model_config"])
        self.size = int(meta["loupe_input_size"])
        self.nms_kwargs = {
            "nms_threshold": cfg["nms_threshold"],
            "nms_top_k": cfg["nms_top_k"],
            "keep_top_k": cfg["keep_top_k"],
        }

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs for a float32 [N, 3, S, S] batch."""
        scores, boxes = self.session.run(None, {"images": images.astype(np.float32)})
        return scores, boxes

    def predict(
        self, image: np.ndarray | str | Path, score_threshold: float = 0.25
    ) -> list[Detection]:
        """Detections for one RGB uint8 image (or path), in original pixels."""
        if not isinstance(image, np.ndarray):
            image = load_image(image)
        h, w = image.shape[:2]
        batch = to_tensor([resize_stretched(image, self.size)]).numpy()
        scores, boxes = self.raw(batch)
        dets = multiclass_nms(
            torch.from_numpy(boxes[0]),
            torch.from_numpy(scores[0]).t(),
            score_threshold=score_threshold,
            **self.nms_kwargs,
        )
        sx, sy = w / self.size, h / self.size
        out = []
        for row in dets.tolist():
            cat = self.categories[int(row[0])]
            out.append(
                Detection(
                    min(max(row[2] * sx, 0), w),
                    min(max(row[3] * sy, 0), h),
                    min(max(row[4] * sx, 0), w),
                    min(max(row[5] * sy, 0), h),
                    row[1],
                    cat.id,
                    cat.name,
                )
            )
        return out
