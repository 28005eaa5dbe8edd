"""Anomaly model versions and inspection runs: train, activate, delete, inspect.

Training and inspection are background jobs on the ``gpu`` queue (workers/tasks/anomaly.py); these
functions check the rules and enqueue them.
"""

from __future__ import annotations

import json
import statistics

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Max, Min, Q
from django.db.models.functions import Greatest

from inspection.models import (
    Image,
    InspectionRegion,
    InspectionRun,
    Job,
    ModelVersion,
    Project,
    Role,
)
from inspection.permissions import require_role
from inspection.services.jobs import job_enqueue
from inspection.services.maintenance import maintenance_hook
from inspection.services.projects import inspection_settings, is_number

ARCHITECTURES = (
    "padim",
    "patchcore",
    "patchcore_fine",
    "efficientad",
    "stfpm",
    "fastflow",
    "cflow",
    "autoencoder",
    "lbp",
    "lbp_image",
    "lines",
)
# TrainConfig fields a user may set from the API (everything else stays at the engine default;
# steps, batch size and learning rate left out are the chosen model's own).
TRAIN_PARAMS = {
    "input_size",
    "steps",
    "batch_size",
    "learning_rate",
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
    "lines",
    "multiscale",
    "multiscale_fusion",
    "shading",
}
# The engine's smallest input per model where it is above 64 px (workers/anomaly/models,
# ModelSpec.min_input_size; a test keeps the two the same): checked before a job is queued.
MIN_INPUT_SIZE = {"efficientad": 256}
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
    lines = params.get("lines", False)
    if not isinstance(lines, bool):
        raise ValidationError(
            {"params": "lines (a dark-line detector beside it) is true or false."}
        )
    sizes = params.get("multiscale", [])
    size = params.get("input_size", 256)
    if sizes and not (
        isinstance(sizes, list)
        and 2 <= len(sizes) <= 3
        and all(type(n) is int for n in sizes)
        and len(set(sizes)) == len(sizes)
        and max(sizes) == size
        and all(n >= 32 and n % 32 == 0 and size % n == 0 for n in sizes)
    ):
        raise ValidationError(
            {
                "params": "multiscale lists 2 or 3 input sizes fused into one model: the input "
                f"size ({size}) and sizes that divide it, multiples of 32 (e.g. [{size}, "
                f"{size // 2}])."
            }
        )
    if params.get("multiscale_fusion", "mean") not in ("mean", "max"):
        raise ValidationError({"params": "multiscale_fusion is mean or max."})
    shading = params.get("shading", 0)
    if not (is_number(shading) and 0 <= shading <= 1):
        raise ValidationError(
            {
                "params": "shading corrects each image's lighting: the blur as a fraction of its "
                "shorter side, in [0, 1] (0: off; the models page uses 0.2)."
            }
        )


def _check_input_size(architecture: str, params: dict) -> None:
    """The input size the engine would refuse for this model (and the line detector beside
    itself), refused before anything is queued."""
    if architecture == "lines" and params.get("lines"):
        raise ValidationError({"params": "lines adds the line detector beside another model."})
    size = params.get("input_size", 256)
    minimum = MIN_INPUT_SIZE.get(architecture, 64)
    if not (type(size) is int and size >= minimum and size % 32 == 0):
        raise ValidationError(
            {
                "params": f"input_size is a multiple of 32 and {minimum} px or more for "
                f"{architecture}."
            }
        )


def _checked_train_params(params: dict | None) -> dict:
    """Training parameters a user may set, with the tiles' checked before anything is queued
    (the training job checks the others)."""
    params = dict(params or {})
    unknown = set(params) - TRAIN_PARAMS
    if unknown:
        raise ValidationError({"params": f"Unknown parameter(s): {', '.join(sorted(unknown))}."})
    _check_geometry(params)
    return params


def training_geometry_hint(project: Project) -> dict:
    """How big the project's normal images are, and whether tiles should be the default."""
    sides = [max(w, h) for w, h in training_images(project).values_list("width", "height")]
    if not sides:
        return {"median_long_side": None, "tiles": False}
    median = round(statistics.median(sides))
    return {"median_long_side": median, "tiles": median >= TILES_FROM_LONG_SIDE}


