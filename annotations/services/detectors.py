"""Detector training from a frozen dataset version: what the form proposes, and the checks
before the training job (kind ``detection_train``, ``gpu`` queue) is queued.

A detector learns from a dataset version as it was frozen (its train split, its val split for
the per-epoch figures), so the model version records which version, and the lineage version ->
model -> runs -> suggestions can always be followed.

Slicing (SAHI's rule, and the reason the model must be trained at the resolution it predicts
at): when the images are much larger than the network's input, the job trains on random
``input_size`` crops at full resolution and prediction cuts images into slices of that same
size; the slice settings are stored with the model and every run uses them.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from annotations.models import Annotation, DatasetVersion
from annotations.services.categories import categories_by_name
from annotations.services.dataset_versions import dataset_version_freeze
from inspection.models import Job, ModelVersion, Project, Role
from inspection.permissions import require_role
from inspection.services.inspections import JOB_KINDS, model_version_create
from inspection.services.maintenance import maintenance_hook
from inspection.services.projects import is_number

log = logging.getLogger(__name__)

# The backbones the app offers (workers/detection builds them; the web process never imports
# it, so tests/workers/tasks/test_detection.py checks that the job knows every one).
BACKBONES = {
    "lite0": "EfficientNet-Lite0, ImageNet-pretrained: for small datasets",
    "s": "CSPResNet s (PP-YOLOE+-SOD s, from scratch)",
    "m": "CSPResNet m",
    "l": "CSPResNet l",
}
# Images whose median long side exceeds the input size this many times are trained and
# predicted as slices of the input size (smaller ones are resized whole, as PaddleDetection does).
SLICE_FROM = 1.5
# Seconds per training image on a 2-core CPU worker (one torch thread, the worker's default
# there; batch 4, multi-scale 320..768 around 640), measured 2026-12-02 with
# `OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/detector_loop.py
# --estimate`; the form's time estimate scales them by the input's area.
SECONDS_PER_IMAGE = {"lite0": 4.35, "s": 2.85, "m": 6.35, "l": 12.3}  # at 640 px

LIMITS = {
    "input_size": (160, 1280),
    "epochs": (1, 500),
    "batch_size": (1, 64),
    "iterations_per_epoch": (1, 100_000),
}


def _aligned(image: dict) -> bool:
    """A frozen image entry with a reference that was aligned when the version was frozen."""
    return ((image.get("reference") or {}).get("alignment") or {}).get("status") == "ok"


def _version_facts(version: DatasetVersion) -> dict[str, Any]:
    content = version.content or {}
    train = {im["id"]: im for im in content.get("images", []) if im["split"] == "train"}
    val = [im for im in content.get("images", []) if im["split"] == "val"]
    shapes = content.get("shapes", [])
    per_category: dict[str, dict[str, int]] = {}
    split_of = {im["id"]: im["split"] for im in content.get("images", [])}
    box_sides = []
    for s in shapes:
        row = per_category.setdefault(s["category"], {"train": 0, "val": 0, "test": 0})
        row[split_of.get(s["image"], "train")] += 1
        if s["image"] in train:
            g = s["geometry"]
            if g["type"] == "box":
                w, h = g["w"], g["h"]
            else:
                xs = [p[0] for p in g["points"]]
                ys = [p[1] for p in g["points"]]
                w, h = max(xs) - min(xs), max(ys) - min(ys)
            box_sides.append(min(w, h))
    long_sides = [max(im["width"], im["height"]) for im in train.values()]
    labelled = {s["image"] for s in shapes if s["image"] in train}
    return {
        "train_images": len(train),
        # images frozen with a reference that was aligned: what a Siamese detector learns from
        "train_paired": sum(1 for im in train.values() if _aligned(im)),
        "train_labelled": len(labelled),
        # confirmed normal images and references: what the detector sees as negatives
        "train_negatives": len(train) - len(labelled),
        "train_labelled_paired": sum(1 for i in labelled if _aligned(train[i])),
        "val_images": len(val),
        "val_paired": sum(1 for im in val if _aligned(im)),
        "train_boxes": sum(r["train"] for r in per_category.values()),
        "per_category": per_category,
        "median_long_side": round(statistics.median(long_sides)) if long_sides else None,
        "median_box_side": round(statistics.median(box_sides), 1) if box_sides else None,
        "train_image_ids": sorted(train),
    }


def detector_proposal(
    *, user, version: DatasetVersion, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the training form proposes for ``version``, why, and how long it would take here;
    with ``params`` (the form's edits, checked as training would), their time instead."""
    require_role(user, version.project, Role.ADMIN)
    facts = _version_facts(version)
    reasons = []
    # slices or whole images follow the input size asked for (not only the default 640): a
    # 416 px input for 640 px photos is a slice decision too (it once stayed "whole", and
    # shrank every photo to 0.65x without saying so)
    asked = (params or {}).get("input_size")
    valid = isinstance(asked, int) and not isinstance(asked, bool) and asked > 0
    input_size = asked if valid else 640
    sliced = bool(facts["median_long_side"] and facts["median_long_side"] > SLICE_FROM * input_size)
    if sliced:
        reasons.append(
            f"The train images are {facts['median_long_side']} px on their long side (median), "
            f"over {SLICE_FROM:g}x the {input_size} px input: training and prediction use "
            f"{input_size} px slices at full resolution, so small defects keep their pixels."
        )
    else:
        reasons.append(
            f"The train images ({facts['median_long_side']} px median long side) are resized "
            f"whole to the {input_size} px input."
        )
    backbone = "lite0" if facts["train_boxes"] < 2000 else "s"
    reasons.append(
        f"{facts['train_boxes']} labelled boxes in the train split: "
        + (
            "the ImageNet-pretrained Lite0 backbone learns from few examples."
            if backbone == "lite0"
            else "enough to train CSPResNet s from scratch."
        )
    )
    if facts["median_box_side"] is not None and facts["median_box_side"] < 8:
        reasons.append(
            f"The defects are small ({facts['median_box_side']} px median short side): keep "
            "the full resolution (slices) rather than shrinking the images."
        )
    # stacked when most labelled train images have an aligned reference (docs/references.md)
    paired, labelled = facts["train_labelled_paired"], facts["train_labelled"]
    reference = "stacked" if labelled and paired >= 0.8 * labelled else "none"
    if reference == "stacked":
        reasons.append(
            f"{paired} of the {labelled} labelled train images have an aligned reference: the "
            "stacked detector takes each image's grey, its reference's grey and their "
            "difference as its input (images without one are left out). On DeepPCB, 40 epochs "
            "found 0.94 of the test defects against 0.85-0.86 for one image, and scored 0.84 "
            "test mAP50 against 0.70-0.75, at the single-image cost. It sees no colour: where "
            "colour tells a defect, the Siamese detector (reference: siamese, 1.56x the time) "
            "compares the colour images."
        )
    elif paired:
        reasons.append(
            f"Only {paired} of the {labelled} labelled train images have an aligned reference: "
            "the single-image detector learns from all of them."
        )
    if paired:
        reasons.append(
            f"{paired} labelled train images have an aligned reference: a PP-YOLOE-SOD's training "
            "can also copy their defects to places where the reference shows the same pattern "
            "(transplant; on DeepPCB 20 epochs went from 0.623 to 0.697 test mAP50, 40 showed no "
            "clear gain)."
        )
        reasons.append(
            "Scans of a near-binary pattern (PCB copper, print, masks) can use the two-stage "
            "change detector instead (reference: two-stage): the pixels that changed against the "
            "reference propose, a small network names the category and places the box."
        )
    negatives = facts["train_negatives"]
    if negatives:
        capped = epoch_negatives(labelled, negatives, NEGATIVE_SHARE)
        reasons.append(
            f"{negatives} of the {facts['train_images']} train images have no box (normal images, "
            "references): "
            + (
                "few enough to learn from all of them every epoch."
                if capped == negatives
                else f"each epoch learns from every labelled image and {capped} of them, drawn "
                f"afresh, so they are at most {NEGATIVE_SHARE:.0%} of it (on DeepPCB, every "
                "template every epoch doubled an epoch and scored lower than a tenth of them)."
                if capped
                else f"{NEGATIVE_SHARE:.0%} of an epoch of {labelled} labelled images is less "
                "than one image, so none of them is trained on; a larger share uses them."
            )
        )
    batch_size = 4
    # about 3000 training iterations when the data allow, within 10..80 epochs
    per_epoch = max(
        1, math.ceil((labelled + epoch_negatives(labelled, negatives, NEGATIVE_SHARE)) / batch_size)
    )
    epochs = max(10, min(80, round(3000 / per_epoch)))
    proposed = {
        "backbone": backbone,
        "input_size": input_size,
        "slice": sliced,
        "overlap": 0.25,
        "epochs": epochs,
        "batch_size": batch_size,
        "reference": reference,
        # quarter turns and vertical flips: only the user knows whether the parts have an "up"
        "rotate": False,
        "negatives": NEGATIVE_SHARE,
        # copy defects along the reference's pattern: one measured recipe, so the user's choice
        "transplant": False,
    }
    if (params or {}).get("reference") == "two-stage":
        # none of PP-YOLOE-SOD's settings: a value for one would be silently dropped, so no
        others = sorted(set(params) - TWO_STAGE_PARAMS)
        if others:
            raise ValidationError(
                {
                    "params": "The two-stage change detector takes only epochs, networks and "
                    "seed, not " + ", ".join(others) + "."
                }
            )
        networks = params.get("networks", TWO_STAGE_NETWORKS)
        lo, hi = TWO_STAGE_NETWORK_LIMITS
        if not (
            isinstance(networks, int) and not isinstance(networks, bool) and lo <= networks <= hi
        ):
            raise ValidationError({"params": f"networks is a whole number from {lo} to {hi}."})
        ppyoloe = {k: v for k, v in params.items() if k != "networks"}
        params = _checked(ppyoloe, {**proposed, "epochs": TWO_STAGE_EPOCHS})
        params = {k: params[k] for k in sorted(TWO_STAGE_PARAMS) if k in params}
        params["networks"] = networks
        images = facts["train_paired"]  # it learns from the paired images only (all of them)
    else:
        params = _checked(params, proposed) if params else proposed
        images = labelled + epoch_negatives(labelled, negatives, params["negatives"])
    estimate, basis = estimate_seconds(params, images, version.project, facts["val_paired"])
    return {
        "params": params,
        "proposed": proposed,
        "backbones": BACKBONES,
        "reasons": reasons,
        "facts": {k: v for k, v in facts.items() if k != "train_image_ids"},
        "estimate_seconds": estimate,
        "estimate_basis": basis,
    }


