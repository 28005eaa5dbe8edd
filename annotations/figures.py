"""An inspection run's figures: what reviewers decided, and, where ground truth exists, how the
suggestions compare with it (region recall, false suggestions per normal image, precision/recall
over the score threshold); for a detection run, per category against the images reviewers have
finished (:func:`detection_figures`).

Matching rule: a suggestion *hits* a ground-truth region when their overlap covers at least 10 %
of the region or at least 50 % of the suggestion (anomaly outlines are blobs, so IoU would punish
a correct but loose outline). A region is *found* at threshold t when a suggestion with score >= t
hits it; a suggestion is *true* when it hits any region of its image.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field

from django.db.models import Q
from shapely.geometry import Polygon
from shapely.geometry import box as shapely_box

from annotations.models import Annotation, DefectCategory, Suggestion
from inspection.models import Image, InspectionRun

MIN_REGION_COVER = 0.10
MIN_SUGGESTION_COVER = 0.50


def to_shape(geometry: dict):
    if geometry["type"] == "box":
        return shapely_box(
            geometry["x"],
            geometry["y"],
            geometry["x"] + geometry["w"],
            geometry["y"] + geometry["h"],
        )
    poly = Polygon(geometry["points"])
    return poly if poly.is_valid else poly.buffer(0)


def hits(suggestion, region) -> bool:
    if not suggestion.intersects(region):
        return False
    overlap = suggestion.intersection(region).area
    return overlap >= MIN_REGION_COVER * max(
        region.area, 1e-9
    ) or overlap >= MIN_SUGGESTION_COVER * max(suggestion.area, 1e-9)


@dataclass
class RunFigures:
    images: int = 0
    failed_images: int = 0
    suggestions: int = 0
    accepted: int = 0
    rejected: int = 0
    pending: int = 0
    precision_reviewed: float | None = None  # accepted / decided
    # the detector's proposed categories, as reviewers decided (accepted suggestions with one)
    category_proposed: int = 0
    category_kept: int = 0
    category_kept_share: float | None = None
    # against ground truth (None when the run's images have none)
    gt_images: int = 0
    gt_regions: int = 0
    normal_images: int = 0
    threshold: float = 0.5
    region_recall: float | None = None
    precision_gt: float | None = None
    false_per_normal_image: float | None = None
    recall_at_1_false_per_normal: float | None = None
    curve: list[dict] = field(
        default_factory=list
    )  # [{threshold, precision, recall, false_per_normal}]

    def to_dict(self) -> dict:
        return asdict(self)


def run_figures(run: InspectionRun, *, threshold: float = 0.5) -> RunFigures:
    """Compute a run's figures from what is stored now."""
    figures = RunFigures(threshold=threshold)
    image_ids = list(run.image_ids)
    results = run.results or {}
    figures.failed_images = sum(1 for r in results.values() if "error" in r)
    figures.images = len(image_ids) - figures.failed_images
    suggestions = list(
        Suggestion.objects.filter(
            image_id__in=image_ids, model_version_id=run.model_version_id
        ).values(
            "id", "image_id", "geometry", "score", "status", "category_id", "proposed_category_id"
        )
    )
    figures.suggestions = len(suggestions)
    figures.accepted = sum(1 for s in suggestions if s["status"] == Suggestion.Status.ACCEPTED)
    figures.rejected = sum(1 for s in suggestions if s["status"] == Suggestion.Status.REJECTED)
    figures.pending = figures.suggestions - figures.accepted - figures.rejected
    decided = figures.accepted + figures.rejected
    figures.precision_reviewed = round(figures.accepted / decided, 4) if decided else None
    proposed = [
        s
        for s in suggestions
        if s["status"] == Suggestion.Status.ACCEPTED and s["proposed_category_id"] is not None
    ]
    figures.category_proposed = len(proposed)
    figures.category_kept = sum(
        1 for s in proposed if s["category_id"] == s["proposed_category_id"]
    )
    if proposed:
        figures.category_kept_share = round(figures.category_kept / len(proposed), 4)

    truth: dict[int, list] = {}
    for a in Annotation.objects.filter(
        image_id__in=image_ids, source=Annotation.Source.GROUND_TRUTH
    ).values("image_id", "geometry"):
        truth.setdefault(a["image_id"], []).append(to_shape(a["geometry"]))
    normal_ids = set(
        Image.objects.filter(pk__in=image_ids)
        .exclude(pk__in=list(truth))
        .filter(source_group__endswith="/good")
        .values_list("id", flat=True)
    ) | set(
        Image.objects.filter(pk__in=image_ids, is_normal=True)
        .exclude(pk__in=list(truth))
        .values_list("id", flat=True)
    )
    figures.gt_images = len(truth)
    figures.gt_regions = sum(len(v) for v in truth.values())
    figures.normal_images = len(normal_ids)
    if not truth and not normal_ids:
        return figures

    # per suggestion: score, whether it is true, which regions it hits, whether on a normal image
    scored = []
    for s in suggestions:
        shape = to_shape(s["geometry"])
        regions = truth.get(s["image_id"], [])
        hit = [i for i, r in enumerate(regions) if hits(shape, r)]
        scored.append((s["score"], s["image_id"], hit, s["image_id"] in normal_ids))
    scored.sort(key=lambda t: -t[0])

    def at(t: float) -> dict:
        kept = [x for x in scored if x[0] >= t]
        found = {(img, i) for _score, img, hit, _n in kept for i in hit}
        true = sum(1 for _s, _img, hit, _n in kept if hit)
        on_normal = sum(1 for _s, _img, _hit, normal in kept if normal)
        relevant = [x for x in kept if x[1] in truth or x[3]]
        return {
            "threshold": round(t, 4),
            "recall": round(len(found) / figures.gt_regions, 4) if figures.gt_regions else None,
            "precision": round(true / len(relevant), 4) if relevant else None,
            "false_per_normal": round(on_normal / figures.normal_images, 4)
            if figures.normal_images
            else None,
        }

    point = at(threshold)
    figures.region_recall = point["recall"]
    figures.precision_gt = point["precision"]
    figures.false_per_normal_image = point["false_per_normal"]
    thresholds = sorted({round(x[0], 4) for x in scored}, reverse=True)
    if len(thresholds) > 200:  # keep the curve light: 200 evenly spaced score quantiles
        step = len(thresholds) / 200
        thresholds = [thresholds[int(i * step)] for i in range(200)]
    figures.curve = [at(t) for t in thresholds]
    ok = [p for p in figures.curve if p["false_per_normal"] is None or p["false_per_normal"] <= 1.0]
    recalls = [p["recall"] for p in ok if p["recall"] is not None]
    figures.recall_at_1_false_per_normal = max(recalls) if recalls else None
    return figures


