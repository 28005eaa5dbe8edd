"""What runs a model's network: eager torch, ONNX Runtime, or OpenVINO (fp32 or the INT8 IR).

Every runtime has the torch network's call contract: RGB tiles in ``[0, 1]`` ``(N, 3, T, T)``
-> raw anomaly map ``(N, 1, T, T)``. Tiling, calibration and regions stay in Python, so every
backend gives the same kind of ``Prediction``.

Exports are written next to the artifact (``model.onnx``, ``model_int8.xml``; see
:mod:`.export`) and carry the artifact's ``model_id``: :func:`open_net` uses one only when that
id matches, so a stale export is never paired with a newer model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import models
from .errors import MissingWeightsError

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
INT8_NAME = "model_int8.xml"
# Bumped whenever a network's forward changes what its exported graph computes: an export from
# older code is then ignored (auto) or refused (onnx/openvino), never run. (A faster graph for
# the same map, like the separable blur, keeps the number: older exports stay right, only slower.)
EXPORT_VERSION = "2"


def build_torch_net(kind: str, net_args: dict, state_dict: dict, device: torch.device) -> Any:
    """The model's torch network with the artifact's tensors, in eval mode on ``device``."""
    net = models.get(kind).build(net_args, False)
    net.load_state_dict(state_dict)
    return net.to(device).eval()


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` using ``threads`` (default: torch's count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = threads or torch.get_num_threads()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def openvino_f32() -> dict:
    """OpenVINO CPU settings: torch's thread count, and fp32 for what is not quantized (left to
    itself OpenVINO runs it in bf16 on CPUs that have it, and the distances after the backbone
    are exactly what must stay fp32)."""
    return {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}


class OnnxNet:
    """Callable with the torch network's contract (tensor in, tensor out), run by ONNX Runtime."""

    def __init__(self, path: Path, session: Any = None) -> None:
        self.path = path
        self.session = session if session is not None else onnx_session(path)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.session.run(None, {"tiles": x})[0])

    def eval(self) -> OnnxNet:
        return self

    def to(self, device: torch.device) -> OnnxNet:  # noqa: ARG002 - CPU provider only
        return self


class OpenVinoNet(OnnxNet):
    """The same exported graph compiled by OpenVINO for CPU (fp32 precision, so scores match)."""

    def __init__(self, path: Path, model: Any = None) -> None:
        import openvino as ov

        self.path = path
        core = ov.Core()
        model = model if model is not None else core.read_model(str(path))
        self.compiled = core.compile_model(model, "CPU", openvino_f32())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(np.asarray(self.compiled(x)[0]))


class OpenVinoIrNet(OpenVinoNet):
    """An OpenVINO IR (``model_int8.xml`` + ``.bin``) compiled for CPU."""


def backend_of(net: Any) -> str:
    """``"torch"``, ``"onnx"``, ``"openvino"`` or ``"openvino-int8"``: what runs ``net``."""
    if isinstance(net, torch.nn.Module):
        return "torch"
    if isinstance(net, OpenVinoIrNet):
        return "openvino-int8"
    return "openvino" if isinstance(net, OpenVinoNet) else "onnx"


def int8_model_id(path: Path) -> str | None:
    """The ``model_id`` an INT8 IR made by this code's export version was made from, or None."""
    return _read_int8(path)[1]


def _read_int8(path: Path) -> tuple[Any, str | None]:
    """The INT8 IR read by OpenVINO (or None) and the ``model_id`` it was made from when this
    code's export version made it (or None)."""
    import openvino as ov

    if not path.is_file() or not path.with_suffix(".bin").is_file():
        return None, None
    try:
        model = ov.Core().read_model(str(path))
        if model.get_rt_info(["loupe", "export"]).astype(str) != EXPORT_VERSION:
            return model, None
        return model, model.get_rt_info(["loupe", "model_id"]).astype(str)
    except Exception:  # noqa: BLE001 - unreadable or untagged: not a usable export
        return None, None


