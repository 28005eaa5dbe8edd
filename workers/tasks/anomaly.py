"""Job kinds 'anomaly_train' and 'anomaly_inspect': glue between the app and workers.anomaly."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from annotations.services.image_state import image_detector_checked, image_update_status
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection import imaging, storage
from inspection.models import Image, ImageHeatmap, InspectionRun, ModelVersion
from inspection.services.inspections import model_version_make_active
from inspection.services.regions import region_model_ready
from workers.tasks.detection import active_detector
from workers.tasks.regions import RegistrationRefused, RunRegions, training_crops
from workers.tasks.runner import JobCancelled, JobContext, JobError, job_task

logger = logging.getLogger(__name__)


def _engine():
    # imported here so that the web process, which imports task modules to send jobs, never
    # loads torch
    from workers import anomaly

    return anomaly


def _progress(ctx: JobContext, start: float, span: float):
    anomaly = _engine()

    def report(fraction: float, message: str) -> None:
        try:
            ctx.progress(start + span * fraction, message)
        except JobCancelled:
            raise anomaly.Cancelled() from None

    return report


@job_task("anomaly_train", queue="gpu", label="Anomaly model training")
def train_anomaly_model(job, ctx: JobContext) -> dict:
    version = ModelVersion.objects.select_related("project").get(pk=job.payload["model_version"])
    try:
        images = list(Image.objects.filter(pk__in=version.image_ids).order_by("id"))
        if len(images) < 2:
            raise JobError("Fewer than 2 of the training images still exist; nothing to train on.")
        region = None
        with tempfile.TemporaryDirectory(prefix="loupe-train-") as tmp:
            paths = upright_copies(images, Path(tmp))
            if version.params.get("region"):  # a region's model learns its registered crops
                ctx.progress(0.01, "Registering the normal images onto the reference", force=True)
                paths, region = training_crops(version, images, paths, Path(tmp) / "crops")
            train_version(version, paths, ctx, 0.02, 0.98)
        if region is not None:
            version.metrics = {**version.metrics, "region": region}
            version.save(update_fields=["metrics"])
    except BaseException:
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
        raise
    if job.payload.get("activate", True):
        # the role was checked when training was asked for
        if version.params.get("region"):
            region_model_ready(model_version=version)
        else:
            model_version_make_active(model_version=version)
    return {
        "model_version": version.pk,
        "number": version.number,
        "metrics": version.metrics,
        "message": f"{version.architecture} v{version.number} trained on "
        + (
            f"the region {region['name']} of {region['trained_on']} images"
            + (f" ({len(region['skipped'])} not registered)" if region["skipped"] else "")
            if region is not None
            else f"{len(version.image_ids)} images"
        ),
    }


def upright_copies(images: list[Image], folder: Path) -> list[Path]:
    """Local copies of the images as people see them (EXIF orientation applied), in order."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        imaging.upright_copy(storage.fetched(i.file.name, folder), i.orientation, str(folder))
        for i in images
    ]


def train_version(
    version: ModelVersion, paths: list[Path], ctx: JobContext, start: float, span: float
) -> None:
    """Train ``version`` on ``paths`` (its normal images, upright), export it for CPU workers,
    store it and mark it ready; progress from ``start`` over ``span`` of the job. Raises
    :class:`JobError` when the engine refuses, :class:`JobCancelled` when cancelled."""
    anomaly = _engine()
    params = {k: v for k, v in version.params.items() if k not in ("model", "region")}
    if "multiscale" in params:  # a JSON list in the version's params
        params["multiscale"] = tuple(params["multiscale"])
    config = anomaly.recommended_config(**{"model": version.architecture, **params})
    how = f"tiles at scale {config.scale:g}" if config.scale else "whole images"
    ctx.progress(
        start,
        f"Training {version.architecture} on {len(paths)} normal images ({how})",
        force=True,
    )
    with tempfile.TemporaryDirectory(prefix="loupe-model-") as tmp:
        try:
            result = anomaly.train(
                config, paths, Path(tmp) / "model", progress=_progress(ctx, start, span * 0.9)
            )
        except anomaly.Cancelled:
            raise JobCancelled() from None
        except anomaly.AnomalyError as exc:
            raise JobError(str(exc)) from None
        model_dir = Path(result.artifact_path).parent
        ctx.progress(
            start + span * 0.93, "Exporting the model for CPU inference (OpenVINO)", force=True
        )
        exports = _export_for_cpu(model_dir, version.architecture, paths)
        prefix = f"projects/{version.project_id}/models/{uuid.uuid4()}"
        storage.save_tree(model_dir, prefix)  # coarse/ and the exports included
    version.artifact = f"{prefix}/{Path(result.artifact_path).name}"
    version.metrics = {
        **{k: v for k, v in result.to_dict().items() if k != "artifact_path"},
        "exports": exports,
    }
    version.status = ModelVersion.Status.READY
    version.save(update_fields=["artifact", "metrics", "status"])


