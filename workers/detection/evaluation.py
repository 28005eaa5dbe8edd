"""COCO evaluation (pycocotools) of whole images predicted through sliced inference."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import CocoDetectionDataset, Sample
from .inference import Detector
from .tta import predict_views


@dataclass
class EvalResult:
    """COCO box metrics in [0, 1] (-1 where pycocotools has no ground truth for the bucket)."""

    map: float
    map50: float
    ap_small: float
    num_images: int
    seconds: float
    ms_per_image: float
    stats: list[float] = field(default_factory=list)
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    per_class_ap: dict[str, float] = field(default_factory=dict)  # AP at IoU 0.5:0.95
    # AP at IoU 0.5:0.95 on small objects (COCO's < 32x32 px; -1: none of the category)
    per_class_ap_small: dict[str, float] = field(default_factory=dict)
    # precision at COCO's 101 recall points (IoU 0.5, all areas, up to 100 boxes per image):
    # {name: [[recall, precision], ...]}, only the points the category reaches
    per_class_pr: dict[str, list[list[float]]] = field(default_factory=dict)


def evaluate(
    detector: Detector,
    coco_json: str | Path,
    *,
    image_root: str | Path | None = None,
    image_filter: Callable[[dict[str, Any]], bool] | None = None,
    slice_size: int | None = None,
    overlap: float = 0.25,
    score_threshold: float = 0.01,
    batch_size: int = 4,
    progress: Callable[[float, str, dict[str, Any] | None], None] | None = None,
    reference_root: str | Path | None = None,
    views: int = 1,
    fusion: str = "wbf",
) -> EvalResult:
    """Predict every image with :meth:`Detector.predict_sliced` and score with COCOeval.

    The low default ``score_threshold`` matches PaddleDetection's eval NMS (0.01) so AP
    integrates over the whole precision-recall curve. A Siamese detector gets each image's
    reference (its COCO ``reference_file_name`` or ``template_file_name``, under
    ``reference_root``, default ``image_root``), sliced at the same windows. ``views`` > 1
    predicts each image in that many orientations, fused by ``fusion``
    (:func:`.tta.predict_views`).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    siamese = detector.model_config.siamese
    ds = CocoDetectionDataset(
        coco_json,
        image_root,
        image_filter=image_filter,
        references=siamese,
        reference_root=reference_root,
    )
    results: list[dict[str, Any]] = []
    start = time.time()
    for i in range(len(ds)):
        sample: Sample = ds[i]
        dets = predict_views(
            detector.predict_sliced,
            sample.image,
            views,
            fusion,
            reference=sample.reference if siamese else None,
            slice_size=slice_size,
            overlap=overlap,
            score_threshold=score_threshold,
            batch_size=batch_size,
        )
        for d in dets:
            results.append(
                {
                    "image_id": sample.image_id,
                    "category_id": d.category_id,
                    "bbox": [round(v, 2) for v in d.bbox_xywh],
                    "score": round(d.score, 5),
                }
            )
        if progress is not None:
            progress((i + 1) / len(ds), f"evaluated {i + 1}/{len(ds)} images", None)
    seconds = time.time() - start

    gt_data = dict(ds.coco)
    gt_data["images"] = ds.images
    ids = {img["id"] for img in ds.images}
    gt_data["annotations"] = [a for a in ds.coco.get("annotations", []) if a["image_id"] in ids]
    for k, a in enumerate(gt_data["annotations"]):
        a.setdefault("id", k + 1)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        a.setdefault("iscrowd", 0)
    gt_data.setdefault("info", {})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        if not results:
            return EvalResult(0.0, 0.0, 0.0, len(ds), seconds, 1000 * seconds / max(1, len(ds)))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    per_class, per_class_ap, per_class_ap_small, per_class_pr = {}, {}, {}, {}
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    for k, cat_id in enumerate(ev.params.catIds):
        name = next((c.name for c in ds.categories if c.id == cat_id), str(cat_id))
        at50 = precision[0, :, k, 0, -1]
        p = at50[at50 > -1]
        per_class[name] = float(np.mean(p)) if p.size else -1.0
        every = precision[:, :, k, 0, -1]
        every = every[every > -1]
        per_class_ap[name] = float(np.mean(every)) if every.size else -1.0
        small = precision[:, :, k, 1, -1]  # area range 1: COCO's "small"
        small = small[small > -1]
        per_class_ap_small[name] = float(np.mean(small)) if small.size else -1.0
        per_class_pr[name] = [
            [round(float(r), 2), round(float(q), 4)]
            for r, q in zip(ev.params.recThrs, at50, strict=True)
            if q > -1
        ]
    return EvalResult(
        map=stats[0],
        map50=stats[1],
        ap_small=stats[3],
        num_images=len(ds),
        seconds=seconds,
        ms_per_image=1000 * seconds / max(1, len(ds)),
        stats=stats,
        per_class_ap50=per_class,
        per_class_ap=per_class_ap,
        per_class_ap_small=per_class_ap_small,
        per_class_pr=per_class_pr,
    )