# Images without a box (confirmed normal images, references) are at most this share of an
# epoch's images, drawn afresh each epoch (``TrainConfig.negative_share``): on DeepPCB (135
# labelled train images, 135 templates) 20 epochs with every template doubled an epoch and
# scored 0.571 test mAP50, without any 0.605, and with at most 10 % 0.644 at 5 % more time
# (docs/benchmarks-detection.md, "Negatives").
NEGATIVE_SHARE = 0.1


def epoch_negatives(positives: int, negatives: int, share: float | None) -> int:
    """How many images without a box an epoch trains on: the rule of
    ``workers.detection.trainer.epoch_negatives``, which the apps may not import (a copy for the
    time estimate; tests/annotations/test_detectors.py checks that both agree)."""
    if share is None or share >= 1 or positives == 0:
        return negatives
    return min(negatives, math.floor(share / (1 - share) * positives + 1e-9))


# A Siamese detector runs its backbone on the image and on the reference: an epoch cost 1.56x a
# single-image one on the development CPU (docs/benchmarks-detection.md, section 4).
SIAMESE_COST = 1.56
# The two-stage change detector: 30 epochs, 0.32 s per pair and epoch on the development CPU
# (DeepPCB, about 38 changed places per pair: docs/benchmarks-detection.md, section 4). An epoch
# is at least 20 batches of 64 crops (``PairConfig.min_steps_per_epoch``): about 34 such pairs'
# worth, however few pairs there are. Validation predicts each val pair (1.05 s on DeepPCB)
# every 5 epochs and after the last.
TWO_STAGE_EPOCHS = 30
TWO_STAGE_SECONDS = 0.32
TWO_STAGE_MIN_PAIRS = 34
TWO_STAGE_PREDICT_SECONDS = 1.05
TWO_STAGE_EVAL_EVERY = 5
TWO_STAGE_PARAMS = {"epochs", "networks", "seed", "reference"}
# Networks trained one after the other from successive seeds, their outputs averaged
# (``PairConfig.networks``): on DeepPCB two networks averaged scored as the better of the two
# alone, whichever seed that was (docs/benchmarks-detection.md, section 4); each network costs
# its epochs again.
TWO_STAGE_NETWORKS = 2
TWO_STAGE_NETWORK_LIMITS = (1, 5)