def _export_for_cpu(model_dir: Path, architecture: str, normal_images: list[Path]) -> dict:
    """ONNX (compiled by OpenVINO on CPU workers) and, for EfficientAD, the verified INT8 IR.

    Never fatal: without an export the worker runs the model on torch, only slower.
    """
    from workers.anomaly.models import get as model_spec

    anomaly = _engine()
    done: dict = {}
    try:
        anomaly.export_onnx(model_dir)
        done["onnx"] = True
        # an INT8 export is refused for PaDiM/PatchCore (docs/anomaly.md)
        int8 = model_spec(architecture).int8_by_default
    except Exception as exc:  # noqa: BLE001 - recorded on the model version, torch still works
        logger.exception("ONNX export of %s failed", model_dir)
        return {"onnx": False, "error": _short(exc, model_dir)}
    if int8:
        try:
            figures = anomaly.export_openvino_int8(model_dir, normal_images)
            done["int8"] = {k: v for k, v in figures.items() if k != "path"}
        except Exception as exc:  # noqa: BLE001 - same: the fp32 export still runs
            logger.warning("INT8 export of %s not made: %s", model_dir, exc)
            done["int8_error"] = _short(exc, model_dir)
    return done


def _short(exc: BaseException, model_dir: Path) -> str:
    """An error for people: its type and message, without the worker's temporary paths."""
    return f"{type(exc).__name__}: {exc}".replace(str(model_dir), "model")[:300]


@job_task("anomaly_inspect", queue="gpu", label="Inspection run")
def run_inspection(job, ctx: JobContext) -> dict:
    anomaly = _engine()
    run = InspectionRun.objects.select_related("model_version", "project").get(
        pk=job.payload["run"]
    )
    version = run.model_version
    if version is None or not version.artifact:
        raise JobError("The model version of this run was deleted; start a new run.")
    results: dict[str, dict] = {}
    made = failed = resized = 0
    ids = list(dict.fromkeys(run.image_ids))  # an id listed twice is inspected once
    total = max(len(ids), 1)
    artifact_name = Path(version.artifact).name
    with (
        storage.local_tree(str(Path(version.artifact).parent)) as model_dir,
        active_detector(run.project) as detect,  # classifies the regions, when there is one
        ExitStack() as stack,
    ):
        try:
            model = anomaly.load_model(model_dir / artifact_name)
        except anomaly.AnomalyError as exc:
            raise JobError(f"The model could not be loaded: {exc}") from None
        rois = None
        if run.params.get("regions"):  # the project's regions of interest when it started
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loupe-roi-")))
            rois = RunRegions(
                run.params["regions"], run.params.get("outside_regions", ""), stack, workdir
            )
        chunk_size = INSPECT_CHUNK
        for start in range(0, len(ids), chunk_size):
            chunk = ids[start : start + chunk_size]
            try:
                with contextlib.closing(
                    _inspect_chunk(ctx, run, version, model, chunk, start, total, detect, rois)
                ) as outcomes:
                    for image_id, outcome in outcomes:
                        results[str(image_id)] = outcome
                        if "error" in outcome:
                            failed += 1
                        else:
                            made += outcome["suggestions"]
                            resized += "resized" in outcome
            except (anomaly.Cancelled, JobCancelled):
                raise JobCancelled() from None
            finally:  # partial results survive a crash, a cancel or an unexpected error
                InspectionRun.objects.filter(pk=run.pk).update(results=results)
    if failed and failed == len(ids):
        raise JobError(
            "No image could be inspected: "
            + "; ".join(r["error"] for r in list(results.values())[:3])
        )
    return {
        "run": run.pk,
        "images": len(ids) - failed,
        "failed": failed,
        "suggestions": made,
        "resized": resized,
        "message": f"{len(ids) - failed} image(s) inspected, {made} suggestion(s)"
        + (f", {failed} failed" if failed else "")
        + (f", {resized} resized to the normals' size" if resized else "")
        + "".join(f"; {note}" for note in (rois.notes if rois else [])),
    }


