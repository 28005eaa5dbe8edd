"""Job kinds 'anomaly_train' and 'anomaly_inspect': glue between the app and workers.anomaly."""

from __future__ import annotations

import io
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from inspection import imaging, storage
from inspection.models import Image, ImageHeatmap, InspectionRun, ModelVersion
from inspection.services.inspections import model_version_make_active
from workers.tasks.runner import JobCancelled, JobContext, JobError, job_task


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


@job_task("anomaly_train")
def train_anomaly_model(job, ctx: JobContext) -> dict:
    anomaly = _engine()
    version = ModelVersion.objects.select_related("project").get(pk=job.payload["model_version"])
    try:
        images = list(Image.objects.filter(pk__in=version.image_ids).order_by("id"))
        if len(images) < 2:
            raise JobError("Fewer than 2 of the training images still exist; nothing to train on.")
        params = {k: v for k, v in version.params.items() if k != "model"}
        config = anomaly.recommended_config(**{"model": version.architecture, **params})
        with tempfile.TemporaryDirectory(prefix="loupe-train-") as tmp, ExitStack() as stack:
            paths = [
                imaging.upright_copy(
                    stack.enter_context(storage.local_copy(i.file.name)), i.orientation, tmp
                )
                for i in images
            ]
            ctx.progress(
                0.02, f"Training {version.architecture} on {len(paths)} normal images", force=True
            )
            try:
                result = anomaly.train(
                    config, paths, Path(tmp) / "model", progress=_progress(ctx, 0.02, 0.9)
                )
            except anomaly.Cancelled:
                raise JobCancelled() from None
            except anomaly.AnomalyError as exc:
                raise JobError(str(exc)) from None
            prefix = f"projects/{version.project_id}/models/{uuid.uuid4()}"
            for path in sorted(Path(result.artifact_path).parent.iterdir()):
                if path.is_file():
                    with open(path, "rb") as fh:
                        default_storage.save(f"{prefix}/{path.name}", fh)
        version.artifact = f"{prefix}/{Path(result.artifact_path).name}"
        version.metrics = {k: v for k, v in result.to_dict().items() if k != "artifact_path"}
        version.status = ModelVersion.Status.READY
        version.save(update_fields=["artifact", "metrics", "status"])
    except BaseException:
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
        raise
    if job.payload.get("activate", True):
        # the role was checked when training was asked for
        model_version_make_active(model_version=version)
    return {
        "model_version": version.pk,
        "number": version.number,
        "metrics": version.metrics,
        "message": f"{version.architecture} v{version.number} trained on {len(version.image_ids)} images",
    }


@job_task("anomaly_inspect")
def run_inspection(job, ctx: JobContext) -> dict:
    anomaly = _engine()
    run = InspectionRun.objects.select_related("model_version", "project").get(
        pk=job.payload["run"]
    )
    version = run.model_version
    if version is None or not version.artifact:
        raise JobError("The model version of this run was deleted; start a new run.")
    results: dict[str, dict] = {}
    made = failed = 0
    with storage.local_copy(version.artifact) as artifact:
        try:
            model = anomaly.load_model(artifact)
        except anomaly.AnomalyError as exc:
            raise JobError(f"The model could not be loaded: {exc}") from None
        total = max(len(run.image_ids), 1)
        for index, image_id in enumerate(run.image_ids):
            image = Image.objects.filter(pk=image_id).first()
            if image is None:
                results[str(image_id)] = {"error": "the image was deleted before it was inspected"}
                failed += 1
                continue
            ctx.progress(index / total, f"{image.original_name} ({index + 1}/{total})", force=True)
            try:
                outcome = _inspect_one(ctx, run, version, model, image, index / total, 1 / total)
            except (anomaly.Cancelled, JobCancelled):
                InspectionRun.objects.filter(pk=run.pk).update(results=results)
                raise JobCancelled() from None
            except anomaly.AnomalyError as exc:
                outcome = {"error": str(exc)}
            except Exception as exc:  # one image fails alone (deleted meanwhile, file gone...)
                if not Image.objects.filter(pk=image_id).exists():
                    outcome = {"error": "the image was deleted while it was inspected"}
                else:
                    outcome = {"error": f"{type(exc).__name__}: {exc}"}
            results[str(image_id)] = outcome
            if "error" in outcome:
                failed += 1
            else:
                made += outcome["suggestions"]
            if index % 20 == 19:  # partial results survive a crash or a cancel
                InspectionRun.objects.filter(pk=run.pk).update(results=results)
    InspectionRun.objects.filter(pk=run.pk).update(results=results)
    if failed and failed == len(run.image_ids):
        raise JobError(
            "No image could be inspected: "
            + "; ".join(r["error"] for r in list(results.values())[:3])
        )
    return {
        "run": run.pk,
        "images": len(run.image_ids) - failed,
        "failed": failed,
        "suggestions": made,
        "message": f"{len(run.image_ids) - failed} image(s) inspected, {made} suggestion(s)"
        + (f", {failed} failed" if failed else ""),
    }


def _inspect_one(ctx, run, version, model, image, start: float, span: float) -> dict:
    """Heat-map one image, store its heatmap and suggestions; the per-image result."""
    from annotations.review import image_update_status, suggestions_store

    anomaly = _engine()
    with storage.local_copy(image.file.name) as path, tempfile.TemporaryDirectory() as tmp:
        upright = imaging.upright_copy(path, image.orientation, tmp)
        prediction = anomaly.predict(model, upright, progress=_progress(ctx, start, span))
    buf = io.BytesIO()
    from PIL import Image as PILImage

    PILImage.fromarray(prediction.heatmap).save(buf, format="PNG", optimize=True)
    name = default_storage.save(
        f"{image.derived_prefix}/heatmaps/run-{run.pk}.png", ContentFile(buf.getvalue())
    )
    with transaction.atomic():  # a savepoint: an image deleted meanwhile fails alone
        ImageHeatmap.objects.create(
            image=image,
            run=run,
            path=name,
            score=prediction.image_score,
            label=f"{version.architecture} v{version.number}",
        )
        stored = suggestions_store(
            image=image, run=run, model_version=version, regions=prediction.regions
        )
        image_update_status(image=image)
    return {
        "score": round(prediction.image_score, 4),
        "anomalous": bool(prediction.is_anomalous),
        "regions": len(prediction.regions),
        "suggestions": len(stored),
    }