def run_threshold(run: InspectionRun) -> float:
    """The score a run suggested from: an anomaly run's threshold, a detection run's confidence."""
    params = run.params or {}
    return float(params.get("threshold", params.get("score_threshold", 0.5)))


@dataclass
class CategoryFigures:
    name: str
    labels: int  # reviewed labels of this category on the reviewed images
    suggestions: int  # the detector's boxes of this category there (any score)
    true_at_threshold: int = 0
    precision: float | None = None  # at the threshold
    recall: float | None = None
    ap50: float | None = None  # COCO AP at IoU 0.5, all scores
    curve: list[dict] = field(default_factory=list)  # [{recall, precision}] COCO's 101 points


@dataclass
class DetectionFigures:
    reviewed_images: int = 0
    threshold: float = 0.3
    map50: float | None = None  # the mean of the categories' AP50 that have labels
    categories: list[CategoryFigures] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _bbox(geometry: dict) -> list[float]:
    x0, y0, x1, y1 = to_shape(geometry).bounds
    return [x0, y0, x1 - x0, y1 - y0]


def detection_figures(run: InspectionRun, *, threshold: float | None = None) -> DetectionFigures:
    """A detection run judged per category on its images that reviewers have finished (status
    reviewed): what they kept (approved labels, accepted suggestions with the category they
    chose, ground truth) is the truth, and the run's boxes with the category the detector
    predicted are matched to it as COCO does (pycocotools, IoU >= 0.5, greedy by score). A box
    whose category the reviewer changed is a false box of the predicted category and a found
    label of the chosen one only if another box of that category covers it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t = run_threshold(run) if threshold is None else threshold
    out = DetectionFigures(threshold=t)
    failed = {int(k) for k, r in (run.results or {}).items() if "error" in r}
    reviewed = list(
        Image.objects.filter(pk__in=run.image_ids, status=Image.Status.REVIEWED)
        .exclude(pk__in=failed)
        .values_list("id", flat=True)
    )
    out.reviewed_images = len(reviewed)
    if not reviewed:
        return out
    truth = list(
        Annotation.objects.filter(image_id__in=reviewed)
        .exclude(review_status=Annotation.ReviewStatus.RETURNED)
        .filter(
            Q(review_status=Annotation.ReviewStatus.APPROVED)
            | Q(source=Annotation.Source.GROUND_TRUTH)
        )
        .values("id", "image_id", "geometry", "category_id", "category__name")
    )
    boxes = list(
        Suggestion.objects.filter(image_id__in=reviewed, model_version_id=run.model_version_id)
        .exclude(proposed_category__isnull=True, category__isnull=True)
        .values("id", "image_id", "geometry", "score", "category_id", "proposed_category_id")
    )
    names = {a["category_id"]: a["category__name"] for a in truth}
    predicted = [(b, b["proposed_category_id"] or b["category_id"]) for b in boxes]
    for cat in {c for _b, c in predicted} - set(names):
        names[cat] = DefectCategory.objects.filter(pk=cat).values_list("name", flat=True).first()
    names = {k: v for k, v in names.items() if v is not None}
    if not names:
        return out
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in reviewed],
        "categories": [{"id": k, "name": v} for k, v in names.items()],
        "annotations": [
            {
                "id": n,
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": (bb := _bbox(a["geometry"])),
                "area": bb[2] * bb[3],
                "iscrowd": 0,
            }
            for n, a in enumerate(truth, 1)
        ],
    }
    gt.createIndex()
    dets = [
        {
            "image_id": b["image_id"],
            "category_id": c,
            "bbox": _bbox(b["geometry"]),
            "score": b["score"],
        }
        for b, c in predicted
        if c in names
    ]
    per_cat_labels = {k: sum(1 for a in truth if a["category_id"] == k) for k in names}
    per_cat_boxes = {k: sum(1 for d in dets if d["category_id"] == k) for k in names}
    rows = {
        k: CategoryFigures(name=v, labels=per_cat_labels[k], suggestions=per_cat_boxes[k])
        for k, v in names.items()
    }
    if dets:
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, max(100, len(dets))]  # every box of an image counts
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            ev.evaluate()
            ev.accumulate()
        precision = ev.eval["precision"]  # [iou, recall, category, area, maxdets]
        for k_index, cat in enumerate(ev.params.catIds):
            row = rows[cat]
            if not row.labels:
                continue  # AP is undefined without a label of the category
            p = precision[0, :, k_index, 0, -1]
            valid = p > -1
            row.ap50 = round(float(p[valid].mean()), 4) if valid.any() else 0.0
            row.curve = [
                {"recall": round(float(r), 2), "precision": round(float(q), 4)}
                for r, q in zip(ev.params.recThrs, p, strict=True)
                if q > -1
            ]
        # the counts at the threshold, from the same matching (IoU 0.5)
        for e in ev.evalImgs:
            if e is None or e["aRng"] != ev.params.areaRng[0]:
                continue
            row = rows[e["category_id"]]
            for score, match, ignored in zip(
                e["dtScores"], e["dtMatches"][0], e["dtIgnore"][0], strict=True
            ):
                if score >= t and match and not ignored:
                    row.true_at_threshold += 1
    for row in rows.values():
        kept = sum(1 for d in dets if rows.get(d["category_id"]) is row and d["score"] >= t)
        row.precision = round(row.true_at_threshold / kept, 4) if kept else None
        row.recall = round(row.true_at_threshold / row.labels, 4) if row.labels else None
    out.categories = sorted(rows.values(), key=lambda r: r.name.lower())
    aps = [r.ap50 for r in out.categories if r.ap50 is not None]
    out.map50 = round(sum(aps) / len(aps), 4) if aps else None
    return out