# Images fetched, turned upright and handed to predict_many together: the engine reads the next
# while the network runs, and a whole-image model takes them as one batch.
INSPECT_CHUNK = 8


def _inspect_chunk(
    ctx, run, version, model, chunk: list[int], start: int, total: int, detect, rois=None
):
    """Yield ``(image_id, outcome)`` for each id of ``chunk``; one image fails alone."""
    anomaly = _engine()
    images = Image.objects.in_bulk(chunk)
    with tempfile.TemporaryDirectory(prefix="loupe-inspect-") as tmp, ExitStack() as stack:
        ready: list[tuple[Image, Path]] = []
        for image_id in chunk:
            image = images.get(image_id)
            if image is None:
                yield image_id, {"error": "the image was deleted before it was inspected"}
                continue
            try:
                path = stack.enter_context(storage.local_copy(image.file.name))
                folder = tempfile.mkdtemp(dir=tmp)
                ready.append((image, imaging.upright_copy(path, image.orientation, folder)))
            except Exception as exc:  # noqa: BLE001 - a missing or unreadable file fails alone
                logger.warning("inspection: %s could not be fetched: %s", image.file.name, exc)
                reason = "it is missing" if isinstance(exc, FileNotFoundError) else "it is damaged"
                yield image_id, {"error": f"{image.original_name}: {reason} ({type(exc).__name__})"}
        if not ready:
            return
        first = ready[0][0]
        ctx.progress(start / total, f"{first.original_name} ({start + 1}/{total})", force=True)

        def report(fraction: float, _message: str) -> None:
            done = start + fraction * len(chunk)
            try:
                ctx.progress(done / total, f"{min(int(done) + 1, total)}/{total} images")
            except JobCancelled:
                raise anomaly.Cancelled() from None

        paths = [p for _, p in ready]
        config = predict_config(run.params)
        with contextlib.closing(
            anomaly.predict_many(model, paths, config, progress=report)
        ) as results:
            for (image, _), (path, prediction) in zip(ready, results, strict=True):
                if rois is not None and not isinstance(prediction, anomaly.AnomalyError):
                    try:
                        prediction = rois.apply(image, path, prediction, config)
                    except RegistrationRefused as exc:
                        yield image.pk, {"error": str(exc)}
                        continue
                    except anomaly.AnomalyError as exc:
                        prediction = exc
                own = rois.model_versions() if rois is not None else None
                yield image.pk, _outcome(run, version, image, path, prediction, detect, own)


def predict_config(params: dict):
    """The engine's settings for a run's inspection settings (runs from before there were
    settings have none stored: the defaults)."""
    from inspection.services.projects import with_inspection_defaults

    anomaly = _engine()
    s = with_inspection_defaults(params)
    return anomaly.PredictConfig(
        # a photo far larger (or smaller) than the normals is inspected resized into their
        # size range, at the pixel scale the model learnt; the result says so (below)
        fit_size=True,
        specular_mask=bool(s["specular_mask"]),
        specular_v_min=float(s["specular_v_min"]),
        specular_s_max=float(s["specular_s_max"]),
        regions=anomaly.RegionConfig(
            threshold=float(s["threshold"]),
            min_area=float(s["min_area"]),
            top_k=int(s["max_regions"]),
        ),
    )