def _images_per_epoch(params: dict[str, Any], train_images: int) -> int:
    if params.get("iterations_per_epoch"):
        return max(1, min(train_images, params["iterations_per_epoch"] * params["batch_size"]))
    return max(1, train_images)


def _cost(params: dict[str, Any]) -> float:
    """How much one training image costs under ``params`` against a single-image 640 px one."""
    siamese = SIAMESE_COST if params.get("reference") == "siamese" else 1.0
    return (params["input_size"] / 640) ** 2 * siamese


def measured_seconds_per_image(
    backbone: str, project: Project | None = None
) -> tuple[float, ModelVersion] | None:
    """Seconds per training image (single-image detector, 640 px input) of the latest finished
    training of ``backbone`` on this installation's workers (``project``'s own first), from its
    own seconds per epoch (the median, validation excluded); None before the first one."""
    versions = list(
        ModelVersion.objects.filter(
            kind=ModelVersion.Kind.DETECTOR,
            status=ModelVersion.Status.READY,
            params__backbone=backbone,
        )
        .select_related("project")
        .order_by("-created_at")[:10]
    )
    if project is not None:  # the project's own trainings first (stable: newest first)
        versions.sort(key=lambda v: v.project_id != project.pk)
    for v in versions:
        history = [
            h
            for h in (v.metrics or {}).get("history") or []
            if isinstance(h.get("seconds"), int | float) and h["seconds"] > 0
        ]
        params = v.params or {}
        if not history or not v.image_ids or not params.get("input_size"):
            continue
        # the images an epoch trained on (a cap on negatives leaves some out), where recorded
        per_image = [
            h["seconds"] / (h.get("images") or _images_per_epoch(params, len(v.image_ids)))
            for h in history
        ]
        return statistics.median(per_image) / _cost(params), v
    return None


