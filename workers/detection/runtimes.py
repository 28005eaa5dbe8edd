"""One way to get a predictor for an artifact on the best runtime available.

``load_detector(artifact, runtime="auto")`` returns a :class:`~.inference.Detector` (torch
eager) or an :class:`~.onnx_export.OnnxDetector` (ONNX Runtime on an ONNX export of the same
network). Both have the same ``predict`` / ``predict_batch`` / ``predict_sliced``: resizing, NMS
and the SAHI merge are shared code; only the network's forward pass runs elsewhere.

The export lives next to the artifact as ``<stem>.<size>.onnx`` (or in ``export_dir``), is made
on first use when missing, and carries the artifact's sha256: an export of another artifact
(a retrained model written to the same path) or of older export code is made again, never run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .artifact import artifact_sha256, read_artifact, trained_slicing
from .errors import RuntimeUnavailable, WeightsNotFound
from .inference import Detector, default_device

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "int8")


def onnx_export_path(artifact: str | Path, size: int, export_dir: str | Path | None = None) -> Path:
    """Where :func:`load_detector` keeps the ONNX export of ``artifact`` at input ``size``."""
    artifact = Path(artifact)
    folder = Path(export_dir) if export_dir is not None else artifact.parent
    return folder / f"{artifact.stem}.{size}.onnx"


def ensure_onnx_export(
    artifact: str | Path,
    size: int | None = None,
    *,
    export_dir: str | Path | None = None,
    export_missing: bool = True,
) -> Path:
    """The ONNX export of ``artifact`` at ``size`` (default: the artifact's eval size), made
    (atomically) when missing or made from another artifact or older export code.

    Raises :class:`WeightsNotFound` for a missing artifact, or for a missing export when
    ``export_missing`` is False.
    """
    from .onnx_export import EXPORT_VERSION, export_onnx, read_export_metadata

    artifact = Path(artifact)
    sha = artifact_sha256(artifact)  # raises WeightsNotFound for a missing artifact
    if size is None:
        size = int(read_artifact(artifact)["model_config"]["eval_size"])
    path = onnx_export_path(artifact, size, export_dir)
    if path.is_file():
        meta = read_export_metadata(path)
        if (
            meta.get("loupe_artifact_sha256") == sha
            and meta.get("loupe_export_version") == EXPORT_VERSION
            and meta.get("loupe_input_size") == str(size)
        ):
            return path
        logger.info("ONNX export %s is not of %s (or is outdated): exporting again", path, artifact)
    if not export_missing:
        raise WeightsNotFound(
            f"no ONNX export of {artifact} at input size {size} in {path}; make it with "
            f"`python -m workers.detection export-onnx {artifact} {path} --size {size}`"
        )
    return export_onnx(artifact, path, size=size)


def load_detector(
    artifact: str | Path,
    runtime: str = "auto",
    *,
    device: str | torch.device | None = None,
    eval_size: int | None = None,
    threads: int | None = None,
    export_dir: str | Path | None = None,
    export_missing: bool = True,
    precision: str = "auto",
) -> Detector:
    """A predictor for ``artifact`` with ``predict``, ``predict_batch`` and ``predict_sliced``.

    ``runtime``:

    - ``"torch"``: :meth:`Detector.load` (eager PyTorch, on ``device``; default CUDA if present).
    - ``"onnx"``: ONNX Runtime on the CPU, from the export next to the artifact (made on first
      use, see :func:`ensure_onnx_export`). 1.3–1.5x faster per 640 slice than torch eager on
      one CPU thread (docs/detection.md). Errors: :class:`RuntimeUnavailable` when
      onnxruntime is not installed, a CUDA ``device`` was asked for, or the export cannot be
      written (then export elsewhere with ``export_dir`` or beforehand with
      ``export_onnx``/``export-onnx``); :class:`WeightsNotFound` when ``export_missing`` is
      False and there is no export of this artifact.
    - ``"auto"``: torch on CUDA (``device`` given as CUDA, or none given and CUDA present),
      else ONNX Runtime; if that cannot be used, torch, with a logged warning. The returned
      object's ``runtime`` attribute says which ran.

    ``precision`` (ONNX Runtime only): ``"auto"`` runs the INT8 copy of the export when one
    passed its check against fp32 for this very artifact (:func:`~.quantize.check_int8`, run by
    the training job on the val split), else fp32; ``"fp32"`` never runs INT8; ``"int8"``
    raises :class:`WeightsNotFound` when there is no checked INT8 copy. The returned object's
    ``precision`` attribute says which ran.

    ``eval_size`` is the network input (default: the artifact's); the ONNX export is made at
    that size. ``threads`` is the number of intra-op threads of the ONNX Runtime session
    (default: torch's current count); torch's own count is process-wide and left to the caller
    (``torch.set_num_threads``). A missing artifact raises :class:`WeightsNotFound` for every
    runtime; an unknown ``runtime`` raises ``ValueError``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and runtime == "torch":
        raise RuntimeUnavailable("INT8 runs through ONNX Runtime only; use runtime='onnx'")
    if eval_size is not None and eval_size % 32:
        raise ValueError("eval_size must be a multiple of 32")
    artifact = Path(artifact)
    if not artifact.is_file():
        read_artifact(artifact)  # the one WeightsNotFound message for a missing artifact
    from . import two_stage

    if two_stage.is_artifact(artifact):  # a two-stage change detector runs in torch, on CPU
        return two_stage.load(artifact)
    dev = torch.device(device) if device is not None else default_device()
    if runtime == "torch" or (runtime == "auto" and dev.type != "cpu"):
        return Detector.load(artifact, device=dev, eval_size=eval_size)
    if runtime == "onnx" and dev.type != "cpu":
        raise RuntimeUnavailable(
            f"the ONNX runtime runs on the CPU only, not on {dev}; use runtime='torch' there"
        )
    try:
        return _onnx_detector(artifact, eval_size, threads, export_dir, export_missing, precision)
    except Exception as exc:
        if runtime == "onnx" or precision == "int8":
            raise
        # auto: slower is better than failing the job; the log says why.
        logger.warning("ONNX Runtime unusable for %s (%s); using torch", artifact, exc)
    return Detector.load(artifact, device="cpu", eval_size=eval_size)


def _onnx_detector(
    artifact: Path,
    eval_size: int | None,
    threads: int | None,
    export_dir: str | Path | None,
    export_missing: bool,
    precision: str = "auto",
) -> Detector:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeUnavailable(
            "onnxruntime is not installed (pip install -r workers/detection/requirements.txt)"
        ) from exc
    from .onnx_export import OnnxDetector

    try:
        path = ensure_onnx_export(
            artifact, eval_size, export_dir=export_dir, export_missing=export_missing
        )
    except OSError as exc:
        if isinstance(exc, WeightsNotFound):
            raise
        raise RuntimeUnavailable(
            f"cannot write the ONNX export of {artifact} ({exc}); pass export_dir= a writable "
            "folder, or export it first with `python -m workers.detection export-onnx`"
        ) from exc
    detector = None
    if precision != "fp32":
        from .quantize import checked_int8_export

        int8 = checked_int8_export(path, artifact_sha256(artifact))
        if int8 is not None:
            detector = OnnxDetector(int8, threads=threads)
        elif precision == "int8":
            raise WeightsNotFound(
                f"no INT8 copy of {artifact} that passed its check against fp32 beside {path}; "
                "make one with `python -m workers.detection check-int8`"
            )
    detector = detector or OnnxDetector(path, threads=threads)
    payload = read_artifact(artifact)  # how it was trained: the slices it predicts with
    detector.trained_on = trained_slicing(
        payload.get("metadata", {}), int(payload["model_config"]["eval_size"])
    )
    return detector


__all__ = ["PRECISIONS", "RUNTIMES", "ensure_onnx_export", "load_detector", "onnx_export_path"]
