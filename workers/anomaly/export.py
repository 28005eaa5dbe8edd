"""Exports of a trained model: ``model.onnx`` (:func:`export_onnx`) and the NNCF INT8 IR for
OpenVINO (:func:`export_openvino_int8`), each checked against the torch network before it is
written. What runs them is :mod:`.runtimes`.

The exported graph is the whole network as :func:`~workers.anomaly.inference.predict` uses it:
RGB tiles in ``[0, 1]`` ``(N, 3, T, T)`` -> raw anomaly map ``(N, 1, T, T)``, batch size
dynamic; OpenVINO compiles the same ``model.onnx`` (``backend="openvino"``), no separate fp32 IR
is kept. Each export carries the artifact's ``model_id``, so a stale one is never run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import models
from .artifact import ARTIFACT_NAME, COMPANIONS, load_model
from .errors import IncompatibleModelError
from .image_io import read_pixels
from .offline import configure_offline
from .runtimes import (
    EXPORT_VERSION,
    INT8_NAME,
    ONNX_NAME,
    onnx_model_id,
    onnx_session,
    openvino_f32,
)
from .tiling import tile_grid

logger = logging.getLogger(__name__)


def export_onnx(
    artifact_path: str | Path, out_path: str | Path | None = None, tolerance: float = 1e-2
) -> Path:
    """Export the model to ONNX, check it against torch on random tiles, return the path.

    ``tolerance`` is the largest allowed difference relative to the map's range; a larger one
    raises :class:`IncompatibleModelError` and leaves no file behind. The model's companions
    (coarse pass, line detector) are exported beside themselves first, so that a runtime asked
    for by name runs them too.
    """
    import onnx

    artifact = Path(artifact_path)
    if artifact.is_dir():
        artifact = artifact / ARTIFACT_NAME
    model = load_model(artifact, device="cpu", backend="torch")
    if out_path is None:
        for name in COMPANIONS:
            if model.meta.get(name):
                export_onnx(artifact.parent / model.meta[name]["path"], tolerance=tolerance)
    out = Path(out_path) if out_path else artifact.parent / ONNX_NAME
    t = model.geometry.input_size
    example = torch.rand(2, 3, t, t, generator=torch.Generator().manual_seed(0))
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        reference = model.net(example).numpy()
        torch.onnx.export(
            model.net,
            (example,),
            str(tmp),
            input_names=["tiles"],
            output_names=["anomaly_map"],
            dynamic_axes={"tiles": {0: "batch"}, "anomaly_map": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(tmp))
    for key, value in (("loupe_model_id", model.model_id), ("loupe_export", EXPORT_VERSION)):
        meta = proto.metadata_props.add()
        meta.key, meta.value = key, value
    onnx.save(proto, str(tmp))
    session = onnx_session(tmp)
    got = session.run(None, {"tiles": example.numpy()})[0]
    span = float(reference.max() - reference.min()) or 1.0
    error = float(np.abs(got - reference).max()) / span
    if error > tolerance:
        tmp.unlink(missing_ok=True)
        raise IncompatibleModelError(
            f"ONNX export of {artifact} differs from torch by {error:.3g} of the map range"
        )
    tmp.replace(out)
    logger.info("exported %s (max relative difference %.2g)", out, error)
    return out


def quantized_scope(kind: str) -> str:
    """NNCF ignored-scope pattern: every node outside the model's convolutional networks
    (``ModelSpec.quantized_modules``: PaDiM's and PatchCore's backbone, EfficientAD's teacher,
    student and autoencoder). What follows them (Mahalanobis distances, nearest neighbours,
    squared differences, the blur) stays fp32: in INT8 a squared distance over a wide range in
    256 steps flattens every normal pixel to the same value (docs/anomaly.md, "Runtimes and
    INT8")."""
    modules = models.get(kind).quantized_modules
    if not modules:
        raise IncompatibleModelError(f"{kind} models have no INT8 export")
    return rf"^(?!.*/({'|'.join(modules)})/).*"


def export_openvino_int8(
    artifact_path: str | Path,
    images: Sequence[str | Path],
    *,
    max_inputs: int = 64,
    max_pixel_error: float = 0.05,
    seed: int = 0,
) -> dict:
    """Post-training INT8 quantization (NNCF) of the model's convolutions for OpenVINO on CPU.

    ``images`` are normal images of the product (the training images do): their network inputs
    (whole images, or tiles of tiled models; at most ``max_inputs``) calibrate the activation
    ranges. The quantized network is then compared with the fp32 one on those inputs, in the
    model's calibrated units (0 = a typical normal pixel, 0.5 = the pixel threshold): if the
    99th percentile of the pixel differences exceeds ``max_pixel_error`` nothing is written and
    :class:`IncompatibleModelError` says by how much it missed (PaDiM and PatchCore on the
    Lite0 backbone miss by 10x: their distances amplify the INT8 noise of the features).
    Otherwise ``model_int8.xml``/``.bin`` are written next to the artifact (tagged with its
    ``model_id``) and ``load_model(..., backend="openvino-int8")`` (or ``"auto"``) runs it.
    Returns the figures of the comparison.
    """
    configure_offline()  # before NNCF is imported: it decides on telemetry at import time
    import nncf
    import openvino as ov

    artifact = Path(artifact_path)
    if artifact.is_dir():
        artifact = artifact / ARTIFACT_NAME
    model = load_model(artifact, device="cpu", backend="torch")
    scope = quantized_scope(model.kind)
    onnx_path = artifact.parent / ONNX_NAME
    if onnx_model_id(onnx_path) != model.model_id:
        export_onnx(artifact)
    if not images:
        raise IncompatibleModelError("INT8 calibration needs at least one normal image")
    rng = np.random.default_rng(seed)
    geo = model.geometry
    t = geo.input_size
    inputs: list[np.ndarray] = []
    per_image = max(1, max_inputs // len(images))
    for path in images:
        prepared = geo.prepare(read_pixels(path)).transpose(2, 0, 1)
        if geo.scale is None:
            inputs.append(np.ascontiguousarray(prepared[None]))
        else:
            grid = tile_grid(prepared.shape[1], prepared.shape[2], t, geo.overlap_px())
            for i in rng.permutation(len(grid))[:per_image]:
                c = grid[int(i)]
                inputs.append(np.ascontiguousarray(prepared[None, :, c.y : c.y + t, c.x : c.x + t]))
        if len(inputs) >= max_inputs:
            break
    inputs = inputs[:max_inputs]
    core = ov.Core()
    quantized = nncf.quantize(
        core.read_model(str(onnx_path)),
        nncf.Dataset(inputs),
        subset_size=len(inputs),
        ignored_scope=nncf.IgnoredScope(patterns=[scope], validate=False),
    )
    fp32 = core.compile_model(core.read_model(str(onnx_path)), "CPU", openvino_f32())
    int8 = core.compile_model(quantized, "CPU", openvino_f32())
    ref = np.stack([np.asarray(fp32(x)[0])[0, 0] for x in inputs])
    got = np.stack([np.asarray(int8(x)[0])[0, 0] for x in inputs])
    cal = model.calibration
    pixel_span = max(cal["pixel_threshold"] - cal["pixel_lo"], 1e-12)
    image_span = max(cal["image_threshold"] - cal["image_lo"], 1e-12)
    error = np.abs(got - ref) * 0.5 / pixel_span
    figures = {
        "calibration_inputs": len(inputs),
        "pixel_error_p99": float(np.quantile(error, 0.99)),
        "pixel_error_max": float(error.max()),
        "image_score_error_max": float(
            np.abs(got.reshape(len(got), -1).max(1) - ref.reshape(len(ref), -1).max(1)).max()
            * 0.5
            / image_span
        ),
        "map_correlation": _correlation(got.ravel(), ref.ravel()),
        "score_correlation": _correlation(
            got.reshape(len(got), -1).max(1), ref.reshape(len(ref), -1).max(1)
        ),
        "max_relative_error": float(np.abs(got - ref).max() / (float(np.ptp(ref)) or 1.0)),
    }
    if not figures["pixel_error_p99"] <= max_pixel_error:  # also catches NaN
        raise IncompatibleModelError(
            f"INT8 quantization changes this {model.kind} model too much: calibrated pixel "
            f"scores move by {figures['pixel_error_p99']:.3f} (99th percentile; the threshold "
            f"is 0.5, the limit {max_pixel_error}); keep the fp32 export"
        )
    quantized.set_rt_info(model.model_id, ["loupe", "model_id"])
    quantized.set_rt_info(EXPORT_VERSION, ["loupe", "export"])
    out = artifact.parent / INT8_NAME
    tmp = out.with_name("model_int8.tmp.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(out.with_suffix(".bin"))
    tmp.replace(out)
    logger.info("INT8 export %s: %s", out, figures)
    return {"path": str(out), **figures}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float(np.array_equal(a, b))
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])
