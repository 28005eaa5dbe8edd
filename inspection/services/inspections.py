"""Anomaly model versions and inspection runs: train, activate, delete, inspect.

Training and inspection are background jobs on the ``gpu`` queue (workers/tasks/anomaly.py); these
functions check the rules and enqueue them.
"""

from __future__ import annotations

import statistics

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from inspection.models import Image, ImageHeatmap, InspectionRun, ModelVersion, Project, Role
from inspection.permissions import require_role
from inspection.services.jobs import job_enqueue
from inspection.services.projects import inspection_settings, is_number

ARCHITECTURES = ("padim", "patchcore", "efficientad")
# TrainConfig fields a user may set from the API (everything else stays at the engine default).
TRAIN_PARAMS = {
    "input_size",
    "steps",
    "batch_size",
    "efficientad_size",
    "teacher",
    "coreset_ratio",
    "padim_features",
    "max_seconds",
    "patience",
    "seed",
    "scale",
    "tile_overlap",
    "coarse_pass",
}
MIN_NORMAL_IMAGES = 2
# Normal images whose median long side reaches this are trained as tiles by default (models
# page): resizing them whole to the network's 256 px would shrink them 4x or more.
TILES_FROM_LONG_SIDE = 1024


def _check_geometry(params: dict) -> None:
    """Whole image or tiles: the parameters the training job would otherwise refuse later."""
    scale = params.get("scale")
    if scale is not None and not (is_number(scale) and 0 < scale <= 4):
        what = "scale is the tiles' resolution, in (0, 4] (1 = full resolution), or null"
        raise ValidationError({"params": f"{what} to resize each whole image to the input size."})
    overlap = params.get("tile_overlap", 0.25)
    if not (is_number(overlap) and 0 <= overlap < 0.9):
        raise ValidationError({"params": "tile_overlap is a fraction of a tile in [0, 0.9)."})
    coarse = params.get("coarse_pass", False)
    if not isinstance(coarse, bool):
        raise ValidationError({"params": "coarse_pass is true or false."})
    if coarse and scale is None:
        raise ValidationError(
            {"params": "coarse_pass adds a whole-image pass to a tiled model: set scale too."}
        )


def training_geometry_hint(project: Project) -> dict:
    """How big the project's normal images are, and whether tiles should be the default."""
    sides = [max(w, h) for w, h in training_images(project).values_list("width", "height")]
    if not sides:
        return {"median_long_side": None, "tiles": False}
    median = round(statistics.median(sides))
    return {"median_long_side": median, "tiles": median >= TILES_FROM_LONG_SIDE}


def training_images(project: Project):
    """Normal images for training: marked normal, minus those kept aside as a test split."""
    return Image.objects.filter(project=project, is_normal=True).exclude(split=Image.Split.TEST)


def model_version_train(
    *,
    user,
    project: Project,
    architecture: str = "padim",
    params: dict | None = None,
    activate: bool = True,
) -> ModelVersion:
    """Start training an anomaly model on the project's normal images (project admins)."""
    require_role(user, project, Role.ADMIN)
    if architecture not in ARCHITECTURES:
        raise ValidationError({"architecture": f"Use one of {', '.join(ARCHITECTURES)}."})
    params = dict(params or {})
    unknown = set(params) - TRAIN_PARAMS
    if unknown:
        raise ValidationError({"params": f"Unknown parameter(s): {', '.join(sorted(unknown))}."})
    _check_geometry(params)
    ids = list(training_images(project).order_by("id").values_list("id", flat=True))
    if len(ids) < MIN_NORMAL_IMAGES:
        raise ValidationError(
            f"Training needs at least {MIN_NORMAL_IMAGES} normal (defect-free) images; the project has {len(ids)}."
        )
    with transaction.atomic():
        number = (
            ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.ANOMALY).aggregate(
                n=Max("number")
            )["n"]
            or 0
        ) + 1
        version = ModelVersion.objects.create(
            project=project,
            number=number,
            kind=ModelVersion.Kind.ANOMALY,
            architecture=architecture,
            params={"model": architecture, **params},
            image_ids=ids,
            created_by=user,
        )
        version.job = job_enqueue(
            kind="anomaly_train",
            user=user,
            project=project,
            payload={"model_version": version.pk, "activate": activate},
        )
        version.save(update_fields=["job"])
    return version