def comparison_rank(figures: dict | None) -> tuple:
    """The leaderboard's rule, higher is better: region recall at <= 1 false region per good
    image (what reviewers see), then image AUROC, then pixel AUROC; a missing or undefined
    figure ranks lowest. The comparison job picks its best row by it, and the models page its
    best model per defect kind."""
    f = figures or {}
    return tuple(
        -1.0 if f.get(k) is None or f.get(k) != f.get(k) else f[k]
        for k in ("region_recall", "image_auroc", "pixel_auroc")
    )


def weakest_kind(figures: dict | None) -> str:
    """The defect kind a model does worst on by :func:`comparison_rank`, in words for a job's
    message ("weakest on crack: 2 of 5 regions found"); empty with fewer than two kinds with
    regions, where the whole set's figures already say it, and when even that kind's regions
    were all found."""
    kinds = {
        k: f for k, f in ((figures or {}).get("by_type") or {}).items() if f and f.get("regions")
    }
    if len(kinds) < 2:
        return ""
    kind, f = min(kinds.items(), key=lambda item: comparison_rank(item[1]))
    found = round((f.get("region_recall") or 0) * f["regions"])
    if found >= f["regions"]:
        return ""
    return f"weakest on {kind}: {found} of {f['regions']} regions found"


def anomaly_setup(params: dict | None) -> str:
    """How an anomaly model sees its images, in the words of the models table and the
    leaderboard, from its training parameters: "whole image at 256 px; lighting corrected"."""
    p = params or {}
    size = p.get("input_size") or 256
    if p.get("scale"):
        scale = "full resolution" if p["scale"] == 1 else f"scale {p['scale']:g}"
        text = f"tiles of {size} px at {scale}"
        if p.get("coarse_pass"):
            text += " + whole-image pass"
    else:
        text = f"whole image at {size} px"
    if p.get("multiscale"):
        text += "; scales " + " + ".join(str(s) for s in p["multiscale"]) + " px fused"
        if p.get("multiscale_fusion", "mean") != "mean":
            text += f" by their {p['multiscale_fusion']}"
    if p.get("shading"):
        text += "; lighting corrected"
    if p.get("lines"):
        text += "; + line detector"
    # whatever else was set (steps, seed, coreset ratio...), as it was given
    told = {"model", "region", "input_size", "scale", "coarse_pass", "multiscale"}
    told |= {"multiscale_fusion", "shading", "lines"}
    rest = [f"{k} {p[k]}" for k in sorted(p) if k not in told]
    return "; ".join([text, *rest])


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
    params = _checked_train_params(params)
    _check_input_size(architecture, params)
    ids = list(training_images(project).order_by("id").values_list("id", flat=True))
    if len(ids) < MIN_NORMAL_IMAGES:
        raise ValidationError(
            f"Training needs at least {MIN_NORMAL_IMAGES} normal (defect-free) images; the project has {len(ids)}."
        )
    return model_version_create(
        user=user,
        project=project,
        kind=ModelVersion.Kind.ANOMALY,
        architecture=architecture,
        params={"model": architecture, **params},
        image_ids=ids,
        activate=activate,
    )


# A comparison scores the models on this share of the training normal images (every n-th by
# id, at least one), trained on the rest, on the normal images of the test split, and on every
# image with reviewed labels.
COMPARE_NORMAL_EVERY = 5
# At most this many versions (architectures times settings) in one comparison.
MAX_COMPARED = 8


def _checked_variants(variants: list[dict] | None) -> list[dict]:
    """The settings each architecture is tried with (``[{}]``: only the shared parameters),
    e.g. ``[{}, {"shading": 0.2}]``: without and with the shading correction. Each is a set of
    training parameters laid over the shared ones (two that come out the same are refused
    once laid over them, in ``model_comparison_start``)."""
    variants = [{}] if variants is None else list(variants)
    if not variants or not all(isinstance(v, dict) for v in variants):
        raise ValidationError({"variants": 'Give a list of settings, e.g. [{}, {"shading": 0.2}].'})
    for v in variants:
        unknown = set(v) - TRAIN_PARAMS
        if unknown:
            raise ValidationError(
                {"variants": f"Unknown parameter(s): {', '.join(sorted(unknown))}."}
            )
    return variants