def estimate_seconds(
    params: dict[str, Any], train_images: int, project: Project | None = None, val_images: int = 0
) -> tuple[int | None, str]:
    """Training time of ``params`` on ``train_images`` and what it rests on, in words: this
    installation's latest training of the same backbone (``project``'s own first; another
    project's is not named: its members may not be this one's), else the development
    machine's figures (None: no figure for this backbone). For the two-stage change detector
    (no backbone: the benchmark's figures) ``val_images`` are the val pairs it validates on."""
    if params.get("reference") == "two-stage":
        epochs, networks = params["epochs"], params.get("networks", 1)
        seconds = TWO_STAGE_SECONDS * max(TWO_STAGE_MIN_PAIRS, train_images) * epochs * networks
        # each network validates every 5 epochs and after its last
        evaluations = math.ceil(epochs / TWO_STAGE_EVAL_EVERY) * networks
        seconds += TWO_STAGE_PREDICT_SECONDS * val_images * evaluations
        return round(seconds), (
            "as the DeepPCB benchmark on a 2-core CPU like the development machine (about 38 "
            "changed places per pair: more take longer, fewer less), validation included"
        )
    measured = measured_seconds_per_image(params["backbone"], project)
    if measured is not None:
        per_image, version = measured
        basis = f"as fast as the latest {params['backbone']} training " + (
            f"of this project (v{version.number})"
            if project is not None and version.project_id == project.pk
            else "on this installation"
        )
    else:
        per_image = SECONDS_PER_IMAGE.get(params["backbone"])
        basis = "on a 2-core CPU worker like the development machine (a GPU takes far less)"
        if per_image is None:
            return None, ""
    epochs = _images_per_epoch(params, train_images) * params["epochs"]
    return round(per_image * _cost(params) * epochs), basis


TRAINING_PARAMS = {"backbone", "input_size", "slice", "overlap", "epochs", "batch_size"}
TRAINING_PARAMS |= {"iterations_per_epoch", "seed", "reference", "rotate", "negatives"}
TRAINING_PARAMS |= {"transplant"}
# The share of training images whose defects are copied along their reference's pattern when
# a training asks for it (``TrainConfig.reference_transplant``; docs/detection.md).
TRANSPLANT_SHARE = 0.5
REFERENCE_MODES = ("none", *ModelVersion.PAIRED_DETECTORS)