def _outcome(run, version, image, path: str, prediction, detect, region_versions=None) -> dict:
    """Store one image's prediction; the per-image result, or the error that stopped it."""
    anomaly = _engine()
    if isinstance(prediction, anomaly.AnomalyError):  # named as the user knows the file
        return {"error": str(prediction).replace(path, image.original_name)}
    try:
        return store_prediction(run, version, image, prediction, path, detect, region_versions)
    except Exception as exc:  # noqa: BLE001 - deleted meanwhile, storage full...
        if not Image.objects.filter(pk=image.pk).exists():
            return {"error": "the image was deleted while it was inspected"}
        logger.exception("inspection: storing the result of image %s failed", image.pk)
        return {"error": f"the result could not be stored ({type(exc).__name__})"}


def _classified(regions, path, detect) -> tuple[list[SuggestionIn], bool]:
    """The regions as suggestions, each with the category of the active detector's box that
    covers it (the seeds' pipeline: heatmap -> candidate regions -> detector's class), and
    whether the detector looked (not without regions, nor when it failed)."""
    items = [SuggestionIn.from_region(r) for r in regions]
    if not items or detect is None:
        return items, False
    try:
        detections = detect(Path(path))
    except Exception:  # noqa: BLE001 - a failing detector leaves the regions unclassified
        logger.exception("inspection: the detector failed on %s", path)
        return items, False
    return [item.classified(detections) for item in items], True


def _by_version(
    suggestions: list[SuggestionIn],
    version: ModelVersion,
    region_versions: dict[int, ModelVersion] | None,
) -> list[tuple[ModelVersion, list[SuggestionIn]]]:
    """The suggestions grouped by the model version that made them: a region's own model's
    (``region_versions``, by region id) for those found in such a region, else the run's
    ``version``. Every version the run used is listed, even with none found on this image (its
    undecided suggestions from other settings are still replaced, as the run's are)."""
    region_versions = region_versions or {}
    groups: dict[int, tuple[ModelVersion, list[SuggestionIn]]] = {version.pk: (version, [])}
    for own in region_versions.values():
        groups.setdefault(own.pk, (own, []))
    for item in suggestions:
        groups[region_versions.get(item.roi, version).pk][1].append(item)
    return list(groups.values())


def store_prediction(run, version, image, prediction, path, detect, region_versions=None) -> dict:
    """Store one image's heatmap and suggestions; the per-image result. ``region_versions``: the
    model version of each region inspected by a model of its own, by region id
    (``RunRegions.model_versions``): the suggestions found there are recorded as that version's
    (the run stays ``run``), the others as ``version``'s."""
    buf = io.BytesIO()
    from PIL import Image as PILImage

    # zlib level 3: a 1024x576 map in 12 ms and 62 KB, against 24 ms and 48 KB at the default 6
    # (`benchmarks/station.py --storage`; a station stores one per frame sent to review);
    # optimize=True made a 900 px heatmap 13 % smaller in 10x the time
    PILImage.fromarray(prediction.heatmap).save(buf, format="PNG", compress_level=3)
    name = default_storage.save(
        f"{image.derived_prefix}/heatmaps/run-{run.pk}.png", ContentFile(buf.getvalue())
    )
    # the detector runs before the transaction: no database lock is held while it computes
    suggestions, looked = _classified(prediction.regions, path, detect)
    with transaction.atomic():  # a savepoint: an image deleted meanwhile fails alone
        ImageHeatmap.objects.create(
            image=image,
            run=run,
            path=name,
            score=prediction.image_score,
            label=f"{version.architecture} v{version.number}",
        )
        stored = []
        for made_by, items in _by_version(suggestions, version, region_versions):
            stored += suggestions_store(
                image=image, run=run, model_version=made_by, suggestions=items
            )
        image_update_status(image=image)
        if looked:
            image_detector_checked(image=image)
    out = {
        "score": round(prediction.image_score, 4),
        "anomalous": bool(prediction.is_anomalous),
        "regions": len(prediction.regions),
        "suggestions": len(stored),
    }
    if looked:  # the active detector looked at the image's regions
        out["detector"] = True
    if any(s.category for s in suggestions):  # per region, in order ('' : not classified)
        out["categories"] = [s.category for s in suggestions]
    if prediction.params.get("resized"):
        out["resized"] = prediction.params["resized"]
    return out
