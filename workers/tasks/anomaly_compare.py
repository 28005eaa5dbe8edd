"""Job kind 'anomaly_compare': which anomaly model for this part? The leaderboard.

The service (``inspection.services.inspections.model_comparison_start``) made one model version
per chosen architecture and setting (e.g. without and with the shading correction), all trained
on the same normal images, and set some normal images
aside. This job trains each version in turn, then scores it on the project's own reviewed
images: the normal images set aside, and every image with reviewed labels (approved, or
imported ground truth; a box or polygon is its defect's mask). Figures per version: image AUROC,
pixel AUROC and AU-PRO (on the images whose labels are all polygons: a box's background is no
defect), region recall at <= 1 false region per good image, recall and false regions per good
image at the model's threshold, each of these with its 95 % percentile bootstrap interval over
the images (``figures["intervals"]``, from the engine's ``evaluation.intervals``; None where a
figure is undefined), the same figures per defect kind (``figures["by_type"]``: the images
labelled with one category against every normal image; an image with labels of two categories
is a kind of its own), ms per image, the memory it takes to run (``memory_mb``: the peak RSS of
a fresh process that loads it and predicts a few of the scored images; this job's own process
trains and scores several models, and its peak only grows), the model's size on disk
(``model_mb``, with its exports) and its training time. The best
(highest region recall at <= 1 false per good image, then image AUROC, then pixel AUROC) is
marked; nobody's active model changes until an admin activates it on the models page.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from django.db.models import Q

from annotations.formats import mvtec_layout as anomaly_layout
from annotations.models import Annotation
from inspection import storage
from inspection.models import Image, ModelVersion
from inspection.services.inspections import anomaly_setup, comparison_rank, weakest_kind
from workers.tasks.anomaly import _engine, train_version, upright_copies
from workers.tasks.runner import JobCancelled, JobContext, JobError, job_task

logger = logging.getLogger(__name__)

# the checkout: a fresh process runs the engine's CLI from here to measure a model's memory
ROOT = Path(__file__).resolve().parents[2]
# how many of the scored images that process predicts
MEMORY_IMAGES = 3

# figures copied from the engine's evaluation into each row (the rest stays on the version)
FIGURES = (
    "image_auroc",
    "pixel_auroc",
    "au_pro",
    "region_recall",
    "region_false_per_good_image",
    "recall_at_threshold",
    "false_per_good_image_at_threshold",
    "ms_per_image",
)


def reviewed_defects(project_id: int, exclude: set[int]) -> dict[int, list[tuple[str, dict]]]:
    """The project's images with reviewed labels (approved, or imported ground truth; not
    returned), as ``{image_id: [(category name, geometry), ...]}``, minus ``exclude`` and normal
    images."""
    rows = (
        Annotation.objects.filter(image__project_id=project_id, image__is_normal=False)
        .exclude(image_id__in=exclude)
        .exclude(review_status=Annotation.ReviewStatus.RETURNED)
        .filter(
            Q(review_status=Annotation.ReviewStatus.APPROVED)
            | Q(source=Annotation.Source.GROUND_TRUTH)
        )
        .values_list("image_id", "category__name", "geometry")
    )
    out: dict[int, list[tuple[str, dict]]] = {}
    for image_id, category, geometry in rows:
        out.setdefault(image_id, []).append((category, geometry))
    return out


def defect_kind(labels: list[tuple[str, dict]]) -> str:
    """What an image's reviewed labels say its defect is, for the figures per defect kind: its
    category, or its categories joined by " + " (an image with a crack and a blowhole is a kind
    of its own). Never the engine's word for a good image."""
    kind = " + ".join(sorted({category for category, _ in labels}))
    return kind if kind != anomaly_layout.GOOD else f"{kind} (label)"


def mask_of(geometries: list[dict], height: int, width: int) -> np.ndarray:
    """A label mask (0/255) at the image's size: boxes and polygons filled."""
    mask = np.zeros((height, width), np.uint8)
    for g in geometries:
        if g.get("type") == "box":
            x0, y0 = round(g["x"]), round(g["y"])
            x1, y1 = round(g["x"] + g["w"]), round(g["y"] + g["h"])
            cv2.rectangle(mask, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), 255, thickness=-1)
        elif g.get("type") == "polygon" and len(g.get("points") or []) >= 3:
            points = np.round(np.asarray(g["points"], np.float64)).astype(np.int32)
            cv2.fillPoly(mask, [points], 255)
    return mask


