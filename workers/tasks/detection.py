"""Job kinds 'detection_train' and 'detection_inspect': glue between the app and
workers.detection. A detector trains on a frozen dataset version (its train split; its val
split gives the per-epoch figures) and its sliced predictions become suggestions with categories.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

from django.core.files.storage import default_storage

from annotations.formats.coco import to_coco_dict
from annotations.models import DatasetVersion
from annotations.services.dataset_versions import version_dataset_from_content
from annotations.services.image_state import image_update_status
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection import imaging, storage
from inspection.models import Image, InspectionRun, ModelVersion
from inspection.services.inspections import model_version_make_active
from workers.tasks.runner import JobCancelled, JobContext, JobError, job_task

logger = logging.getLogger(__name__)

ARTIFACT = "model.pt"
CHECKPOINT = "checkpoint.pt"


def _library():
    # imported inside job bodies: the web process imports this module to know the job kinds
    from workers import detection

    return detection


def _prepare(version: ModelVersion, dataset: DatasetVersion, folder: Path, stack: ExitStack):
    """COCO files of the version's train and val splits over upright local copies of its images;
    returns (train json, val json or None, images folder, skipped image ids)."""
    ds = version_dataset_from_content(dataset.content)
    images = Image.objects.in_bulk([int(im.key) for im in ds.images])
    names, skipped = {}, []
    (folder / "images").mkdir()
    for im in ds.images:
        image = images.get(int(im.key))
        if image is None or im.split not in ("train", "val"):
            if image is None:
                skipped.append(int(im.key))
            continue
        try:
            src = stack.enter_context(storage.local_copy(image.file.name))
            upright = imaging.upright_copy(src, image.orientation, tempfile.mkdtemp(dir=folder))
        except (OSError, FileNotFoundError):
            skipped.append(image.pk)
            continue
        name = f"{im.key}{Path(upright).suffix.lower()}"
        os.symlink(upright, folder / "images" / name)
        names[im.key] = name
    files = {}
    for split in ("train", "val"):
        part = ds.subset(split)
        part.images = [im for im in part.images if im.key in names]
        keys = {im.key for im in part.images}
        part.shapes = [s for s in part.shapes if s.image_key in keys]
        if part.images:
            files[split] = folder / f"{split}.json"
            files[split].write_text(json.dumps(to_coco_dict(part, file_names=names)))
    if "train" not in files:
        raise JobError("None of the version's train images is stored any more.")
    return files["train"], files.get("val"), folder / "images", skipped


@job_task("detection_train", queue="gpu", label="Detector training")
def train_detector(job, ctx: JobContext) -> dict:
    detection = _library()
    version = ModelVersion.objects.select_related("project").get(pk=job.payload["model_version"])
    p = version.params
    dataset = DatasetVersion.objects.filter(pk=p["dataset_version"]).first()
    if dataset is None:
        _give_up(version, f"projects/{version.project_id}/models/detector-{version.pk}")
        raise JobError(f"Dataset version {p['dataset_number']} no longer exists.")
    prefix = f"projects/{version.project_id}/models/detector-{version.pk}"
    # a job run again after its worker died shows the epochs it had reported so far
    history: list[dict] = list((version.metrics or {}).get("history", []))
    try:
        with tempfile.TemporaryDirectory(prefix="loupe-detector-") as tmp, ExitStack() as stack:
            work = Path(tmp)
            ctx.progress(
                0.0, f"Collecting the images of dataset v{p['dataset_number']}", force=True
            )
            train_json, val_json, image_root, skipped = _prepare(version, dataset, work, stack)
            checkpoint = _checkpoint_path(prefix, work)
            resumed = checkpoint.is_file()

            def report(fraction: float, message: str, metrics: dict | None) -> None:
                try:
                    ctx.progress(0.02 + 0.9 * fraction, message)
                except JobCancelled:
                    raise detection.Cancelled() from None
                if metrics is not None:  # an epoch ended: keep its figures and the checkpoint
                    history[:] = [h for h in history if h["epoch"] < metrics["epoch"]]
                    history.append(metrics)
                    ModelVersion.objects.filter(pk=version.pk).update(
                        metrics={"history": history, "training": True}
                    )
                    _checkpoint_save(prefix, checkpoint)

            ctx.progress(
                0.02,
                ("Resuming" if resumed else "Training")
                + f" {version.architecture} on {len(version.image_ids)} images",
                force=True,
            )
            with open(train_json) as fh:
                num_classes = len(json.load(fh)["categories"])
            result = detection.train(
                train_json,
                work / "model" / ARTIFACT,
                image_root=image_root,
                model_config=detection.model_config_for(
                    p["backbone"], num_classes, eval_size=p["input_size"]
                ),
                train_config=detection.TrainConfig(
                    epochs=p["epochs"],
                    batch_size=p["batch_size"],
                    crop_size=p["input_size"] if p["slice"] else None,
                    train_sizes=detection.train_sizes_around(p["input_size"]),
                    max_iters_per_epoch=p.get("iterations_per_epoch"),
                    seed=p.get("seed", 0),
                ),
                progress=report,
                val_json=val_json,
                val_image_root=image_root if val_json else None,
                eval_slice_size=p["input_size"],
                checkpoint=checkpoint,
            )
            history = result.history
            model_dir = work / "model"
            ctx.progress(0.94, "Exporting the detector for CPU inference (ONNX)", force=True)
            exports = _export(detection, model_dir / ARTIFACT)
            storage.save_tree(model_dir, prefix)
        _checkpoint_delete(prefix)
        last = next((h for h in reversed(history) if "map50" in h), {})
        version.artifact = f"{prefix}/{ARTIFACT}"
        version.metrics = {
            "history": history,
            "map": last.get("map"),
            "map50": last.get("map50"),
            "ap_small": last.get("ap_small"),
            "per_class_ap50": last.get("per_class_ap50", {}),
            "evaluated_on": "val" if val_json else None,
            "epochs": result.epochs,
            "resumed_after_epoch": result.resumed_from_epoch,
            "seconds": round(result.seconds, 1),
            "skipped_images": skipped,
            "exports": exports,
        }
        version.status = ModelVersion.Status.READY
        version.save(update_fields=["artifact", "metrics", "status"])
    except detection.Cancelled:
        _give_up(version, prefix)
        raise JobCancelled() from None
    except detection.DetectionError as exc:
        _give_up(version, prefix)
        raise JobError(str(exc)) from None
    except BaseException:
        # cancelled, or failed; a worker that dies runs none of this: the version stays
        # 'training' and its checkpoint stays, so the re-queued job resumes from the last epoch
        _give_up(version, prefix)
        raise
    if job.payload.get("activate", True):
        model_version_make_active(model_version=version)  # the role was checked when asked
    mark = f", mAP50 {version.metrics['map50']:.3f} on val" if last.get("map50") is not None else ""
    if result.resumed_from_epoch:
        mark += f" (resumed after epoch {result.resumed_from_epoch})"
    return {
        "model_version": version.pk,
        "number": version.number,
        "resumed_after_epoch": result.resumed_from_epoch,
        "message": f"{version.architecture} v{version.number}: {result.epochs} epochs{mark}",
    }


def _give_up(version: ModelVersion, prefix: str) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
    _checkpoint_delete(prefix)


def _checkpoint_path(prefix: str, work: Path) -> Path:
    """Where training keeps its checkpoint: in storage itself when it is local disk; else a
    local copy (downloaded when a lost worker's job runs again)."""
    name = f"{prefix}/{CHECKPOINT}"
    if storage.is_local():
        path = Path(default_storage.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    local = work / CHECKPOINT
    if default_storage.exists(name):
        with default_storage.open(name, "rb") as src, open(local, "wb") as dst:
            dst.write(src.read())
    return local


def _checkpoint_save(prefix: str, path: Path) -> None:
    if storage.is_local() or not path.is_file():
        return
    name = f"{prefix}/{CHECKPOINT}"
    with contextlib.suppress(OSError):
        default_storage.delete(name)
    with open(path, "rb") as fh:
        default_storage.save(name, fh)


def _checkpoint_delete(prefix: str) -> None:
    with contextlib.suppress(OSError):
        default_storage.delete(f"{prefix}/{CHECKPOINT}")


def _export(detection, artifact: Path) -> dict:
    """ONNX next to the artifact, for ONNX Runtime on CPU workers; never fatal (torch runs)."""
    try:
        detection.ensure_onnx_export(artifact)  # where load_detector looks for it
        return {"onnx": True}
    except Exception as exc:  # noqa: BLE001 - recorded on the model version
        logger.exception("ONNX export of %s failed", artifact)
        return {"onnx": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


@job_task("detection_inspect", queue="gpu", label="Detection run")
def run_detection(job, ctx: JobContext) -> dict:
    detection = _library()
    run = InspectionRun.objects.select_related("model_version", "project").get(
        pk=job.payload["run"]
    )
    version = run.model_version
    if version is None or not version.artifact:
        raise JobError("The model version of this run was deleted; start a new run.")
    p = version.params
    threshold = float((run.params or {}).get("score_threshold", 0.3))
    ids = list(dict.fromkeys(run.image_ids))
    results: dict[str, dict] = {}
    made = failed = 0
    with storage.local_tree(str(Path(version.artifact).parent)) as model_dir:
        try:
            detector = detection.load_detector(model_dir / Path(version.artifact).name)
        except detection.DetectionError as exc:
            raise JobError(f"The detector could not be loaded: {exc}") from None
        try:
            for n, image_id in enumerate(ids):
                image = Image.objects.filter(pk=image_id).first()
                if image is None:
                    results[str(image_id)] = {"error": "the image was deleted before it was run"}
                    failed += 1
                    continue
                ctx.progress(n / max(len(ids), 1), f"{image.original_name} ({n + 1}/{len(ids)})")
                outcome = _detect_one(detector, run, version, image, p, threshold)
                results[str(image_id)] = outcome
                if "error" in outcome:
                    failed += 1
                else:
                    made += outcome["suggestions"]
        finally:  # partial results survive a crash, a cancel or an unexpected error
            InspectionRun.objects.filter(pk=run.pk).update(results=results)
    if ids and failed == len(ids):
        raise JobError(
            "No image could be run: " + "; ".join(r["error"] for r in list(results.values())[:3])
        )
    return {
        "run": run.pk,
        "images": len(ids) - failed,
        "failed": failed,
        "suggestions": made,
        "message": f"{len(ids) - failed} image(s) run, {made} suggestion(s)"
        + (f", {failed} failed" if failed else ""),
    }


def _predict(detector, path: Path, p: dict, threshold: float) -> list:
    """One upright image through the detector as it was trained: slices of its input size, or
    the whole image resized to it."""
    if p.get("slice"):
        return detector.predict_sliced(
            str(path),
            slice_size=p["input_size"],
            overlap=p.get("overlap", 0.25),
            score_threshold=threshold,
            # on a CPU one slice at a time is faster per slice (docs/detection.md, runtimes)
            batch_size=1 if getattr(detector, "runtime", "torch") == "onnx" else 4,
        )
    return detector.predict(str(path), score_threshold=threshold)


@contextlib.contextmanager
def active_detector(project):
    """``detect(upright image path) -> detections`` of the project's active detector, or None
    when it has none (for the anomaly job, which classifies its regions with it)."""
    from inspection.services.inspections import DETECTION_SCORE_THRESHOLD, active_model

    version = active_model(project, ModelVersion.Kind.DETECTOR)
    if version is None or not version.artifact:
        yield None
        return
    detection = _library()
    with storage.local_tree(str(Path(version.artifact).parent)) as model_dir:
        try:
            detector = detection.load_detector(model_dir / Path(version.artifact).name)
        except detection.DetectionError:
            logger.exception("the active detector %s could not be loaded", version.pk)
            yield None
            return
        yield lambda path: _predict(detector, path, version.params, DETECTION_SCORE_THRESHOLD)


def _detect_one(detector, run, version, image, p: dict, threshold: float) -> dict:
    try:
        with tempfile.TemporaryDirectory(prefix="loupe-detect-") as tmp, ExitStack() as stack:
            src = stack.enter_context(storage.local_copy(image.file.name))
            path = imaging.upright_copy(src, image.orientation, tmp)
            found = _predict(detector, path, p, threshold)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable file fails alone
        logger.warning("detection: image %s failed: %s", image.pk, exc)
        return {"error": f"{image.original_name}: {type(exc).__name__}: {exc}"[:300]}
    stored = suggestions_store(
        image=image,
        run=run,
        model_version=version,
        suggestions=[SuggestionIn.from_detection(d) for d in found],
    )
    image_update_status(image=image)
    return {"detections": len(found), "suggestions": len(stored)}
