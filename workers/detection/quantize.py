"""INT8 for CPU inference: ONNX Runtime static quantization of a detector's ONNX export, kept
only where it passes a check against the fp32 export on held-out images.

Only the convolutions and matrix products are quantized (weights per channel, int8;
activations uint8, calibrated on slices cut from the training images as the detector will see
them); the box decoding, the softmax of the distribution head and NMS stay in float. Measured
on the 2-core AMD EPYC (AVX512-VNNI) of docs/benchmarks-detection.md, a lite0 detector at
416 px ran 1.7-1.9x faster per slice this way; quantizing every operator failed to run (a
broadcast ONNX Runtime's quantized Add does not support, in the encoder).

:func:`check_int8` writes ``<stem>.<size>.int8.onnx`` beside the artifact only when the INT8
network's mAP50 on the given images is within ``tolerance`` of the fp32 one's and it is faster
on this machine; its metadata carries the artifact's sha256 and the check's figures, so
:func:`workers.detection.load_detector` uses it only for the artifact it was checked for.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import artifact_sha256
from .data import CocoDetectionDataset, resize_stretched, to_tensor
from .errors import DetectionError

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
INT8_TOLERANCE = 0.01  # mAP50 (absolute) the INT8 network may lose against fp32
INT8_MIN_SPEEDUP = 1.1  # and it must be at least this much faster, or it is not worth a risk
CALIBRATION_SLICES = 32


def int8_export_path(fp32_export: str | Path) -> Path:
    """Where the checked INT8 copy of an fp32 export lives: ``<stem>.<size>.int8.onnx``."""
    fp32_export = Path(fp32_export)
    return fp32_export.with_name(f"{fp32_export.stem}.int8.onnx")


def calibration_slices(
    images: Iterable[np.ndarray],
    size: int,
    slice_size: int | None,
    count: int = CALIBRATION_SLICES,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """Float32 [1, 3, size, size] batches in [0, 1], as the detector sees its input: random
    ``slice_size`` crops of each image (the whole image when it is no larger, or when
    ``slice_size`` is None), stretched to ``size``; ``count`` in all, round-robin over images."""
    rng = np.random.default_rng(seed)
    pool = list(images)
    if not pool:
        raise DetectionError("INT8 calibration needs at least one image")
    for n in range(count):
        im = pool[n % len(pool)]
        h, w = im.shape[:2]
        if slice_size is not None and (h > slice_size or w > slice_size):
            s = min(slice_size, h, w)
            y = int(rng.integers(0, h - s + 1))
            x = int(rng.integers(0, w - s + 1))
            im = im[y : y + s, x : x + s]
        yield to_tensor([resize_stretched(im, size)]).numpy()


def calibration_pairs(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    size: int,
    slice_size: int | None,
    count: int = CALIBRATION_SLICES,
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`calibration_slices` for a Siamese network: (image, reference) batches, the
    reference cut at the image's window."""
    rng = np.random.default_rng(seed)
    pool = list(pairs)
    if not pool:
        raise DetectionError("INT8 calibration needs at least one image")
    for n in range(count):
        im, ref = pool[n % len(pool)]
        h, w = im.shape[:2]
        if slice_size is not None and (h > slice_size or w > slice_size):
            s = min(slice_size, h, w)
            y = int(rng.integers(0, h - s + 1))
            x = int(rng.integers(0, w - s + 1))
            im, ref = im[y : y + s, x : x + s], ref[y : y + s, x : x + s]
        yield (
            to_tensor([resize_stretched(im, size)]).numpy(),
            to_tensor([resize_stretched(ref, size)]).numpy(),
        )


