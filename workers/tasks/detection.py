"""Job kinds 'detection_train' and 'detection_inspect': glue between the app and
workers.detection. A detector trains on a frozen dataset version (its train split; its val
split gives the per-epoch figures) and its predictions become suggestions with categories.

Checkpoints: training writes one after every epoch in the version's folder
(``inspection.services.inspections.model_version_folder``). A worker that dies leaves it there
and the re-queued job goes on from it; a training that ends (done, cancelled, failed) deletes it,
and the maintenance hook that fails orphaned versions deletes the folder of the ones no job will
finish.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

from django.core.files.storage import default_storage
from django.db import transaction

from annotations.formats.coco import to_coco_dict
from annotations.models import DatasetVersion
from annotations.services.dataset_versions import version_dataset_from_content
from annotations.services.detectors import TRANSPLANT_SHARE
from annotations.services.image_state import image_detector_checked, image_update_status
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection import imaging, storage
from inspection.models import Image, InspectionRun, ModelVersion
from inspection.services.inspections import (
    DETECTION_SCORE_THRESHOLD,
    active_model,
    model_version_folder,
    model_version_make_active,
)
from workers.tasks.regions import RegistrationRefused, RunRegions
from workers.tasks.runner import JobCancelled, JobContext, JobError, job_task

logger = logging.getLogger(__name__)

ARTIFACT = "model.pt"
CHECKPOINT = re.compile(r"^checkpoint-e(\d+)\.pt$")
RESULTS_EVERY = 8  # a run's per-image results are saved this often (a lost worker keeps them)


def _library():
    # imported inside job bodies: the web process imports this module to know the job kinds
    from workers import detection

    return detection


def _prepare(dataset: DatasetVersion, folder: Path, *, references: str = "none"):
    """COCO files of a version's train and val splits over upright local copies of its images;
    returns (train json, val json or None, images folder, skipped image ids, the val images'
    longest side). With ``references`` "required" (a Siamese detector) or "optional" (a
    single-image one copying defects along them) each image's reference, warped onto it as the
    version froze the pair, goes to ``folder/references`` under the image's name; "required"
    leaves out (skips) the images without an aligned reference, "optional" trains them as
    they are."""
    siamese = references == "required"
    ds = version_dataset_from_content(dataset.content)
    frozen_refs = {
        str(im["id"]): im["reference"]
        for im in dataset.content.get("images", [])
        if ((im.get("reference") or {}).get("alignment") or {}).get("status") == "ok"
    }
    images = Image.objects.in_bulk([int(im.key) for im in ds.images])
    names, skipped, warped = {}, [], {}
    (folder / "images").mkdir()
    if references != "none":
        (folder / "references").mkdir()
    for im in ds.images:
        if im.split not in ("train", "val"):
            continue
        image = images.get(int(im.key))
        if image is None or (siamese and im.key not in frozen_refs):
            skipped.append(int(im.key))  # deleted since the freeze, or nothing to compare with
            continue
        try:
            src = storage.fetched(image.file.name, folder)
            upright = imaging.upright_copy(src, image.orientation, tempfile.mkdtemp(dir=folder))
            name = f"{im.key}{Path(upright).suffix.lower()}"
            # a single-image detector copies defects in training only: no val references
            if im.key in frozen_refs and (
                siamese or (references != "none" and im.split == "train")
            ):
                out = folder / "references" / f"{im.key}.png"
                try:
                    warped[im.key] = _warped_reference(frozen_refs[im.key], image, folder, out)
                except Exception:
                    if siamese:
                        raise
                    # the image still trains, without copies of its defects
                    logger.warning("detector training: reference of %s left out", image.pk)
        except Exception:  # noqa: BLE001 - a missing or damaged file is left out, and listed
            logger.warning("detector training: image %s left out", image.pk, exc_info=True)
            skipped.append(image.pk)
            continue
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
            files[split].write_text(
                json.dumps(to_coco_dict(part, file_names=names, reference_names=warped))
            )
    if "train" not in files:
        raise JobError(
            "None of the version's train images "
            + ("with an aligned reference " if siamese else "")
            + "is stored any more."
        )
    val_side = max((max(im.width, im.height) for im in ds.subset("val").images), default=0)
    return files["train"], files.get("val"), folder / "images", skipped, val_side


def _warped_reference(frozen: dict, image: Image, work: Path, out: Path) -> str:
    """The frozen pair's reference warped onto ``image`` by the frozen alignment, written to
    ``out``; returns its file name (relative to the references folder). Raises when the
    reference was deleted since the freeze (the image is then left out)."""
    import cv2

    from workers.change.align import Alignment, warp_reference
    from workers.tasks.references import image_pixels

    reference = Image.objects.get(pk=frozen["id"])
    pixels = image_pixels(image, Path(tempfile.mkdtemp(dir=work)))
    ref_pixels = image_pixels(reference, Path(tempfile.mkdtemp(dir=work)))
    if (pixels.ndim == 3) != (ref_pixels.ndim == 3):  # the detector reads both as colour
        ref_pixels = (
            ref_pixels if ref_pixels.ndim == 3 else cv2.cvtColor(ref_pixels, cv2.COLOR_GRAY2RGB)
        )
    defaults = {"method": "", "inliers": 0, "matches": 0, "residual_px": 0.0, "overlap": 1.0}
    alignment = Alignment.from_dict({**defaults, **frozen["alignment"], "ok": True})
    warped, _ = warp_reference(ref_pixels, alignment, pixels.shape[:2])
    if warped.ndim == 3:
        warped = cv2.cvtColor(warped, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(out), warped, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return out.name


@job_task("detection_train", queue="gpu", label="Detector training")
def train_detector(job, ctx: JobContext) -> dict:
    detection = _library()
    version = ModelVersion.objects.select_related("project").get(pk=job.payload["model_version"])
    p = version.params
    folder = model_version_folder(version)
    dataset = DatasetVersion.objects.filter(pk=p["dataset_version"]).first()
    if dataset is None:
        _give_up(version, folder)
        raise JobError(f"Dataset version {p['dataset_number']} no longer exists.")
    # a job run again after its worker died shows the epochs it had reported so far
    history: list[dict] = list((version.metrics or {}).get("history", []))
    try:
        with tempfile.TemporaryDirectory(prefix="loupe-detector-") as tmp:
            work = Path(tmp)
            ctx.progress(
                0.0, f"Collecting the images of dataset v{p['dataset_number']}", force=True
            )
            paired = version.compares_with_reference
            transplant = bool(p.get("transplant")) and not paired
            train_json, val_json, image_root, skipped, val_side = _prepare(
                dataset,
                work,
                references="required" if paired else "optional" if transplant else "none",
            )
            reference_root = work / "references" if paired or transplant else None
            checkpoint = _checkpoint_fetch(folder, work)

            def report(fraction: float, message: str, metrics: dict | None) -> None:
                try:
                    ctx.progress(0.02 + 0.9 * fraction, message)
                except JobCancelled:
                    raise detection.Cancelled() from None
                if metrics is not None:  # an epoch ended: keep its checkpoint and its figures
                    # in that order: an epoch shown as done can always be continued from
                    _checkpoint_store(folder, checkpoint, metrics["epoch"])
                    history[:] = [h for h in history if h["epoch"] < metrics["epoch"]]
                    history.append(_light(metrics))
                    ModelVersion.objects.filter(pk=version.pk).update(metrics={"history": history})

            if p.get("reference") == "two-stage":
                from workers.detection import two_stage

                fit = functools.partial(
                    two_stage.train,
                    train_json,
                    work / "model" / ARTIFACT,
                    image_root=image_root,
                    reference_root=reference_root,
                    config=detection.PairConfig(
                        epochs=p["epochs"], seed=p.get("seed", 0), networks=p.get("networks", 1)
                    ),
                    progress=report,
                    val_json=val_json,
                    val_image_root=image_root if val_json else None,
                    val_reference_root=reference_root if val_json else None,
                    checkpoint=checkpoint,
                )
            else:
                fit = functools.partial(
                    detection.train,
                    **_ppyoloe_arguments(
                        detection,
                        p,
                        train_json,
                        val_json,
                        image_root,
                        reference_root,
                        val_side,
                        siamese=paired,
                    ),
                    output=work / "model" / ARTIFACT,
                    progress=report,
                    checkpoint=checkpoint,
                )
            what = f"{version.architecture} on {len(version.image_ids)} images"
            ctx.progress(
                0.02, ("Resuming " if checkpoint.is_file() else "Training ") + what, force=True
            )
            try:
                result = fit()
            except detection.CheckpointError as exc:
                # the training set changed under a lost worker (an image deleted meanwhile):
                # its checkpoint cannot be continued, so the training starts again, once
                logger.warning("detector %s: checkpoint not continued (%s)", version.pk, exc)
                checkpoint.unlink(missing_ok=True)
                _checkpoint_delete(folder)
                history.clear()
                ctx.progress(0.02, f"Training {what} again: {exc}"[:500], force=True)
                result = fit()
            last_pr = next(
                (h["per_class_pr"] for h in reversed(result.history) if "per_class_pr" in h), {}
            )
            history = [_light(h) for h in result.history]
            model_dir = work / "model"
            if p.get("reference") == "two-stage":  # a small network: torch on the CPU
                exports = {"onnx": False, "runtime": "torch (a two-stage change detector)"}
            else:
                ctx.progress(0.94, "Exporting the detector for CPU inference (ONNX)", force=True)
                exports = _export(detection, model_dir / ARTIFACT)
            if exports["onnx"] and val_json:
                exports["int8"] = _check_int8(
                    detection,
                    ctx,
                    model_dir / ARTIFACT,
                    val_json,
                    train_json,
                    image_root,
                    p,
                    reference_root=reference_root,
                )
            storage.save_tree(model_dir, folder)
        _checkpoint_delete(folder)
        last = next((h for h in reversed(history) if "map50" in h), {})
        version.artifact = f"{folder}/{ARTIFACT}"
        version.metrics = {
            "history": history,
            "map": last.get("map"),
            "map50": last.get("map50"),
            "ap_small": last.get("ap_small"),
            "per_class_ap50": last.get("per_class_ap50", {}),
            "per_class_ap": last.get("per_class_ap", {}),
            "per_class_ap_small": last.get("per_class_ap_small", {}),
            "per_class_pr": last_pr,  # the last evaluation's curves only: history stays light
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
        _give_up(version, folder)
        raise JobCancelled() from None
    except detection.DetectionError as exc:
        _give_up(version, folder)
        raise JobError(str(exc)) from None
    except Exception:
        # cancelled or failed. Not for SystemExit and the like (a worker shutting down) and
        # not when the worker dies: the version stays 'training' with its checkpoint, so the
        # re-queued job goes on from the last epoch.
        _give_up(version, folder)
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


def _ppyoloe_arguments(
    detection,
    p: dict,
    train_json,
    val_json,
    image_root,
    reference_root,
    val_side: int,
    *,
    siamese: bool,
) -> dict:
    """``workers.detection.train``'s arguments for a PP-YOLOE-SOD (single-image, Siamese or
    stacked).
    A single-image detector reads ``reference_root`` only to copy defects along the references
    (``transplant``); it validates on the images alone."""
    with open(train_json) as fh:
        num_classes = len(json.load(fh)["categories"])
    return {
        "train_json": train_json,
        "image_root": image_root,
        "model_config": detection.model_config_for(
            p["backbone"],
            num_classes,
            eval_size=p["input_size"],
            **({"reference": p["reference"]} if siamese else {}),  # "siamese", "stacked"
        ),
        "train_config": detection.TrainConfig(
            epochs=p["epochs"],
            batch_size=p["batch_size"],
            crop_size=p["input_size"] if p["slice"] else None,
            train_sizes=detection.train_sizes_around(p["input_size"]),
            max_iters_per_epoch=p.get("iterations_per_epoch"),
            seed=p.get("seed", 0),
            rotate=bool(p.get("rotate", False)),
            negative_share=p.get("negatives"),  # None (versions before it): all of them
            reference_transplant=TRANSPLANT_SHARE if p.get("transplant") else 0.0,
        ),
        "val_json": val_json,
        "val_image_root": image_root if val_json else None,
        # judged as it will predict: slices of its input size, or each whole image resized
        # (one slice as large as the largest val image)
        "eval_slice_size": p["input_size"] if p["slice"] else max(val_side, 32),
        "reference_root": reference_root,
        "val_reference_root": reference_root if val_json and siamese else None,
    }


def _light(metrics: dict) -> dict:
    """An epoch's figures without its precision/recall curves (a few kB per epoch that the
    models page would poll): the version keeps the last evaluation's curves apart."""
    return {k: v for k, v in metrics.items() if k != "per_class_pr"}