def _canonical(params: dict) -> str:
    """Training parameters as a key that two equal settings share: defaults dropped (shading
    0, no scale, 256 px, no coarse pass, no line detector), 1 and 1.0 alike."""
    defaults = {"shading": 0, "scale": None, "input_size": 256, "coarse_pass": False}
    defaults["lines"] = False
    kept = {
        k: float(v) if type(v) is int else v
        for k, v in params.items()
        if not (k in defaults and v == defaults[k])
    }
    return json.dumps(kept, sort_keys=True)


def model_comparison_start(
    *,
    user,
    project: Project,
    architectures: list[str],
    params: dict | None = None,
    variants: list[dict] | None = None,
) -> Job:
    """Start a comparison (the leaderboard, project admins): one new version per architecture
    and setting (``variants``, e.g. without and with the shading correction), all trained on
    the same normal images, then scored on the normal images set aside here (one in five of
    the training normals, and every normal image of the test split) and on the images with
    reviewed labels (workers/tasks/anomaly_compare.py). No version becomes active: an
    admin activates the one the table says is best."""
    require_role(user, project, Role.ADMIN)
    chosen = list(dict.fromkeys(architectures or []))
    if not chosen or len(chosen) > MAX_COMPARED or set(chosen) - set(ARCHITECTURES):
        raise ValidationError(
            {"architectures": f"Choose 1 to {MAX_COMPARED} of {', '.join(ARCHITECTURES)}."}
        )
    variants = _checked_variants(variants)
    if len(chosen) * len(variants) > MAX_COMPARED:
        raise ValidationError(
            {
                "variants": f"{len(chosen)} model(s) in {len(variants)} settings make "
                f"{len(chosen) * len(variants)} versions; a comparison trains at most "
                f"{MAX_COMPARED}: untick some models or settings."
            }
        )
    shared = _checked_train_params(params)
    merged = []
    for i, v in enumerate(variants, 1):
        try:
            merged.append(_checked_train_params({**shared, **v}))
            for a in chosen:
                _check_input_size(a, merged[-1])
        except ValidationError as exc:
            if v == {} and len(variants) == 1:  # the shared parameters alone
                raise
            raise ValidationError(
                {"variants": f"Setting {i} ({json.dumps(v)}): {' '.join(exc.messages)}"}
            ) from None
    if len({_canonical(p) for p in merged}) < len(merged):
        raise ValidationError(
            {"variants": "Two of the settings are the same once laid over the shared parameters."}
        )
    # architecture by architecture, each in every setting (the table's order)
    candidates = [(a, p) for a in chosen for p in merged]
    ids = list(training_images(project).order_by("id").values_list("id", flat=True))
    kept_aside = ids[::COMPARE_NORMAL_EVERY]
    aside = set(kept_aside)  # once: a project may have thousands of normal images
    training = [i for i in ids if i not in aside]
    # normal images of the test split are never trained on: every one of them is scored too
    tested = Image.objects.filter(project=project, is_normal=True, split=Image.Split.TEST)
    scoring = sorted([*kept_aside, *tested.values_list("id", flat=True)])
    if len(training) < MIN_NORMAL_IMAGES:
        raise ValidationError(
            f"A comparison needs at least {MIN_NORMAL_IMAGES + 1} normal images (one in "
            f"{COMPARE_NORMAL_EVERY} is kept aside to score the models); the project has {len(ids)}."
        )
    with transaction.atomic():
        versions = [
            _new_version(
                user=user,
                project=project,
                kind=ModelVersion.Kind.ANOMALY,
                architecture=a,
                params={"model": a, **p},
                image_ids=training,
            )
            for a, p in candidates
        ]
        job = job_enqueue(
            kind="anomaly_compare",
            user=user,
            project=project,
            payload={
                "versions": [v.pk for v in versions],
                "architectures": chosen,
                "variants": variants,
                "eval_normal_ids": scoring,
            },
        )
        ModelVersion.objects.filter(pk__in=[v.pk for v in versions]).update(job=job)
    return job


