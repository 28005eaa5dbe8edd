"""The trained-model file: its format, writing it, and loading it once per process.

``model.pt`` is a ``torch.save`` dictionary that loads with ``weights_only=True`` (no pickled
code runs): ``format``, ``format_version``, ``model_id``, ``kind``, ``net_args``,
``train_config``, ``geometry``, ``channels``, ``image_info``, ``calibration``, ``metrics``,
``created_at``, ``versions``, ``coarse``, ``lines`` and ``state_dict``. ``model.json`` beside it
holds the same without the weights. A change to this layout must bump :data:`ARTIFACT_VERSION`
(a companion's key, ``None`` when there is none, added where an older file without it loads as
it did: ``lines`` came without a bump).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from .config import BACKENDS, TrainConfig, resolve_device
from .errors import ConfigError, IncompatibleModelError, MissingWeightsError
from .offline import configure_offline
from .runtimes import INT8_NAME, ONNX_NAME, backend_of, open_net
from .tiling import Geometry

ARTIFACT_FORMAT = "loupe-anomaly"
ARTIFACT_VERSION = 1
ARTIFACT_NAME = "model.pt"
#: The models a model file can carry beside its own, each in a folder of that name: a tiled
#: model's whole-image pass (its calibrated map joined by the maximum) and the line model (added,
#: the sum calibrated again: ``inference.joined_map``).
COMPANIONS = ("coarse", "lines")


@dataclass
class LoadedModel:
    """A model ready for :func:`~workers.anomaly.inference.predict` (see :func:`load_model`)."""

    net: Any  # a torch.nn.Module, or a runtimes.OnnxNet: the same call contract
    kind: str
    model_id: str
    geometry: Geometry
    channels: int
    calibration: dict
    info: dict
    device: torch.device
    meta: dict
    coarse: LoadedModel | None = None
    lines: LoadedModel | None = None

    @property
    def backend(self) -> str:
        """``"torch"``, ``"onnx"``, ``"openvino"`` or ``"openvino-int8"``."""
        return backend_of(self.net)


def save_artifact(
    out_dir: str | Path,
    model: LoadedModel,
    *,
    net_args: dict,
    config: TrainConfig,
    metrics: dict,
    companions: dict[str, str],
) -> Path:
    """Write ``<out_dir>/model.pt`` atomically (a cancelled or crashed run never leaves half a
    model) and ``model.json`` beside it; return the ``model.pt`` path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    artifact = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "model_id": model.model_id,
        "kind": model.kind,
        "net_args": net_args,
        "train_config": asdict(config),
        "geometry": asdict(model.geometry),
        "channels": model.channels,
        "image_info": model.info,
        "calibration": model.calibration,
        "metrics": metrics,
        "created_at": datetime.now(UTC).isoformat(),
        "versions": _versions(),
        # the companions (``companions``: name -> model id), each in a folder of that name
        **{
            name: (
                {"path": f"{name}/{ARTIFACT_NAME}", "model_id": companions[name]}
                if name in companions
                else None
            )
            for name in COMPANIONS
        },
        "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
    }
    path = out / ARTIFACT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save(artifact, tmp)
    tmp.replace(path)
    meta = {k: v for k, v in artifact.items() if k != "state_dict"}
    (out / "model.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def _versions() -> dict:
    import anomalib
    import timm

    return {
        "torch": str(torch.__version__),
        "anomalib": str(anomalib.__version__),
        "timm": str(timm.__version__),
    }


def load_model(
    artifact_path: str | Path, device: str = "auto", backend: str = "auto"
) -> LoadedModel:
    """Load ``model.pt`` (or a folder holding it) once per process; later calls hit a cache.

    ``backend``: ``"torch"``; ``"onnx"`` (ONNX Runtime on the ``model.onnx`` made by
    :func:`export_onnx`, CPU; error if absent); ``"openvino"`` (OpenVINO on that same file);
    ``"openvino-int8"`` (the IR made by :func:`export_openvino_int8`); ``"auto"`` (on CPU the
    INT8 IR if one exists for this very model, else OpenVINO on its ONNX export, else torch).
    The cache key includes the files' modification times, so a retrained or re-exported model
    is reloaded.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    path = Path(artifact_path)
    if path.is_dir():
        path = path / ARTIFACT_NAME
    if not path.is_file():
        raise MissingWeightsError(
            f"anomaly model not found: {path} (train one with: python -m workers.anomaly train)"
        )
    stamp = path.stat().st_mtime_ns
    for name in (ONNX_NAME, INT8_NAME, Path(INT8_NAME).with_suffix(".bin").name):
        other = path.parent / name
        stamp += other.stat().st_mtime_ns if other.is_file() else 0
    return _load_cached(str(path.resolve()), stamp, device, backend)


@functools.lru_cache(maxsize=8)  # a model with both companions takes three
def _load_cached(path: str, mtime_ns: int, device: str, backend: str) -> LoadedModel:
    configure_offline()
    try:
        # mmap: the weights are read only if used (the torch backend copies them into the
        # network; an exported backend never touches them: 0.2 s and the file's size in RSS)
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our artifact"
        raise IncompatibleModelError(
            f"{path} is not a readable Loupe anomaly model: {exc}"
        ) from exc
    if not isinstance(blob, dict) or blob.get("format") != ARTIFACT_FORMAT:
        raise IncompatibleModelError(f"{path} is not a Loupe anomaly model artifact")
    if blob.get("format_version") != ARTIFACT_VERSION:
        raise IncompatibleModelError(
            f"{path} has artifact version {blob.get('format_version')}, this code reads "
            f"{ARTIFACT_VERSION}; retrain the model"
        )
    dev = resolve_device(device)
    net = open_net(Path(path), blob, dev, backend)
    companions: dict[str, LoadedModel] = {}
    for name in COMPANIONS:
        if blob.get(name):
            companion_path = Path(path).parent / blob[name]["path"]
            try:
                companion = load_model(companion_path, device, backend)
            except MissingWeightsError:
                # the runtime asked for has no export of this companion (the line model has no
                # INT8 one; a model exported before its companions were): the best it has
                companion = load_model(companion_path, device, "auto")
            if companion.model_id != blob[name]["model_id"]:
                raise IncompatibleModelError(f"{path}: its {name} model was replaced; retrain")
            companions[name] = companion
    return LoadedModel(
        net=net,
        kind=blob["kind"],
        model_id=blob["model_id"],
        geometry=Geometry(**blob["geometry"]),
        channels=int(blob["channels"]),
        calibration=blob["calibration"],
        info=blob["image_info"],
        device=dev,
        meta={k: v for k, v in blob.items() if k != "state_dict"},
        **companions,
    )