def _give_up(version: ModelVersion, folder: str) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
    _checkpoint_delete(folder)


def _checkpoints(folder: str) -> list[tuple[int, str]]:
    """(epoch, storage name) of the checkpoints stored in ``folder``, newest last."""
    try:
        _dirs, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotImplementedError):
        return []
    found = [(int(m.group(1)), f"{folder}/{f}") for f in files if (m := CHECKPOINT.match(f))]
    return sorted(found)


def _checkpoint_fetch(folder: str, work: Path) -> Path:
    """The local file training keeps its checkpoint in: the newest whole stored one, copied down
    (a lost worker's job going on), or a path that does not exist yet.

    Storage writes are not atomic (FileSystemStorage writes the final name chunk by chunk): a
    worker killed while uploading epoch N's checkpoint leaves a truncated file beside epoch N-1's
    whole one. A torch checkpoint is a zip archive whose directory is written last, so a
    truncated one is not a zip file: it is deleted and the one before it is used."""
    local = work / "checkpoint.pt"
    for epoch, name in reversed(_checkpoints(folder)):
        with default_storage.open(name, "rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if zipfile.is_zipfile(local):
            return local
        logger.warning("checkpoint %s (epoch %s) is truncated; deleting it", name, epoch)
        local.unlink()
        with contextlib.suppress(OSError):
            default_storage.delete(name)
    return local


def _checkpoint_store(folder: str, path: Path, epoch: int) -> None:
    """Keep the epoch's checkpoint in storage: written under a new name, then the older ones
    deleted, so a worker killed while uploading still leaves a whole one."""
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        name = default_storage.save(f"{folder}/checkpoint-e{epoch}.pt", fh)
    for _epoch, older in _checkpoints(folder):
        if older != name:
            with contextlib.suppress(OSError):
                default_storage.delete(older)


def _checkpoint_delete(folder: str) -> None:
    for _epoch, name in _checkpoints(folder):
        with contextlib.suppress(OSError):
            default_storage.delete(name)


def _export(detection, artifact: Path) -> dict:
    """ONNX next to the artifact, for ONNX Runtime on CPU workers; never fatal (torch runs)."""
    try:
        detection.ensure_onnx_export(artifact)  # where load_detector looks for it
        return {"onnx": True}
    except Exception as exc:  # noqa: BLE001 - recorded on the model version
        logger.exception("ONNX export of %s failed", artifact)
        return {"onnx": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def _check_int8(
    detection, ctx, artifact: Path, val_json, train_json, image_root, p, reference_root=None
) -> dict:
    """An INT8 copy of the ONNX export, kept beside it only when it keeps the val split's mAP50
    (within 0.01) and is faster; runs load it from then on. Never fatal: fp32 runs."""
    try:
        return detection.check_int8(
            artifact,
            val_json,
            image_root=image_root,
            calibration_json=train_json,
            calibration_root=image_root,
            slice_size=p["input_size"] if p["slice"] else None,
            overlap=p.get("overlap", 0.25),
            progress=lambda message: ctx.progress(0.96, message, force=True),
            reference_root=reference_root,
            calibration_reference_root=reference_root,
        )
    except JobCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the model version
        logger.exception("INT8 check of %s failed", artifact)
        return {"passed": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}


@job_task("detection_inspect", queue="gpu", label="Detection run")
def run_detection(job, ctx: JobContext) -> dict:
    detection = _library()
    run = InspectionRun.objects.select_related("model_version", "project").get(
        pk=job.payload["run"]
    )
    version = run.model_version
    if version is None or not version.artifact:
        raise JobError("The model version of this run was deleted; start a new run.")
    threshold = float((run.params or {}).get("score_threshold", DETECTION_SCORE_THRESHOLD))
    views = int((run.params or {}).get("views", 1))
    names = _category_names(version)
    ids = list(dict.fromkeys(run.image_ids))
    results: dict[str, dict] = {}
    made = failed = 0
    with (
        storage.local_tree(str(Path(version.artifact).parent)) as model_dir,
        contextlib.ExitStack() as stack,
    ):
        try:
            detector = detection.load_detector(model_dir / Path(version.artifact).name)
        except detection.DetectionError as exc:
            raise JobError(f"The detector could not be loaded: {exc}") from None
        runtime = _runtime_name(detector)
        rois = None
        if run.params.get("regions"):  # excluded regions mask its boxes too, by their centres
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loupe-roi-")))
            rois = RunRegions(
                run.params["regions"],
                run.params.get("outside_regions", ""),
                stack,
                workdir,
                models=False,
            )
        try:
            for n, image_id in enumerate(ids):
                image = Image.objects.filter(pk=image_id).first()
                if image is not None:
                    ctx.progress(n / len(ids), f"{image.original_name} ({n + 1}/{len(ids)})")
                    outcome = _detect_one(
                        detector, run, version, image, threshold, names, rois, views
                    )
                else:
                    outcome = {"error": "the image was deleted before it was run"}
                results[str(image_id)] = outcome
                failed += "error" in outcome
                made += outcome.get("suggestions", 0)
                if n % RESULTS_EVERY == RESULTS_EVERY - 1:
                    InspectionRun.objects.filter(pk=run.pk).update(results=results)
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
        "runtime": runtime,
        "message": f"{len(ids) - failed} image(s) run, {made} suggestion(s)"
        + (f", {failed} failed" if failed else "")
        + f" ({runtime})"
        + "".join(f"; {note}" for note in (rois.notes if rois else [])),
    }


def _runtime_name(detector) -> str:
    """How a run's network ran, in words: "ONNX Runtime, INT8", "torch on cuda", ..."""
    if detector.runtime == "onnx":
        return f"ONNX Runtime, {detector.precision.upper()}"
    return f"{detector.runtime} on {detector.device.type}"


def _category_names(version: ModelVersion) -> dict[str, str]:
    """The detector's category name -> the project's category's name now: matched by the id
    recorded at training, so a category renamed since still gets the detector's boxes (by name
    for versions trained before ids were recorded)."""
    from annotations.models import DefectCategory

    ids = version.params.get("category_ids") or {}
    now = dict(
        DefectCategory.objects.filter(pk__in=ids.values(), project_id=version.project_id)
        .values_list("pk", "name")
        .iterator()
    )
    return {trained: now[pk] for trained, pk in ids.items() if pk in now}


def _predict(
    detector,
    path: Path,
    p: dict,
    threshold: float,
    reference: Path | None = None,
    views: int = 1,
) -> list:
    """One upright image through the detector as it was trained: slices of its input size, or
    the whole image resized to it; a Siamese detector gets the reference warped onto the image
    (sliced at the same windows). With ``views`` > 1 the image (and its reference) is predicted
    in that many orientations, the boxes fused (``predict_views``). One box per place: a defect
    makes one suggestion, its runner-up category kept as the margin (``one_per_place``)."""
    detection = _library()
    if p.get("slice"):
        predict = functools.partial(
            detector.predict_sliced,
            slice_size=p["input_size"],
            overlap=p.get("overlap", 0.25),
            score_threshold=threshold,
            # on a CPU one slice at a time is faster per slice (docs/detection.md, runtimes)
            batch_size=1 if getattr(detector, "runtime", "torch") == "onnx" else 4,
        )
    else:
        predict = functools.partial(detector.predict, score_threshold=threshold)
    if views == 1:
        extra = {"reference": str(reference)} if reference is not None else {}
        return detection.one_per_place(predict(str(path), **extra))
    from workers.detection.data import load_image

    found = detection.predict_views(
        predict,
        load_image(path),
        views,
        reference=None if reference is None else load_image(reference),
    )
    return detection.one_per_place(found)


def _current_reference(image: Image, work: Path) -> Path:
    """The image's reference warped onto it by its current alignment (a Siamese detector's
    second input); raises ValueError naming the image when it has none."""
    alignment = image.alignment or {}
    if image.reference_id is None or alignment.get("status") != "ok":
        raise ValueError(f"{image.original_name} has no aligned reference to compare with")
    frozen = {"id": image.reference_id, "alignment": alignment}
    return work / _warped_reference(frozen, image, work, work / "reference.png")


@contextlib.contextmanager
def active_detector(project):
    """``detect(upright image path) -> detections`` of the project's active detector (category
    names as the project calls them now), or None when it has none. For the anomaly job, which
    classifies its regions with it."""
    version = active_model(project, ModelVersion.Kind.DETECTOR)
    if version is None or not version.artifact or version.compares_with_reference:
        # a Siamese or two-stage detector needs each image's reference: its own runs only
        yield None
        return
    detection = _library()
    names = _category_names(version)
    with storage.local_tree(str(Path(version.artifact).parent)) as model_dir:
        try:
            detector = detection.load_detector(model_dir / Path(version.artifact).name)
        except detection.DetectionError:
            logger.exception("the active detector %s could not be loaded", version.pk)
            yield None
            return

        def detect(path: Path) -> list:
            found = _predict(detector, path, version.params, DETECTION_SCORE_THRESHOLD)
            return [_renamed(d, names) for d in found]

        yield detect


def _renamed(detection, names: dict[str, str]):
    name = names.get(detection.category_name)
    if name is None or name == detection.category_name:
        return detection
    return replace(detection, category_name=name)


def _detect_one(
    detector,
    run,
    version,
    image,
    threshold: float,
    names: dict,
    rois: RunRegions | None = None,
    views: int = 1,
) -> dict:
    siamese = version.compares_with_reference
    try:
        with tempfile.TemporaryDirectory(prefix="loupe-detect-") as tmp:
            src = storage.fetched(image.file.name, Path(tmp))
            path = imaging.upright_copy(src, image.orientation, tmp)
            reference = _current_reference(image, Path(tmp)) if siamese else None
            found = [
                _renamed(d, names)
                for d in _predict(detector, path, version.params, threshold, reference, views)
            ]
            placed = [(True, None)] * len(found)
            if rois is not None and found:  # the regions of interest the run started with
                centres = [((d.x1 + d.x2) / 2, (d.y1 + d.y2) / 2) for d in found]
                placed = rois.place(image, str(path), centres)
    except (ValueError, RegistrationRefused) as exc:  # no aligned reference; not registrable
        return {"error": str(exc)}
    except JobError:  # the regions' reference cannot be read: the run cannot go on
        raise
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable file fails alone
        logger.warning("detection: image %s failed: %s", image.pk, exc)
        reason = "it is missing" if isinstance(exc, FileNotFoundError) else type(exc).__name__
        return {"error": f"{image.original_name}: {reason}"}
    try:
        with transaction.atomic():  # a savepoint: an image deleted meanwhile fails alone
            stored = suggestions_store(
                image=image,
                run=run,
                model_version=version,
                suggestions=[
                    replace(SuggestionIn.from_detection(d), roi=key)
                    for d, (kept, key) in zip(found, placed, strict=True)
                    if kept
                ],
            )
            image_update_status(image=image)
            image_detector_checked(image=image)
    except Exception as exc:  # noqa: BLE001 - deleted meanwhile, storage full...
        if not Image.objects.filter(pk=image.pk).exists():
            return {"error": "the image was deleted while it was run"}
        logger.exception("detection: storing the result of image %s failed", image.pk)
        return {"error": f"the result could not be stored ({type(exc).__name__})"}
    outcome = {"detections": len(found), "suggestions": len(stored)}
    masked = sum(not kept for kept, _ in placed)
    if masked:  # boxes in excluded regions (or outside every region, when it is ignored)
        outcome["masked"] = masked
    return outcome