def latest_comparison(project: Project) -> Job | None:
    """The project's newest comparison job (the models page shows its table)."""
    return (
        Job.objects.filter(project=project, kind="anomaly_compare").order_by("-created_at").first()
    )


# A detector's boxes under this confidence are not suggested (SAHI merges what is left).
DETECTION_SCORE_THRESHOLD = 0.3

# What trains and what runs each kind of model (job kinds registered in workers/tasks/).
JOB_KINDS = {
    ModelVersion.Kind.ANOMALY: {"train": "anomaly_train", "run": "anomaly_inspect"},
    ModelVersion.Kind.DETECTOR: {"train": "detection_train", "run": "detection_inspect"},
    ModelVersion.Kind.CHANGE: {"train": "change_calibrate", "run": "change_inspect"},
}

#: What each kind is called in a sentence.
KIND_NAMES = {
    ModelVersion.Kind.ANOMALY: "anomaly model",
    ModelVersion.Kind.DETECTOR: "detector",
    ModelVersion.Kind.CHANGE: "change detector",
}

# The change detector: frozen ImageNet features of an image and of its aligned reference
# (workers/change/heatmap.py); "training" fits where unchanged pairs end (the calibration).
CHANGE_ARCHITECTURE = "lite0-difference"
CHANGE_PARAMS = {"quantile": (0.9, 0.999999), "pixel_weight": (0.0, 10.0)}


def aligned_pairs(project: Project):
    """Images of the project compared with a reference that was aligned (ok)."""
    return Image.objects.filter(project=project, reference__isnull=False, alignment__status="ok")


def change_calibration_images(project: Project):
    """The pairs a change detector calibrates on: aligned pairs whose image is normal (nothing
    changed) or labelled (its labels are masked out: the rest is unchanged), minus the test
    split."""
    return (
        aligned_pairs(project)
        .exclude(split=Image.Split.TEST)
        .filter(Q(is_normal=True) | Q(annotations__isnull=False))
        .distinct()
    )


def change_model_calibrate(
    *, user, project: Project, params: dict | None = None, activate: bool = True
) -> ModelVersion:
    """Fit a change detector on the project's pairs (project admins): see
    :func:`change_calibration_images`. ``params``: ``quantile`` of unchanged scores that becomes
    the threshold, ``pixel_weight`` of the grey-level difference beside the features."""
    require_role(user, project, Role.ADMIN)
    params = dict(params or {})
    unknown = set(params) - set(CHANGE_PARAMS)
    if unknown:
        raise ValidationError({"params": f"Unknown parameter(s): {', '.join(sorted(unknown))}."})
    for key, (lo, hi) in CHANGE_PARAMS.items():
        if key in params:
            value = params[key]
            if isinstance(value, bool) or not is_number(value) or not lo <= value <= hi:
                raise ValidationError({"params": f"{key} must be a number from {lo} to {hi}."})
    ids = list(change_calibration_images(project).order_by("id").values_list("id", flat=True))
    if not ids:
        raise ValidationError(
            "A change detector calibrates on aligned pairs that are normal or labelled: this "
            "project has none (pair images with references first: docs/references.md)."
        )
    return model_version_create(
        user=user,
        project=project,
        kind=ModelVersion.Kind.CHANGE,
        architecture=CHANGE_ARCHITECTURE,
        params=params,
        image_ids=ids,
        activate=activate,
    )


def model_version_create(
    *,
    user,
    project: Project,
    kind: str,
    architecture: str,
    params: dict,
    image_ids: list[int],
    activate: bool = True,
) -> ModelVersion:
    """A new version (numbered per project and kind) and its training job (callers checked the
    role and the parameters)."""
    with transaction.atomic():
        version = _new_version(
            user=user,
            project=project,
            kind=kind,
            architecture=architecture,
            params=params,
            image_ids=image_ids,
        )
        version.job = job_enqueue(
            kind=JOB_KINDS[kind]["train"],
            user=user,
            project=project,
            payload={"model_version": version.pk, "activate": activate},
        )
        version.save(update_fields=["job"])
    return version


