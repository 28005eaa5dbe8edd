"""Job kinds 'change_calibrate' and 'change_inspect': the training-free change detector.

An image and its aligned reference go through frozen ImageNet features (workers/change); the
calibration, fitted on the project's pairs that are normal or labelled (labels masked out),
turns the raw scores into the anomaly convention (0.5 = threshold), so a change run makes
heatmaps and suggestions exactly like an inspection run: same project settings (threshold,
minimum area, suggestions per image), same storage (``anomaly.store_prediction``), and the
active detector classifies the regions when there is one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotations.models import Annotation
from inspection.models import Image, InspectionRun, ModelVersion
from inspection.services.inspections import model_version_folder, model_version_make_active
from inspection.services.projects import with_inspection_defaults
from workers.tasks.anomaly import store_prediction
from workers.tasks.detection import active_detector
from workers.tasks.references import image_pixels
from workers.tasks.regions import RegistrationRefused, RunRegions
from workers.tasks.runner import JobContext, JobError, job_task

logger = logging.getLogger(__name__)

_ENCODER = None  # one per worker process: the network is loaded once
#: How far (image pixels) the change map still sees a highlight that the specular mask covers:
#: the Lite0 levels of the map mix a neighbourhood of about this much (a 20 px glint on a
#: 256 px part left a rim scored 0.75 with one map cell of margin, none with this).
SPECULAR_REACH_PX = 12


def _encoder():
    global _ENCODER
    if _ENCODER is None:
        from workers.change.heatmap import ChangeEncoder

        _ENCODER = ChangeEncoder()
    return _ENCODER


def _raw_map(
    image: Image, work: Path, pixel_weight: float, specular: tuple[float, float] | None = None
) -> tuple[np.ndarray, tuple[int, int]] | tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Raw change scores of ``image`` against its aligned reference, and the image's size;
    with ``specular`` (``(v_min, s_max)``, the project's specular mask), also where either
    picture has a highlight, on the map's grid, grown by SPECULAR_REACH_PX (the features see a
    highlight further than an inspection's one cell of margin)."""
    from workers.change.align import Alignment, warp_reference
    from workers.change.heatmap import change_heatmap

    alignment = Alignment.from_dict(image.alignment)
    pixels = image_pixels(image, work)
    reference = image_pixels(image.reference, work)
    if (pixels.ndim == 3) != (reference.ndim == 3):  # one grey, one colour: compare in colour
        pixels = pixels if pixels.ndim == 3 else cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
        reference = (
            reference if reference.ndim == 3 else cv2.cvtColor(reference, cv2.COLOR_GRAY2RGB)
        )
    size = pixels.shape[:2]
    warped, valid = warp_reference(reference, alignment, size)
    raw = change_heatmap(_encoder(), pixels, warped, valid, pixel_weight=pixel_weight)
    if specular is None:
        return raw, size
    from workers.anomaly.image_io import specular_mask

    # a highlight on the tested part, or one on the reference where the part shows its surface
    shine = specular_mask(pixels, *specular) | (specular_mask(warped, *specular) & valid)
    small = cv2.resize(shine.astype(np.uint8), raw.shape[::-1], interpolation=cv2.INTER_AREA)
    # the features of the pair differ around a highlight as far as they see (a few cells)
    reach = 2 * max(1, round(SPECULAR_REACH_PX * raw.shape[0] / size[0])) + 1
    grown = cv2.dilate((small > 0).astype(np.uint8), np.ones((reach, reach), np.uint8))
    return raw, size, grown > 0


