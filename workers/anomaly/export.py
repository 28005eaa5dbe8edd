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
from pathlib import Path

import numpy as np
import torch

from .errors import IncompatibleModelError, MissingWeightsError

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
# Bumped whenever a network's forward changes in a way that changes its exported graph: an
# export from older code is then ignored (auto) or refused (onnx/openvino), never run.
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
    """The exported net for ``model_id`` next to ``artifact``, run by ONNX Runtime or OpenVINO;
    None (or an error when ``required``) if there is no export for this very model."""
    path = artifact.parent / ONNX_NAME
    if path.is_file() and onnx_model_id(path) == model_id:
        return OpenVinoNet(path) if runtime == "openvino" else OnnxNet(path)
    if required:
        raise MissingWeightsError(
            f"no ONNX export of model {model_id} at {path} (make it with: python -m "
            f"workers.anomaly export --model {artifact.parent})"
        )
    return None