def _checked(params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - TRAINING_PARAMS
    if unknown:
        raise ValidationError({"params": f"Unknown parameter(s): {', '.join(sorted(unknown))}."})
    out = {**defaults, **params}
    if out["backbone"] not in BACKBONES:
        raise ValidationError({"params": f"backbone is one of {', '.join(BACKBONES)}."})
    for name, (lo, hi) in LIMITS.items():
        value = out.get(name)
        if value is None and name == "iterations_per_epoch":
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
            raise ValidationError({"params": f"{name} is a whole number from {lo} to {hi}."})
    if out["input_size"] % 32:
        raise ValidationError({"params": "input_size is a multiple of 32 (the network's stride)."})
    if not isinstance(out["slice"], bool):
        raise ValidationError({"params": "slice is true or false."})
    out.setdefault("rotate", False)  # versions trained before it was a choice
    if not isinstance(out["rotate"], bool):
        raise ValidationError({"params": "rotate is true or false."})
    out.setdefault("transplant", False)  # versions trained before it was a choice
    if not isinstance(out["transplant"], bool):
        raise ValidationError({"params": "transplant is true or false."})
    out.setdefault("negatives", None)  # versions trained before it was a choice: all of them
    if out["negatives"] is not None and not (
        is_number(out["negatives"]) and 0 <= out["negatives"] <= 1
    ):
        raise ValidationError(
            {
                "params": "negatives is the largest share of an epoch's images that have no box, "
                "from 0 to 1 (null: every one of them)."
            }
        )
    if not (is_number(out["overlap"]) and 0 <= out["overlap"] <= 0.5):
        raise ValidationError({"params": "overlap is a fraction of a slice from 0 to 0.5."})
    if "seed" in out and not (isinstance(out["seed"], int) and not isinstance(out["seed"], bool)):
        raise ValidationError({"params": "seed is a whole number."})
    out.setdefault("reference", "none")
    if out["reference"] not in REFERENCE_MODES:
        raise ValidationError(
            {
                "params": "reference is 'none' (one image), 'siamese' (the image and its "
                "reference through one backbone), 'stacked' (the image, its reference and their "
                "difference as the input channels) or 'two-stage' (the pixels that changed "
                "against the reference, then a pair classifier)."
            }
        )
    return out


def detector_train(
    *,
    user,
    project: Project,
    version: DatasetVersion,
    params: dict[str, Any] | None = None,
    activate: bool = True,
) -> ModelVersion:
    """Start training a detector on a frozen dataset version (project admins). Parameters not
    given take the proposal's values."""
    require_role(user, project, Role.ADMIN)
    if version.project_id != project.pk:
        raise ValidationError("That dataset version belongs to another project.")
    clean = detector_proposal(user=user, version=version, params=params or {})["params"]
    facts = _version_facts(version)
    if not facts["train_boxes"]:
        raise ValidationError(
            f"Dataset version {version.number} has no labels in its train split: freeze approved "
            "labels first (or include pending ones)."
        )
    if clean["reference"] in ModelVersion.PAIRED_DETECTORS and not facts["train_labelled_paired"]:
        what = {"siamese": "A Siamese", "stacked": "A stacked"}.get(
            clean["reference"], "A two-stage change"
        )
        raise ValidationError(
            {
                "params": f"{what} detector learns from images with an aligned reference: none "
                f"of the labelled train images of dataset version {version.number} has one."
            }
        )
    if clean.get("transplant") and not facts["train_labelled_paired"]:
        raise ValidationError(
            {
                "params": "Copying defects along the reference's pattern (transplant) needs "
                "labelled train images with an aligned reference: none of dataset version "
                f"{version.number}'s has one."
            }
        )
    categories = sorted(facts["per_category"], key=str.lower)
    known = categories_by_name(project)
    if clean["reference"] == "two-stage":  # epochs and seed only (detector_proposal)
        architecture = "two-stage-change"
    else:
        paired = "" if clean["reference"] == "none" else f"-{clean['reference']}"
        architecture = f"ppyoloe-sod-{clean['backbone']}{paired}"
    return model_version_create(
        user=user,
        project=project,
        kind=ModelVersion.Kind.DETECTOR,
        architecture=architecture,
        params={
            **clean,
            "dataset_version": version.pk,
            "dataset_number": version.number,
            "content_hash": version.content_hash,
            "categories": categories,
            # runs match the detector's names to the project's categories by these ids, so a
            # category renamed after the training still gets its boxes
            "category_ids": {n: known[n.lower()].pk for n in categories if n.lower() in known},
        },
        image_ids=facts["train_image_ids"],
        activate=activate,
    )


# --- the optional retrain trigger -----------------------------------------------------------


def detector_new_labels(project: Project) -> dict[str, Any] | None:
    """How many approved labels were added since the active detector's dataset version was
    frozen (labels of that version edited since do not count: they are not new), with the
    detector and its version; None without an active detector."""
    active = (
        ModelVersion.objects.filter(
            project=project,
            kind=ModelVersion.Kind.DETECTOR,
            is_active=True,
            status=ModelVersion.Status.READY,
        )
        .select_related("created_by")
        .first()
    )
    if active is None:
        return None
    dataset = DatasetVersion.objects.filter(pk=active.params.get("dataset_version")).first()
    frozen = {s.get("annotation") for s in (dataset.content if dataset else {}).get("shapes", [])}
    new = (
        Annotation.objects.filter(
            image__project=project, review_status=Annotation.ReviewStatus.APPROVED
        )
        .exclude(source=Annotation.Source.GROUND_TRUTH)
        .exclude(pk__in=[a for a in frozen if a is not None])
        .count()
    )
    return {"detector": active, "dataset": dataset, "new_labels": new}


@maintenance_hook("retrain detectors")
def detectors_retrain_due() -> list[ModelVersion]:
    """For each project with ``retrain_after_labels`` set (off by default): once that many
    approved labels were added since the active detector's dataset version, freeze a new version
    with the same freeze options and train the detector again with the same settings, as the
    admin who trained the active one. Only while the active detector is the project's newest:
    one retraining at a time, and one that failed (or a newer version left inactive) waits for
    a person instead of being retried every period. Returns the versions queued."""
    queued: list[ModelVersion] = []
    for project in Project.objects.filter(retrain_after_labels__isnull=False):
        try:
            version = _retrain_if_due(project)
        except (PermissionDenied, ValidationError) as exc:
            log.warning("project %s: automatic detector retraining not started: %s", project, exc)
            continue
        if version is not None:
            queued.append(version)
    return queued


def _retrain_if_due(project: Project) -> ModelVersion | None:
    with transaction.atomic():
        # the project row serialises two maintenance runs at once (beat and a worker's start)
        project = Project.objects.select_for_update().get(pk=project.pk)
        state = detector_new_labels(project)
        if state is None or state["new_labels"] < (project.retrain_after_labels or 0):
            return None
        active, dataset = state["detector"], state["dataset"]
        newest = (
            ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.DETECTOR)
            .order_by("-number")
            .first()
        )
        busy = Job.objects.filter(
            project=project,
            kind=JOB_KINDS[ModelVersion.Kind.DETECTOR]["train"],
            status__in=[Job.Status.QUEUED, Job.Status.RUNNING],
        ).exists()
        if newest != active or busy:
            return None
        if active.created_by is None:
            raise PermissionDenied(
                f"detector v{active.number} was trained by a user deleted since: train the "
                "next one by hand"
            )
        options = (dataset.options if dataset else {}) or {}
        frozen = dataset_version_freeze(
            user=active.created_by,
            project=project,
            note=(
                f"Frozen automatically: {state['new_labels']} approved labels since detector "
                f"v{active.number}'s dataset version" + (f" v{dataset.number}" if dataset else "")
            ),
            include_pending=bool(options.get("include_pending", False)),
            include_ground_truth=bool(options.get("include_ground_truth", False)),
            seed=options.get("seed", 0) if isinstance(options.get("seed"), int) else 0,
            ratios=options.get("ratios"),
        )
        params = {k: v for k, v in active.params.items() if k in TRAINING_PARAMS}
        version = detector_train(
            user=active.created_by, project=project, version=frozen, params=params
        )
        log.info(
            "project %s: %s new approved labels, dataset v%s frozen, detector v%s training",
            project,
            state["new_labels"],
            frozen.number,
            version.number,
        )
        return version