@job_task("anomaly_compare", queue="gpu", label="Anomaly model comparison")
def compare_anomaly_models(job, ctx: JobContext) -> dict:
    anomaly = _engine()
    versions = list(ModelVersion.objects.filter(pk__in=job.payload["versions"]).order_by("number"))
    try:
        if not versions:
            raise JobError("The model versions of this comparison were deleted.")
        train_ids = list(versions[0].image_ids)
        normal_ids = list(job.payload["eval_normal_ids"])
        train_images = list(Image.objects.filter(pk__in=train_ids).order_by("id"))
        normals = list(Image.objects.filter(pk__in=normal_ids).order_by("id"))
        truth = reviewed_defects(job.project_id, set(train_ids) | set(normal_ids))
        defects = list(Image.objects.filter(pk__in=list(truth)).order_by("id"))
        if len(train_images) < 2:
            raise JobError("Fewer than 2 of the training images still exist; nothing to train on.")
        if not defects:
            raise JobError(
                "No reviewed defect images to score the models on: approve labels on some "
                "defective images (or import ground truth) first."
            )
        if not normals:
            raise JobError("The normal images set aside for scoring were deleted.")
        rows = []
        with tempfile.TemporaryDirectory(prefix="loupe-compare-") as tmp:
            folder = Path(tmp)
            ctx.progress(0.01, f"Fetching {len(train_images)} normal images", force=True)
            train_paths = upright_copies(train_images, folder / "train")
            samples = [
                anomaly.Sample(path, None, "good")
                for path in upright_copies(normals, folder / "normal")
            ]
            for image, path in zip(
                defects, upright_copies(defects, folder / "defect"), strict=True
            ):
                h, w = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
                mask_path = folder / "masks" / f"{image.pk}.png"
                mask_path.parent.mkdir(exist_ok=True)
                geometries = [g for _, g in truth[image.pk]]
                cv2.imwrite(str(mask_path), mask_of(geometries, h, w))
                # a box marks where a defect is, not its pixels: such an image counts for the
                # image and region figures, not for pixel AUROC and AU-PRO
                boxed = any(g.get("type") != "polygon" for g in geometries)
                kind = defect_kind(truth[image.pk])
                samples.append(anomaly.Sample(path, mask_path, kind, outline_only=boxed))
            span = 0.97 / len(versions)
            for i, version in enumerate(versions):
                start = 0.02 + i * span
                rows.append(_train_and_score(version, train_paths, samples, ctx, start, span))
    except BaseException:  # cancelled too: what did not finish training never will
        ModelVersion.objects.filter(
            pk__in=[v.pk for v in versions], status=ModelVersion.Status.TRAINING
        ).update(status=ModelVersion.Status.FAILED)
        raise
    scored = [r for r in rows if "figures" in r]
    if not scored:
        raise JobError("No model could be trained: " + "; ".join(r["error"] for r in rows[:3]))
    best = max(scored, key=lambda r: comparison_rank(r["figures"]))
    for r in rows:
        r["best"] = r is best
    return {
        "rows": rows,
        "best": best["model_version"],
        "normal_images": len(normals),
        "defect_images": len(defects),
        "pixel_defect_images": sum(s.is_anomalous and not s.outline_only for s in samples),
        "training_images": len(train_images),
        "message": f"{len(scored)} model(s) scored on {len(defects)} reviewed defect and "
        f"{len(normals)} normal images; best: {best['architecture']} v{best['number']} "
        f"({anomaly_setup(best['params'])})"
        + (f"; {weak}" if (weak := weakest_kind(best["figures"])) else ""),
    }


def _train_and_score(version, train_paths, samples, ctx, start: float, span: float) -> dict:
    """One row of the leaderboard; a model that fails to train fails alone."""
    anomaly = _engine()
    row = {"model_version": version.pk, "number": version.number}
    row["architecture"] = version.architecture
    # its settings (tiles, scales, shading correction): two rows of one architecture differ here
    row["params"] = {k: v for k, v in (version.params or {}).items() if k != "model"}
    try:
        train_version(version, train_paths, ctx, start, span * 0.7)
    except JobError as exc:
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.FAILED)
        return {**row, "error": str(exc)}
    ctx.progress(
        start + span * 0.7, f"Scoring {version.architecture} v{version.number}", force=True
    )

    def report(fraction: float, _message: str) -> None:
        try:
            ctx.progress(start + span * (0.7 + 0.3 * fraction), f"Scoring {version.architecture}")
        except JobCancelled:
            raise anomaly.Cancelled() from None

    with storage.local_tree(str(Path(version.artifact).parent)) as model_dir:
        model_bytes = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
        model = anomaly.load_model(model_dir / Path(version.artifact).name)
        try:
            result = anomaly.evaluate(model, samples, progress=report)
        except anomaly.Cancelled:
            raise JobCancelled() from None
        del model
        memory_mb = memory_to_run(
            model_dir / Path(version.artifact).name, [s.image for s in samples[:MEMORY_IMAGES]]
        )
    figures = {k: _finite(result.metrics.get(k)) for k in FIGURES}
    figures["memory_mb"] = memory_mb
    figures["intervals"] = result.metrics["intervals"]
    # which kinds of defect (label categories) it finds: each kind's images against every normal
    figures["by_type"] = {
        kind: {k: _finite(v) for k, v in f.items()} for kind, f in result.metrics["by_type"].items()
    }
    figures["train_seconds"] = version.metrics.get("train_seconds")
    figures["model_mb"] = round(model_bytes / 2**20, 1)  # size on disk, with its exports
    figures["images"] = len(samples)
    figures["pixel_defect_images"] = result.metrics["pixel_defect_images"]
    version.metrics = {**version.metrics, "comparison": figures}
    version.save(update_fields=["metrics"])
    return {**row, "figures": figures}


def memory_to_run(artifact: Path, images: list[Path]) -> float | None:
    """Peak resident memory, in MB, of a fresh process that loads the model (with the runtime
    inspections pick for it) and predicts ``images``: what a worker or a line station needs to
    run it. The job's own process cannot say: it trains and scores several models, and its peak
    only grows. None when that process fails (logged)."""
    with tempfile.TemporaryDirectory(prefix="loupe-memory-") as out:
        command = [sys.executable, "-m", "workers.anomaly", "--quiet", "predict", "--model"]
        command += [str(artifact), "--out", out, "--peak-memory", *map(str, images)]
        try:
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired:
            logger.warning("memory of %s not measured: no answer in 900 s", artifact)
            return None
        try:  # the last line; one image failing still leaves it (exit status 1)
            return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])
        except (IndexError, KeyError, TypeError, ValueError):
            logger.warning("memory of %s not measured: %s", artifact, done.stderr[-500:])
            return None


def _finite(value):
    """JSON has no NaN: an undefined figure (no ground-truth region, one class) is None."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return round(float(value), 4) if isinstance(value, float) else value