def quantize_onnx(
    fp32_export: str | Path,
    output: str | Path,
    batches: Iterable[np.ndarray] | Iterable[tuple[np.ndarray, np.ndarray]],
) -> Path:
    """Statically quantize ``fp32_export`` (QDQ, :data:`QUANTIZED_OPS`) calibrated on
    ``batches`` (arrays; for a Siamese export, (image, reference) pairs of arrays); the fp32
    file's ``loupe_*`` metadata is carried over. Written atomically."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from .onnx_export import SIAMESE_INPUTS

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            if batch is None:
                return None
            if isinstance(batch, tuple):  # a Siamese export's two inputs
                return dict(zip(SIAMESE_INPUTS, batch, strict=True))
            return {"images": batch}

    fp32_export, output = Path(fp32_export), Path(output)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        quantize_static(
            str(fp32_export),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
        source = onnx.load(str(fp32_export), load_external_data=False)
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for p in source.metadata_props:
            proto.metadata_props.add(key=p.key, value=p.value)
        proto.metadata_props.add(key="loupe_precision", value="int8")
        onnx.save(proto, str(tmp))
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def _ms_per_slice(detector: Any, size: int, repeats: int = 7) -> float:
    batch = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    inputs = (batch, batch) if detector.siamese else (batch,)
    detector.raw(*inputs)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.raw(*inputs)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def check_int8(
    artifact: str | Path,
    coco_json: str | Path,
    *,
    image_root: str | Path | None = None,
    calibration_json: str | Path | None = None,
    calibration_root: str | Path | None = None,
    slice_size: int | None = None,
    overlap: float = 0.25,
    tolerance: float = INT8_TOLERANCE,
    min_speedup: float = INT8_MIN_SPEEDUP,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    reference_root: str | Path | None = None,
    calibration_reference_root: str | Path | None = None,
) -> dict[str, Any]:
    """Quantize the artifact's ONNX export, score fp32 and INT8 on the images of ``coco_json``
    (sliced at ``slice_size`` as the detector predicts; whole images when None) and keep the
    INT8 file beside the export only when it passes. Calibration slices come from the images
    of ``calibration_json`` (the training split; default: ``coco_json``'s).

    Returns the figures: ``passed``, ``reason``, ``map50_fp32``, ``map50_int8``, ``map_fp32``,
    ``map_int8``, ``ms_fp32``, ``ms_int8`` (one slice at the input size, median), ``images``,
    ``tolerance``. Raises :class:`DetectionError` when there is nothing to judge on.

    A Siamese artifact is calibrated on (image, reference) slices cut at the same windows and
    judged with each image's reference; the references are read from ``reference_root`` and
    ``calibration_reference_root`` (defaults: the images' roots), as :func:`evaluate` does.
    """
    from .evaluation import evaluate
    from .onnx_export import OnnxDetector
    from .runtimes import ensure_onnx_export

    say = progress or (lambda _message: None)
    artifact = Path(artifact)
    fp32_path = ensure_onnx_export(artifact)
    fp32 = OnnxDetector(fp32_path, threads=threads)
    size = fp32.eval_size
    siamese = fp32.siamese
    judged = CocoDetectionDataset(
        coco_json, image_root, references=siamese, reference_root=reference_root
    )
    if not any(len(judged.targets(i)[0]) for i in range(len(judged))):
        raise DetectionError("INT8 check: the held-out images have no boxes to judge on")
    calibration = (
        CocoDetectionDataset(
            calibration_json,
            calibration_root,
            references=siamese,
            reference_root=calibration_reference_root,
        )
        if calibration_json is not None
        else judged
    )
    say(f"Calibrating INT8 on {CALIBRATION_SLICES} slices")
    picks = np.linspace(0, len(calibration) - 1, min(len(calibration), 16)).round().astype(int)
    samples = (calibration[int(i)] for i in dict.fromkeys(picks.tolist()))
    if siamese:
        batches: Iterator[Any] = calibration_pairs(
            ((s.image, s.reference) for s in samples), size, slice_size
        )
    else:
        batches = calibration_slices((s.image for s in samples), size, slice_size)
    out = int8_export_path(fp32_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.check")
    try:
        quantize_onnx(fp32_path, tmp, batches)
        int8 = OnnxDetector(tmp, threads=threads)
        sliced = {"slice_size": slice_size or max(size, _largest_side(judged)), "overlap": overlap}
        say(f"Scoring fp32 and INT8 on {len(judged)} held-out images")
        roots = {"image_root": image_root, "reference_root": reference_root}
        r32 = evaluate(fp32, coco_json, **roots, **sliced)
        r8 = evaluate(int8, coco_json, **roots, **sliced)
        ms32, ms8 = _ms_per_slice(fp32, size), _ms_per_slice(int8, size)
        figures = {
            "map50_fp32": round(r32.map50, 4),
            "map50_int8": round(r8.map50, 4),
            "map_fp32": round(r32.map, 4),
            "map_int8": round(r8.map, 4),
            "ms_fp32": round(ms32, 1),
            "ms_int8": round(ms8, 1),
            "images": len(judged),
            "tolerance": tolerance,
        }
        if r32.map50 <= 0:
            reason = (
                f"nothing to compare: the fp32 network finds none of the {len(judged)} held-out "
                "images' boxes (mAP50 0)"
            )
        elif r8.map50 < r32.map50 - tolerance:
            reason = (
                f"INT8 loses {r32.map50 - r8.map50:.3f} mAP50 on {len(judged)} held-out images "
                f"({r8.map50:.3f} against {r32.map50:.3f}); more than {tolerance}"
            )
        elif ms8 * min_speedup > ms32:
            reason = f"INT8 is not faster here ({ms8:.0f} against {ms32:.0f} ms per slice)"
        else:
            reason = (
                f"INT8 mAP50 {r8.map50:.3f} against fp32 {r32.map50:.3f} on {len(judged)} "
                f"held-out images, {ms32 / ms8:.1f}x faster ({ms8:.0f} against {ms32:.0f} ms "
                "per slice)"
            )
            _stamp(tmp, artifact_sha256(artifact), figures)
            os.replace(tmp, out)
            return {"passed": True, "reason": reason, **figures}
        logger.info("INT8 for %s not kept: %s", artifact, reason)
        out.unlink(missing_ok=True)  # an older pass of another artifact never stays
        return {"passed": False, "reason": reason, **figures}
    finally:
        tmp.unlink(missing_ok=True)


def _largest_side(ds: CocoDetectionDataset) -> int:
    return max(max(int(im["width"]), int(im["height"])) for im in ds.images)


def _stamp(path: Path, sha: str, figures: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in (("loupe_int8_artifact_sha256", sha), ("loupe_int8_check", figures)):
        proto.metadata_props.add(
            key=key, value=value if isinstance(value, str) else json.dumps(value)
        )
    onnx.save(proto, str(path))


def checked_int8_export(fp32_export: str | Path, sha: str) -> Path | None:
    """The INT8 copy of ``fp32_export`` when one exists and passed its check for the artifact
    of sha256 ``sha``; None otherwise."""
    from .onnx_export import read_export_metadata

    path = int8_export_path(fp32_export)
    if not path.is_file():
        return None
    meta = read_export_metadata(path)
    if meta.get("loupe_int8_artifact_sha256") != sha or "loupe_int8_check" not in meta:
        return None
    return path


__all__ = [
    "INT8_TOLERANCE",
    "QUANTIZED_OPS",
    "calibration_pairs",
    "calibration_slices",
    "check_int8",
    "checked_int8_export",
    "int8_export_path",
    "quantize_onnx",
]