def _new_version(
    *, user, project: Project, kind: str, architecture: str, params: dict, image_ids: list[int]
) -> ModelVersion:
    """The next version number of this kind in the project (call inside a transaction)."""
    number = (
        ModelVersion.objects.filter(project=project, kind=kind).aggregate(n=Max("number"))["n"] or 0
    ) + 1
    return ModelVersion.objects.create(
        project=project,
        number=number,
        kind=kind,
        architecture=architecture,
        params=params,
        image_ids=image_ids,
        created_by=user,
    )


def model_version_activate(*, user, model_version: ModelVersion) -> ModelVersion:
    """Make this version the one inspections use (project admins)."""
    require_role(user, model_version.project, Role.ADMIN)
    if model_version.status != ModelVersion.Status.READY:
        raise ValidationError("Only a trained (ready) model version can be made active.")
    if model_version.params.get("region"):
        raise ValidationError(
            "This model was trained on one region of the part: it is that region's model "
            "(regions page), not the whole image's."
        )
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


def model_version_folder(model_version: ModelVersion) -> str:
    """Where a version's training keeps its files while it trains (a detector's checkpoint) and,
    for detectors, its model: deleted with the version."""
    return f"projects/{model_version.project_id}/models/{model_version.kind}-{model_version.pk}"


def model_version_delete(*, user, model_version: ModelVersion) -> None:
    """Delete a model version and its files (a training still running is cancelled). Labels
    accepted from its suggestions stay."""
    from django.core.files.storage import default_storage

    from inspection.storage import delete_tree

    require_role(user, model_version.project, Role.ADMIN)
    artifact = model_version.artifact
    folder = model_version_folder(model_version)
    if model_version.job_id and model_version.status == ModelVersion.Status.TRAINING:
        Job.objects.filter(pk=model_version.job_id).exclude(status__in=Job.FINISHED).update(
            cancel_requested=True
        )
    model_version.delete()
    transaction.on_commit(lambda: delete_tree(folder))
    if artifact:
        transaction.on_commit(
            lambda: (
                delete_tree(artifact.rsplit("/", 1)[0])
                if "/" in artifact
                else default_storage.delete(artifact)
            )
        )


def regions_snapshot(project: Project) -> dict:
    """The project's regions of interest as a run uses them (kept in its params: the
    run inspects them as they were when it started, and a run with other regions replaces the
    suggestions of one without); ``{}`` without regions."""
    rows = list(
        InspectionRegion.objects.filter(project=project)
        .order_by("id")
        .values("id", "name", "reference_id", "polygon", "mode", "threshold", "model_version_id")
    )
    return {"regions": rows} if rows else {}


def _run_params(project: Project, version: ModelVersion) -> dict:
    """What a run of ``version`` keeps in its ``params``: the project's inspection settings (a
    detector's: its score threshold, the orientations it predicts each image in and where the
    regions leave the outside) and its regions of interest as they are when it starts."""
    regions = regions_snapshot(project)
    settings = inspection_settings(project)
    if version.kind != ModelVersion.Kind.DETECTOR:
        return settings | regions
    params = {"score_threshold": DETECTION_SCORE_THRESHOLD}
    if settings["detector_views"] > 1:  # runs from before the setting predicted one view
        params["views"] = settings["detector_views"]
    if regions:
        params |= regions | {"outside_regions": settings["outside_regions"]}
    return params


def active_model(project: Project, kind: str = ModelVersion.Kind.ANOMALY) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, kind=kind, is_active=True).first()


