"""An inspection run's figures: what reviewers decided, and, where ground truth exists, how the
suggestions compare with it (region recall, false suggestions per normal image, precision/recall
over the score threshold).

Matching rule: a suggestion *hits* a ground-truth region when their overlap covers at least 10 %
of the region or at least 50 % of the suggestion (anomaly outlines are blobs, so IoU would punish
a correct but loose outline). A region is *found* at threshold t when a suggestion with score >= t
hits it; a suggestion is *true* when it hits any region of its image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shapely.geometry import Polygon
from shapely.geometry import box as shapely_box

from annotations.models import Annotation, Suggestion
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


def curve_svg_points(
    curve: list[dict], *, width: int = 320, height: int = 220, pad: int = 30
) -> str:
    """'x,y x,y ...' of precision (y) over recall (x) for an inline SVG polyline."""
    pts = [
        (p["recall"], p["precision"])
        for p in curve
        if p["recall"] is not None and p["precision"] is not None
    ]
    pts.sort()
    return " ".join(
        f"{pad + r * (width - 2 * pad):.1f},{height - pad - p * (height - 2 * pad):.1f}"
        for r, p in pts
    )