def onnx_model_id(path: Path) -> str | None:
    """The ``loupe_model_id`` of an export made by this code's export version, or None."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any unreadable file just means "no usable export"
        return None
    return _tagged_id({p.key: p.value for p in proto.metadata_props})


def _tagged_id(props: dict) -> str | None:
    """The model id of an export's metadata when this code's export version wrote it."""
    if props.get("loupe_export") != EXPORT_VERSION:
        return None
    return props.get("loupe_model_id")


_TAGS = ("loupe_export", "loupe_model_id")


def _open_export(path: Path, model_id: str, runtime: str) -> OnnxNet | None:
    """``model.onnx`` run by ONNX Runtime or OpenVINO when it was exported from ``model_id``,
    else None. The runtime reads the file once and its metadata comes from the runtime's own
    reader: ``onnx_model_id`` would import ``onnx`` (1 s, most of it ml_dtypes) and parse the
    whole file a second time (0.7 s for PaDiM's 168 MB), on every first load."""
    try:
        if runtime == "openvino":
            import openvino as ov

            model = ov.Core().read_model(str(path))
            # OpenVINO keeps an ONNX file's metadata_props as rt_info under "framework"
            tagged = all(model.has_rt_info(["framework", k]) for k in _TAGS)
            props = (
                {k: model.get_rt_info(["framework", k]).astype(str) for k in _TAGS}
                if tagged
                else None
            )
        else:
            session = onnx_session(path)
            props = dict(session.get_modelmeta().custom_metadata_map)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is no usable export
        logger.warning("%s cannot read %s: %s", runtime, path, exc)
        return None
    found = _tagged_id(props) if props is not None else onnx_model_id(path)
    if found != model_id:
        return None
    return OpenVinoNet(path, model) if runtime == "openvino" else OnnxNet(path, session)


def load_onnx_net(
    artifact: Path, model_id: str, required: bool, runtime: str = "onnx"
) -> OnnxNet | None:
    """The exported net for ``model_id`` next to ``artifact``, run by ONNX Runtime, OpenVINO,
    or OpenVINO on the INT8 IR (``runtime="openvino-int8"``); None (or an error when
    ``required``) if there is no such export for this very model."""
    if runtime == "openvino-int8":
        ir = artifact.parent / INT8_NAME
        model, found = _read_int8(ir)
        if found == model_id:
            return OpenVinoIrNet(ir, model)  # compiles the IR read above: one read
        if required:
            raise MissingWeightsError(
                f"no INT8 export of model {model_id} at {ir} (make it with: python -m "
                f"workers.anomaly export --model {artifact.parent} --int8 --images <normal images>)"
            )
        return None
    path = artifact.parent / ONNX_NAME
    net = _open_export(path, model_id, runtime) if path.is_file() else None
    if net is not None:
        return net
    if required:
        raise MissingWeightsError(
            f"no ONNX export of model {model_id} at {path} (make it with: python -m "
            f"workers.anomaly export --model {artifact.parent})"
        )
    return None


def open_net(artifact: Path, blob: dict, device: torch.device, backend: str) -> Any:
    """The network of the artifact ``blob`` (read from ``artifact``) on ``backend``.

    ``auto`` on CPU: the INT8 IR when one was made (and verified) for this model, else OpenVINO
    on ``model.onnx`` (faster than ONNX Runtime: docs/benchmarks-anomaly.md), else torch; an
    export this OpenVINO cannot read or compile is skipped. On CUDA: torch.
    """
    if backend != "torch" and device.type == "cpu":
        for runtime in (backend,) if backend != "auto" else ("openvino-int8", "openvino"):
            try:
                net = load_onnx_net(artifact, blob["model_id"], backend != "auto", runtime)
            except Exception:
                if backend != "auto":
                    raise
                logger.exception("%s export of %s unusable; trying the next", runtime, artifact)
                net = None
            if net is not None:
                return net
    return build_torch_net(blob["kind"], blob["net_args"], blob["state_dict"], device)