def _label_mask(image: Image, size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray | None:
    """True where the image (``size`` pixels) has a label, on the raw map's grid (``shape``
    cells: a 20 MP image's mask would be 20 MB per pair); None without labels."""
    geometries = list(Annotation.objects.filter(image=image).values_list("geometry", flat=True))
    if not geometries:
        return None
    sy, sx = shape[0] / size[0], shape[1] / size[1]
    mask = np.zeros(shape, np.uint8)
    for g in geometries:
        if g.get("type") == "box":
            x0, y0 = int(g["x"] * sx), int(g["y"] * sy)
            x1, y1 = int(np.ceil((g["x"] + g["w"]) * sx)), int(np.ceil((g["y"] + g["h"]) * sy))
            mask[max(y0, 0) : y1, max(x0, 0) : x1] = 1
        elif g.get("points"):
            points = np.array(g["points"], np.float64) * [sx, sy]
            cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


#: Labelled places grow by this much before they are left out of the calibration (image
#: pixels): a label drawn tight around a defect leaves its blurred edge outside.
LABEL_MARGIN_PX = 16


@job_task("change_calibrate", queue="gpu", label="Change detector calibration")
def calibrate_change_model(job, ctx: JobContext) -> dict:
    from workers.change.heatmap import DEFAULT_QUANTILE, CalibrationSamples

    version = ModelVersion.objects.select_related("project").get(pk=job.payload["model_version"])
    started = time.monotonic()
    try:
        pixel_weight = float(version.params.get("pixel_weight", 0.0))
        quantile = float(version.params.get("quantile", DEFAULT_QUANTILE))
        images = list(
            Image.objects.filter(pk__in=version.image_ids, alignment__status="ok")
            .select_related("reference")
            .order_by("id")
        )
        # each pair's map is sampled and dropped at once: hundreds of 20 MP pairs would
        # otherwise be held together (about 5 MB of map each)
        samples = CalibrationSamples(len(images))
        used, skipped, labelled = [], [], 0
        with tempfile.TemporaryDirectory(prefix="loupe-change-") as tmp:
            for n, image in enumerate(images):
                ctx.progress(0.9 * n / max(len(images), 1), f"Comparing {image.original_name}")
                if image.reference is None:
                    continue
                try:
                    raw, size = _raw_map(image, Path(tempfile.mkdtemp(dir=tmp)), pixel_weight)
                except Exception as exc:  # noqa: BLE001 - one unreadable pair fails alone
                    skipped.append(f"{image.original_name}: {exc}")
                    continue
                if not used:  # labelled places grow by LABEL_MARGIN_PX image pixels
                    cell = max(size[0] / raw.shape[0], 1.0)  # image pixels per map cell
                    samples.margin = max(1, round(LABEL_MARGIN_PX / cell))
                mask = _label_mask(image, size, raw.shape)
                samples.add(raw, mask)
                used.append(image.pk)
                labelled += mask is not None
                del raw
        if not used:
            raise JobError(
                "No pair could be compared: "
                + ("; ".join(skipped[:3]) if skipped else "none of them is aligned any more.")
            )
        try:
            calibration = samples.fit(quantile)
        except ValueError as exc:  # e.g. every compared place is labelled
            raise JobError(f"The calibration found nothing to learn from: {exc}.") from None
        folder = model_version_folder(version)
        artifact = default_storage.save(
            f"{folder}/calibration.json",
            ContentFile(
                json.dumps(
                    {
                        "calibration": calibration.to_dict(),
                        "pixel_weight": pixel_weight,
                        "architecture": version.architecture,
                    }
                ).encode()
            ),
        )
        version.artifact = artifact
        version.image_ids = used
        version.metrics = {
            "pairs": len(used),
            "pairs_labelled": labelled,
            "skipped": skipped[:20],
            "threshold": calibration.threshold,
            "typical": calibration.lo,
            "quantile": calibration.quantile,
            "seconds": round(time.monotonic() - started, 1),
        }
        version.status = ModelVersion.Status.READY
        version.save(update_fields=["artifact", "image_ids", "metrics", "status"])
    except BaseException:
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
        raise
    if job.payload.get("activate", True):
        model_version_make_active(model_version=version)
    return {
        "model_version": version.pk,
        "pairs": len(used),
        "message": f"calibrated on {len(used)} pair(s)"
        + (f", {len(skipped)} could not be read" if skipped else ""),
    }


@dataclass
class ChangePrediction:
    """One image's change map, in the shape ``anomaly.store_prediction`` stores."""

    heatmap: np.ndarray  # uint8, 128 = the threshold
    regions: list
    image_score: float
    is_anomalous: bool
    params: dict = field(default_factory=dict)
    score_map: np.ndarray | None = None  # the calibrated float map behind ``heatmap``
    size: tuple[int, int] = (0, 0)  # the image's (height, width)


def predict_change(image: Image, work: Path, artifact: dict, settings: dict) -> ChangePrediction:
    """Compare ``image`` with its aligned reference: calibrated map -> regions (project
    settings: threshold, minimum area, suggestions per image)."""
    from workers.anomaly.regions import RegionConfig, extract_regions
    from workers.change.heatmap import ChangeCalibration

    s = with_inspection_defaults(settings)
    calibration = ChangeCalibration.from_dict(artifact["calibration"])
    pixel_weight = float(artifact.get("pixel_weight", 0.0))
    if s["specular_mask"]:  # highlights are never suggested, as in an inspection
        specular = (float(s["specular_v_min"]), float(s["specular_s_max"]))
        raw, size, shine = _raw_map(image, work, pixel_weight, specular)
        raw = np.where(shine, 0.0, raw).astype(raw.dtype)
    else:
        raw, size = _raw_map(image, work, pixel_weight)
    calibrated = calibration.apply(raw)
    regions = extract_regions(
        calibrated,
        size,
        RegionConfig(
            threshold=float(s["threshold"]),
            min_area=float(s["min_area"]),
            top_k=int(s["max_regions"]),
        ),
    )
    score = float(calibrated.max()) if calibrated.size else 0.0
    display = np.clip(calibrated * 255.0 + 0.5, 0, 255).astype(np.uint8)  # 0.5 -> 128
    return ChangePrediction(
        display, regions, score, score >= float(s["threshold"]), score_map=calibrated, size=size
    )


def with_regions(rois: RunRegions, image: Image, work: Path, prediction, params: dict):
    """``prediction`` with the run's regions of interest applied as an anomaly run applies them
    (excluded regions masked, the outside kept or not, suggestions tagged with their region;
    registered onto the regions' reference, RegistrationRefused when the image cannot be)."""
    from workers import anomaly
    from workers.tasks.anomaly import predict_config

    config = predict_config(params)
    applied = rois.apply(
        image,
        None,
        anomaly.Prediction(
            image_path=image.original_name,
            image_size=prediction.size,
            image_score=prediction.image_score,
            is_anomalous=prediction.is_anomalous,
            heatmap=prediction.heatmap,
            regions=prediction.regions,
            model_id="change",
            model_kind="change",
            params=prediction.params,
            timings={},
            score_map=prediction.score_map,
        ),
        config,
        pixels=lambda: image_pixels(image, work),
    )
    stitched = applied.score_map
    score = float(stitched.max()) if stitched.size else 0.0
    return ChangePrediction(
        np.clip(stitched * 255.0 + 0.5, 0, 255).astype(np.uint8),
        applied.regions,
        score,
        score >= config.regions.threshold,
        params=applied.params,
        score_map=stitched,
        size=prediction.size,
    )


@job_task("change_inspect", queue="gpu", label="Change run")
def run_change(job, ctx: JobContext) -> dict:
    run = InspectionRun.objects.select_related("model_version", "project").get(
        pk=job.payload["run"]
    )
    version = run.model_version
    if version is None or not version.artifact:
        raise JobError("The change detector of this run was deleted; start a new run.")
    with default_storage.open(version.artifact, "rb") as fh:
        artifact = json.loads(fh.read())
    ids = list(dict.fromkeys(run.image_ids))
    results: dict[str, dict] = {}
    made = failed = 0
    with (
        tempfile.TemporaryDirectory(prefix="loupe-change-") as tmp,
        active_detector(run.project) as detect,
        contextlib.ExitStack() as stack,
    ):
        rois = None
        if run.params.get("regions"):  # the project's regions of interest when it started
            rois = RunRegions(
                run.params["regions"],
                run.params.get("outside_regions", ""),
                stack,
                Path(tempfile.mkdtemp(dir=tmp)),
                models=False,
            )
        try:
            for n, image_id in enumerate(ids):
                image = Image.objects.select_related("reference").filter(pk=image_id).first()
                if image is None:
                    outcome = {"error": "the image was deleted before it was compared"}
                elif image.reference is None or (image.alignment or {}).get("status") != "ok":
                    outcome = {"error": f"{image.original_name}: no aligned reference any more"}
                else:
                    ctx.progress(
                        n / max(len(ids), 1),
                        f"{image.original_name} ({n + 1}/{len(ids)})",
                        force=True,
                    )
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    try:
                        prediction = predict_change(image, work, artifact, run.params)
                        path = work / "image.png"  # what the detector reads, upright
                        if rois is not None:
                            prediction = with_regions(rois, image, work, prediction, run.params)
                        if detect is not None:
                            cv2.imwrite(str(path), _bgr(image_pixels(image, work)))
                        outcome = store_prediction(
                            run, version, image, prediction, str(path), detect
                        )
                    except RegistrationRefused as exc:
                        outcome = {"error": str(exc)}
                    except JobError:  # the regions' reference cannot be read: the run stops
                        raise
                    except Exception as exc:  # noqa: BLE001 - one image fails alone
                        logger.exception("change run: image %s failed", image_id)
                        outcome = {"error": f"{image.original_name}: {exc}"}
                results[str(image_id)] = outcome
                if "error" in outcome:
                    failed += 1
                else:
                    made += outcome["suggestions"]
        finally:  # partial results survive a crash or a cancel
            InspectionRun.objects.filter(pk=run.pk).update(results=results)
    if ids and failed == len(ids):
        raise JobError(
            "No image could be compared: "
            + "; ".join(r["error"] for r in list(results.values())[:3])
        )
    return {
        "run": run.pk,
        "images": len(ids) - failed,
        "failed": failed,
        "suggestions": made,
        "message": f"{len(ids) - failed} image(s) compared with their reference, {made} suggestion(s)"
        + (f", {failed} failed" if failed else "")
        + "".join(f"; {note}" for note in (rois.notes if rois else [])),
    }


def _bgr(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