def model_version_activate(*, user, model_version: ModelVersion) -> ModelVersion:
    """Make this version the one inspections use (project admins)."""
    require_role(user, model_version.project, Role.ADMIN)
    if model_version.status != ModelVersion.Status.READY:
        raise ValidationError("Only a trained (ready) model version can be made active.")
    return model_version_make_active(model_version=model_version)


def model_version_make_active(*, model_version: ModelVersion) -> ModelVersion:
    """Switch the project's active model (no role check: callers have done it)."""
    with transaction.atomic():
        ModelVersion.objects.filter(
            project=model_version.project, kind=model_version.kind, is_active=True
        ).update(is_active=False)
        model_version.is_active = True
        model_version.save(update_fields=["is_active"])
    return model_version


def model_version_delete(*, user, model_version: ModelVersion) -> None:
    """Delete a model version and its artifact. Labels accepted from its suggestions stay."""
    from django.core.files.storage import default_storage

    require_role(user, model_version.project, Role.ADMIN)
    artifact = model_version.artifact
    model_version.delete()
    if artifact:
        from inspection.storage import delete_tree

        transaction.on_commit(
            lambda: (
                delete_tree(artifact.rsplit("/", 1)[0])
                if "/" in artifact
                else default_storage.delete(artifact)
            )
        )


def active_model(project: Project) -> ModelVersion | None:
    return ModelVersion.objects.filter(
        project=project, kind=ModelVersion.Kind.ANOMALY, is_active=True
    ).first()


def inspection_run_start(
    *,
    user,
    project: Project,
    scope: str = InspectionRun.Scope.NEW,
    image_ids: list[int] | None = None,
    model_version: ModelVersion | None = None,
    require_user_role: bool = True,
) -> InspectionRun:
    """Run a model over images (reviewers and admins): selected ids, new images, or all."""
    if require_user_role:
        require_role(user, project, Role.REVIEWER)
    version = model_version or active_model(project)
    if version is None:
        raise ValidationError("This project has no active anomaly model: train one first.")
    if version.project_id != project.pk or version.status != ModelVersion.Status.READY:
        raise ValidationError("That model version is not a ready model of this project.")
    images = Image.objects.filter(project=project)
    if scope == InspectionRun.Scope.SELECTED:
        if not image_ids:
            raise ValidationError({"image_ids": "Select at least one image."})
        found = set(images.filter(pk__in=image_ids).values_list("id", flat=True))
        missing = sorted(set(image_ids) - found)
        if missing:
            raise ValidationError({"image_ids": f"Not images of this project: {missing[:10]}."})
        ids = [i for i in image_ids if i in found]
    elif scope in (InspectionRun.Scope.NEW, InspectionRun.Scope.ALL):
        candidates = images.exclude(pk__in=version.image_ids)
        if scope == InspectionRun.Scope.NEW:
            seen = ImageHeatmap.objects.filter(run__model_version=version).values_list(
                "image_id", flat=True
            )
            candidates = candidates.exclude(pk__in=seen)
        ids = list(candidates.order_by("id").values_list("id", flat=True))
    else:
        raise ValidationError({"scope": "Use selected, new or all."})
    if not ids:
        raise ValidationError("There is nothing to inspect: no images match.")
    with transaction.atomic():
        run = InspectionRun.objects.create(
            project=project,
            model_version=version,
            scope=scope,
            image_ids=ids,
            params=inspection_settings(project),  # what the run uses, kept with its figures
            created_by=user,
        )
        run.job = job_enqueue(
            kind="anomaly_inspect", user=user, project=project, payload={"run": run.pk}
        )
        run.save(update_fields=["job"])
    return run
