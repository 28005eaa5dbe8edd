"""ONNX export of a trained model, and inference from the exported file with ONNX Runtime.

The exported graph is the whole network as :func:`predict` uses it: RGB tiles in ``[0, 1]``
``(N, 3, T, T)`` -> raw anomaly map ``(N, 1, T, T)``, batch size dynamic. Tiling, calibration
and regions stay in Python, so an ONNX model gives the same ``Prediction`` as the torch one.
On CPU ONNX Runtime runs the EfficientNet-Lite backbones 2-3x faster than eager PyTorch.

OpenVINO compiles the same ``model.onnx`` (``backend="openvino"``); no separate IR is kept.

The file is written next to the artifact as ``model.onnx`` and carries the artifact's
``model_id`` in its metadata; :func:`workers.anomaly.load_model` with ``backend="onnx"`` (or
``"auto"``) uses it only when that id matches, so a stale export is never paired with a newer
model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import IncompatibleModelError, MissingWeightsError

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
INT8_NAME = "model_int8.xml"
# Bumped whenever a network's forward changes what its exported graph computes: an export from
# older code is then ignored (auto) or refused (onnx/openvino), never run. (A faster graph for
# the same map, like the separable blur, keeps the number: older exports stay right, only slower.)
EXPORT_VERSION = "2"


def export_onnx(
    artifact_path: str | Path, out_path: str | Path | None = None, tolerance: float = 1e-2
) -> Path:
    """Export the model to ONNX, check it against torch on random tiles, return the path.

    ``tolerance`` is the largest allowed difference relative to the map's range; a larger one
    raises :class:`IncompatibleModelError` and leaves no file behind.
    """
    import onnx

    from .engine import ARTIFACT_NAME, load_model

    artifact = Path(artifact_path)
    if artifact.is_dir():
        artifact = artifact / ARTIFACT_NAME
    model = load_model(artifact, device="cpu", backend="torch")
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
    session = _session(tmp)
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


def _session(path: Path, threads: int | None = None):  # noqa: ANN202 - onnxruntime type
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = threads or torch.get_num_threads()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxNet:
    """Callable with the torch network's contract (tensor in, tensor out), run by ONNX Runtime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.session = _session(path)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run(None, {"tiles": x})[0])

    def eval(self) -> OnnxNet:
        return self

    def to(self, device: torch.device) -> OnnxNet:  # noqa: ARG002 - CPU provider only
        return self


class OpenVinoNet(OnnxNet):
    """The same exported graph compiled by OpenVINO for CPU (fp32 precision, so scores match)."""

    def __init__(self, path: Path) -> None:
        import openvino as ov

        self.path = path
        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(np.asarray(self.compiled(x)[0]))


def _f32() -> dict:
    return {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoIrNet(OpenVinoNet):
    """An OpenVINO IR (``model_int8.xml`` + ``.bin``) compiled for CPU."""

    def __init__(self, path: Path) -> None:
        import openvino as ov

        self.path = path
        core = ov.Core()
        # f32 for what is not quantized: left to itself OpenVINO runs it in bf16 on CPUs that
        # have it, and the distances after the backbone are exactly what must stay fp32
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", _f32())


# Only the convolutional networks are quantized: the backbone of PaDiM/PatchCore, the teacher,
# student and autoencoder of EfficientAD. Everything after them (Mahalanobis distances, nearest
# neighbours, squared differences, the blur) stays fp32: in INT8 a squared distance spanning
# 0..20000 in 256 steps flattens every normal pixel to the same value (measured: a constant
# map), and INT8 distances to the memory bank or the covariances moved image scores by 50 %.
QUANTIZED_SCOPE = r"^(?!.*/(feature_extractor|teacher|student|ae)/).*"


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
    from .offline import configure_offline

    configure_offline()  # before NNCF is imported: it decides on telemetry at import time
    import nncf
    import openvino as ov

    from .engine import ARTIFACT_NAME, load_model
    from .image_io import read_pixels
    from .tiling import tile_grid

    artifact = Path(artifact_path)
    if artifact.is_dir():
        artifact = artifact / ARTIFACT_NAME
    model = load_model(artifact, device="cpu", backend="torch")
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
        ignored_scope=nncf.IgnoredScope(patterns=[QUANTIZED_SCOPE], validate=False),
    )
    fp32 = core.compile_model(core.read_model(str(onnx_path)), "CPU", _f32())
    int8 = core.compile_model(quantized, "CPU", _f32())
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


def int8_model_id(path: Path) -> str | None:
    """The ``model_id`` an INT8 IR made by this code's export version was made from, or None."""
    import openvino as ov

    if not path.is_file() or not path.with_suffix(".bin").is_file():
        return None
    try:
        model = ov.Core().read_model(str(path))
        if model.get_rt_info(["loupe", "export"]).astype(str) != EXPORT_VERSION:
            return None
        return model.get_rt_info(["loupe", "model_id"]).astype(str)
    except Exception:  # noqa: BLE001 - unreadable or untagged: not a usable export
        return None


def onnx_model_id(path: Path) -> str | None:
    """The ``loupe_model_id`` of an export made by this code's export version, or None."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any unreadable file just means "no usable export"
        return None
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("loupe_export") != EXPORT_VERSION:
        return None
    return props.get("loupe_model_id")


def load_onnx_net(
    artifact: Path, model_id: str, required: bool, runtime: str = "onnx"
) -> OnnxNet | None:
    """The exported net for ``model_id`` next to ``artifact``, run by ONNX Runtime, OpenVINO,
    or OpenVINO on the INT8 IR (``runtime="openvino-int8"``); None (or an error when
    ``required``) if there is no such export for this very model."""
    if runtime == "openvino-int8":
        ir = artifact.parent / INT8_NAME
        if int8_model_id(ir) == model_id:
            return OpenVinoIrNet(ir)
        if required:
            raise MissingWeightsError(
                f"no INT8 export of model {model_id} at {ir} (make it with: python -m "
                f"workers.anomaly export --model {artifact.parent} --int8 --images <normal images>)"
            )
        return None
    path = artifact.parent / ONNX_NAME
    if path.is_file() and onnx_model_id(path) == model_id:
        return OpenVinoNet(path) if runtime == "openvino" else OnnxNet(path)
    if required:
        raise MissingWeightsError(
            f"no ONNX export of model {model_id} at {path} (make it with: python -m "
            f"workers.anomaly export --model {artifact.parent})"
        )
    return None