def images_outside_trained_size(version: ModelVersion | None) -> dict | None:
    """For an active tiled anomaly model: the project's other images whose long side is outside
    the range it inspects as they are (the engine's ``accepted_long_sides``, stored with the
    version as it is trained). The job inspects those resized into that range, so a 20 MP photo
    in a project of 900 px normals loses detail; the models page says so before anyone runs an
    inspection (issue #17). None when there are none, or for a model that sees whole images
    (every image is resized to its input anyway)."""
    metrics = (version.metrics or {}) if version else {}
    if not metrics.get("accepted_long_sides") or not metrics.get("trained_long_sides"):
        return None
    lo, hi = metrics["accepted_long_sides"]
    trained_max = metrics["trained_long_sides"][1]
    outside = (
        Image.objects.filter(project_id=version.project_id)
        .exclude(pk__in=version.image_ids)
        .annotate(long=Greatest("width", "height"))
        .filter(Q(long__lt=lo) | Q(long__gt=hi))
        .aggregate(count=Count("id"), smallest=Min("long"), largest=Max("long"))
    )
    if not outside["count"]:
        return None
    return {
        "count": outside["count"],
        "accepted_min": lo,
        "accepted_max": hi,
        "smallest": outside["smallest"],
        "largest": outside["largest"],
        # the largest photo is inspected resized to the training images' largest long side:
        # this many times smaller (its details shrink as much)
        "shrink": round(outside["largest"] / trained_max, 1) if outside["largest"] > hi else None,
    }


def images_run_by(version: ModelVersion) -> set[int]:
    """Ids of the images a version's runs have looked at (not those that failed)."""
    seen: set[int] = set()
    for results in InspectionRun.objects.filter(model_version=version).values_list(
        "results", flat=True
    ):
        seen.update(int(k) for k, r in (results or {}).items() if "error" not in r)
    return seen


def inspection_run_start(
    *,
    user,
    project: Project,
    scope: str = InspectionRun.Scope.NEW,
    image_ids: list[int] | None = None,
    model_version: ModelVersion | None = None,
    kind: str = ModelVersion.Kind.ANOMALY,
    require_user_role: bool = True,
) -> InspectionRun:
    """Run a model over images (reviewers and admins): selected ids, new images, or all. Without
    ``model_version``, the project's active model of ``kind``."""
    if require_user_role:
        require_role(user, project, Role.REVIEWER)
    version = model_version or active_model(project, kind)
    if version is None:
        what = KIND_NAMES.get(kind, kind)
        raise ValidationError(f"This project has no active {what}: train one first.")
    if version.project_id != project.pk or version.status != ModelVersion.Status.READY:
        raise ValidationError("That model version is not a ready model of this project.")
    if version.params.get("region"):
        raise ValidationError(
            "That model was trained on one region of the part: runs use it inside that region "
            "with the project's active model."
        )
    images = Image.objects.filter(project=project)
    if version.compares_with_reference:
        # only images with an aligned reference can be compared; others are refused by name
        # when selected, left out otherwise
        if scope == InspectionRun.Scope.SELECTED and image_ids:
            unpaired = list(
                images.filter(pk__in=image_ids)
                .exclude(pk__in=aligned_pairs(project))
                .values_list("original_name", flat=True)[:5]
            )
            if unpaired:
                raise ValidationError(
                    {
                        "image_ids": "No aligned reference to compare with: "
                        + ", ".join(unpaired)
                        + " (docs/references.md)."
                    }
                )
        images = aligned_pairs(project)
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
            seen = images_run_by(version)  # filtered here: a long list is no SQL parameter
        else:
            seen = set()
        ids = [i for i in candidates.order_by("id").values_list("id", flat=True) if i not in seen]
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
            # what the run uses, kept with its figures; every kind of run honours the regions
            # of interest (a detector's boxes by their centres)
            params=_run_params(project, version),
            created_by=user,
        )
        run.job = job_enqueue(
            kind=JOB_KINDS[version.kind]["run"], user=user, project=project, payload={"run": run.pk}
        )
        run.save(update_fields=["job"])
    return run


@maintenance_hook("fail model versions whose training ended")
def model_versions_fail_orphans() -> int:
    """A version whose training job ended without finishing it (cancelled before it started,
    given up after lost workers, failed outside the job body) is failed, and its files deleted.
    Returns how many."""
    from inspection.storage import delete_tree

    stuck = list(
        ModelVersion.objects.filter(
            status=ModelVersion.Status.TRAINING, job__status__in=Job.FINISHED
        ).exclude(job__status=Job.Status.SUCCEEDED)
    )
    for version in stuck:
        ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.TRAINING).update(
            status=ModelVersion.Status.FAILED
        )
        delete_tree(model_version_folder(version))
    return len(stuck)
