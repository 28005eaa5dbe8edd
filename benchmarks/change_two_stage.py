"""A probe for issue #14: the changed pixels as proposals, a small pair classifier for the rest.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/change_two_stage.py \
        --epochs 30 [--seed 1] [--context 1.4] [--sets 7x2] [--quality] [--spatial] \
        [--outputs q0.npz] [--json out.json]
    .venv/bin/python benchmarks/change_two_stage.py --score q0.npz q1.npz   # again, averaged

(figures and the variants measured: docs/benchmarks-detection.md, section 4, "A two-stage
alternative"). The probe the app's two-stage change detector (``workers/detection/two_stage.py``)
was built from; kept to try variants quickly (``--quality``: a head for the corrected box's IoU;
``--spatial``: the box from the last feature map; ``--score``: saved outputs scored again with
the predicted IoU and with overlapping boxes fused, several runs averaged).

DeepPCB pairs a tested board with its defect-free template, aligned. The change heatmap already
finds every defect region (docs/benchmarks-detection.md, section 4), so what separates it from a
detector's mAP is the box (the labelled boxes carry a margin around the defect) and the category.
This probe measures a two-stage alternative to the Siamese PP-YOLOE-SOD on the same split
(official trainval -> train, test -> evaluation):

1. proposals: both images binarised, their XOR opened (JPEG and edge noise out: 2 or 3 px), pieces
   closer than a distance joined (1 or 7 px: ``--sets``); each group's box of changed pixels is a
   proposal, the four settings' proposals pooled (one defect may give several: the network says
   which is the defect, and overlapping boxes of a category are suppressed, IoU 0.5);
2. the box: the proposal grown by margins fitted on the train split (per side; the annotators'
   boxes are not centred on the defect), optionally corrected by the network;
3. the category: a small CNN on a crop of (tested, template, difference) around the proposal,
   seven outputs (six categories and "no defect"), trained on the train proposals with the eight
   quarter turns and flips. Each proposal gives a box for its two most likely categories.

Scored by pycocotools (mAP50, mAP, AP_small) like the detectors. The proposals' recall (a
labelled box whose IoU with a grown proposal is >= 0.5) bounds what stage 3 can reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the app's detector was built from this probe: the helpers it kept are shared
from workers.detection.two_stage import box_iou as iou  # noqa: E402
from workers.detection.two_stage import dihedral, grow, offset_iou  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "deeppcb"
CATS = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]


def grey(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    return img


def proposals(test: np.ndarray, ref: np.ndarray, group: int, min_px: int, opening: int = 2):
    """Boxes ``(x1, y1, x2, y2, changed pixels)`` of the changed pixels, pieces joined."""
    import cv2

    diff = ((test > 127) != (ref > 127)).astype(np.uint8)
    diff = cv2.morphologyEx(diff, cv2.MORPH_OPEN, np.ones((opening, opening), np.uint8))
    joined = cv2.dilate(diff, np.ones((group, group), np.uint8)) if group > 1 else diff
    n, labels = cv2.connectedComponents(joined, connectivity=8)
    out = []
    for k in range(1, n):
        ys, xs = np.nonzero((labels == k) & (diff > 0))
        if len(xs) < min_px:
            continue
        out.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, len(xs)))
    return out


CROP = 64


def crop(test, ref, box, context: float = 2.0) -> tuple[np.ndarray, float]:
    """A CROP x CROP window of (tested, template, difference) centred on ``box``; bigger
    proposals are shrunk to fit with context. Returns the stack and the scale used."""
    import cv2

    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(CROP, context * max(box[2] - box[0], box[3] - box[1]))
    scale = CROP / side
    m = np.array([[scale, 0, CROP / 2 - scale * cx], [0, scale, CROP / 2 - scale * cy]])
    chans = []
    for img in (test, ref):
        chans.append(
            cv2.warpAffine(img, m, (CROP, CROP), flags=cv2.INTER_AREA, borderValue=0) / 255.0
        )
    chans.append(chans[0] - chans[1])
    return np.stack(chans).astype(np.float32), scale


def build_net(torch, width: float = 1.0, spatial: bool = False):
    nn = torch.nn

    def block(i, o):
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
        )

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c = [int(round(v * width)) for v in (24, 48, 64, 96, 128)]
            self.maps = nn.Sequential(
                block(3, c[0]), nn.MaxPool2d(2), block(c[0], c[1]), block(c[1], c[2]),
                nn.MaxPool2d(2), block(c[2], c[3]), block(c[3], c[3]), nn.MaxPool2d(2),
                block(c[3], c[4]),
            )  # fmt: skip
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.cls = nn.Linear(c[4] + 1, 7)
            # the box from where things are in the crop (a spatial map), or from the pooled
            # features like the category
            self.squeeze = nn.Sequential(block(c[4], 16), nn.Flatten()) if spatial else None
            n = 16 * (CROP // 8) ** 2 + 1 if spatial else c[4] + 1
            self.box = nn.Linear(n, 4)
            self.quality = nn.Linear(n, 1)  # the corrected box's IoU with its defect

        def forward(self, x, s):
            m = self.maps(x)
            h = torch.cat([self.pool(m), s[:, None]], 1)
            b = torch.cat([self.squeeze(m), s[:, None]], 1) if self.squeeze is not None else h
            return self.cls(h), self.box(b), self.quality(b)[:, 0]

    return Net()


def evaluate(
    coco: dict,
    test_ids: set,
    out: dict,
    *,
    regress: bool = True,
    agnostic: bool = False,
    quality: float = 0.0,
    fuse: bool = False,
) -> dict:
    """pycocotools' figures of the test proposals' outputs (``out``: image_id, box, probs, reg,
    quality; several models' outputs are averaged before). Each proposal gives a box for its two
    likeliest categories, scored by the category's probability times the predicted IoU to the
    power ``quality``; boxes of a category that overlap (IoU >= 0.5) are suppressed, or with
    ``fuse`` replaced by their score-weighted mean (weighted box fusion) kept at the best score."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [im for im in coco["images"] if im["id"] in test_ids],
        "annotations": [dict(a) for a in coco["annotations"] if a["image_id"] in test_ids],
        "categories": coco["categories"],
    }
    if agnostic:
        for a in gt.dataset["annotations"]:
            a["category_id"] = 1
        gt.dataset["categories"] = [{"id": 1, "name": "defect"}]
    gt.createIndex()

    boxes = out["box"].copy()
    if regress:
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = boxes + out["reg"] * np.stack([w, h, w, h], 1)
    probs, q = out["probs"], np.clip(out["quality"], 1e-3, 1)
    dets: dict[tuple, list] = {}  # (image, category) -> [(score, box)]
    for j, image_id in enumerate(out["image_id"].tolist()):
        top = np.argsort(-probs[j, 1:])[:2] + 1
        for c in [int(top[0])] if agnostic else top.tolist():
            s = float(1 - probs[j, 0]) if agnostic else float(probs[j, c])
            s *= float(q[j]) ** quality
            dets.setdefault((image_id, 1 if agnostic else c), []).append((s, boxes[j]))
    results = []
    for (image_id, c), mine in dets.items():
        mine.sort(key=lambda d: -d[0])
        left = list(range(len(mine)))
        while left:
            best = left[0]
            group = [k for k in left if iou(mine[best][1], mine[k][1]) >= 0.5]
            left = [k for k in left if k not in group]
            if fuse:
                wts = np.array([mine[k][0] for k in group])
                b = (np.stack([mine[k][1] for k in group]) * wts[:, None]).sum(0) / wts.sum()
            else:
                b = mine[best][1]
            results.append(
                {
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    "score": mine[best][0],
                }
            )
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_cat = {}
    if not agnostic:
        prec = ev.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, all areas, 100 dets
        for k, cid in enumerate(ev.params.catIds):
            v = prec[:, k]
            per_cat[CATS[cid - 1]] = round(float(v[v > -1].mean()), 3)
    return {
        "mAP50": round(float(ev.stats[1]), 3),
        "mAP": round(float(ev.stats[0]), 3),
        "AP_small": round(float(ev.stats[3]), 3),
        **({"AP50 per category": per_cat} if per_cat else {}),
    }


def score_saved(data: Path, paths: list[Path]) -> None:
    """Score saved test outputs (``--outputs``) alone or averaged (an ensemble of seeds)."""
    coco = json.loads((data / "annotations.json").read_text())
    test_ids = {im["id"] for im in coco["images"] if im["official_split"] == "test"}
    runs = [dict(np.load(p)) for p in paths]
    out = dict(runs[0])
    for key in ("probs", "reg", "quality"):
        out[key] = np.mean([r[key] for r in runs], axis=0)
    result = {}
    for quality in (0.0, 0.5, 1.0):
        for fuse in (False, True):
            result[f"quality {quality}, fused {fuse}"] = evaluate(
                coco, test_ids, out, quality=quality, fuse=fuse
            )
    result["class-agnostic"] = evaluate(coco, test_ids, out, agnostic=True)
    result["class-agnostic, fused, quality 1"] = evaluate(
        coco, test_ids, out, agnostic=True, fuse=True, quality=1.0
    )
    print(json.dumps({"outputs": [str(p) for p in paths], **result}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument(
        "--sets",
        default="1x2,7x2,1x3,7x3",
        help="proposal settings pooled: JOINxOPEN, join pieces closer than JOIN px after an "
        "opening of OPEN px",
    )
    ap.add_argument("--min-px", type=int, default=12, help="fewest changed pixels of a proposal")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-regress", action="store_true", help="fitted margins only")
    ap.add_argument(
        "--upright",
        type=float,
        default=0.5,
        help="share of each batch not turned (the box is learned on those)",
    )
    ap.add_argument(
        "--context", type=float, default=2.0, help="crop side / the grown box's longer side"
    )
    ap.add_argument("--width", type=float, default=1.0, help="the network's channels, scaled")
    ap.add_argument(
        "--quality", action="store_true", help="also learn the corrected box's IoU (scores)"
    )
    ap.add_argument("--outputs", type=Path, help="save the test proposals' outputs (.npz)")
    ap.add_argument(
        "--spatial", action="store_true", help="the box from a spatial map, not pooled features"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--score",
        type=Path,
        nargs="+",
        help="only score saved outputs (several: their mean, an ensemble); no training",
    )
    args = ap.parse_args()
    if args.score:
        score_saved(args.data, args.score)
        return

    import torch

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    coco = json.loads((args.data / "annotations.json").read_text())
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append((x, y, x + w, y + h, a["category_id"]))
    split = {
        s: [im for im in coco["images"] if im["official_split"] == s] for s in ("trainval", "test")
    }

    t0 = time.perf_counter()
    props: dict[int, list] = {}
    pixels: dict[int, tuple] = {}
    for im in coco["images"]:
        test, ref = grey(args.data / im["file_name"]), grey(args.data / im["template_file_name"])
        pixels[im["id"]] = (test, ref)
        pooled = set()
        for setting in args.sets.split(","):
            join, opening = (int(v) for v in setting.split("x"))
            pooled |= {p[:4] for p in proposals(test, ref, join, args.min_px, opening)}
        props[im["id"]] = sorted(pooled)
    t_prop = (time.perf_counter() - t0) / len(coco["images"])

    # margins per side, fitted on the train proposals that lie inside one labelled box
    sides = []
    for im in split["trainval"]:
        for p in props[im["id"]]:
            inside = [
                g for g in by_image.get(im["id"], [])
                if g[0] <= p[0] and g[1] <= p[1] and p[2] <= g[2] and p[3] <= g[3]
            ]  # fmt: skip
            if len(inside) == 1:
                g = inside[0]
                sides.append((p[0] - g[0], p[1] - g[1], g[2] - p[2], g[3] - p[3]))
    margin = np.median(np.array(sides), axis=0)
    margin_sd = np.std(np.array(sides), axis=0)  # how much the annotators' frames vary

    def samples(images):
        xs, ss, ys, regs, meta = [], [], [], [], []
        for im in images:
            test, ref = pixels[im["id"]]
            for p in props[im["id"]]:
                box = grow(p, margin)
                best, cat, gt = 0.0, 0, None
                for g in by_image.get(im["id"], []):
                    o = iou(box, g)
                    if o > best:
                        best, cat, gt = o, g[4], g
                x, s = crop(test, ref, box, args.context)
                xs.append(x)
                ss.append(s)
                ys.append(cat if best >= 0.5 else 0)
                w, h = box[2] - box[0], box[3] - box[1]
                regs.append(
                    [(gt[0] - box[0]) / w, (gt[1] - box[1]) / h, (gt[2] - box[2]) / w,
                     (gt[3] - box[3]) / h] if gt is not None and best >= 0.5 else [0, 0, 0, 0]
                )  # fmt: skip
                meta.append((im["id"], box))
        return (
            torch.tensor(np.stack(xs)),
            torch.tensor(ss, dtype=torch.float32),
            torch.tensor(ys),
            torch.tensor(regs, dtype=torch.float32),
            meta,
        )

    xtr, str_, ytr, rtr, _ = samples(split["trainval"])
    xte, ste, yte, rte, meta = samples(split["test"])

    def recall(images):
        found = total = 0
        for im in images:
            boxes = [grow(p, margin) for p in props[im["id"]]]
            for g in by_image.get(im["id"], []):
                total += 1
                found += any(iou(b, g) >= 0.5 for b in boxes)
        return found / max(total, 1), total

    rec_tr, n_tr = recall(split["trainval"])
    rec_te, n_te = recall(split["test"])
    print(
        f"proposals: {t_prop * 1000:.0f} ms per pair; margins L/T/R/B {margin.tolist()} "
        f"(sd {np.round(margin_sd, 1).tolist()}); "
        f"train {len(ytr)} proposals ({int((ytr > 0).sum())} defects of {n_tr}, recall at "
        f"IoU 0.5 {rec_tr:.3f}); test {len(yte)} ({int((yte > 0).sum())} of {n_te}, "
        f"recall {rec_te:.3f})",
        flush=True,
    )

    net = build_net(torch, args.width, spatial=args.spatial)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(ytr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(ytr))
        total = 0.0
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            # the first part of the batch upright (the box: the annotators' margins are not the
            # same on every side, so a turned crop has no box target), the rest turned
            upright = int(round(len(idx) * args.upright))
            k = int(np.random.randint(1, 8))
            x = torch.cat([xtr[idx[:upright]], dihedral(xtr[idx[upright:]], k)])
            x = x + 0.03 * torch.randn_like(x)
            logits, reg, quality = net(x, str_[idx])
            loss = torch.nn.functional.cross_entropy(logits, ytr[idx], label_smoothing=0.05)
            pos = ytr[idx] > 0
            pos[upright:] = False
            if pos.any() and not args.no_regress:
                loss = loss + 5 * torch.nn.functional.smooth_l1_loss(
                    reg[pos], rtr[idx][pos], beta=0.05
                )
                if args.quality:
                    target = offset_iou(reg[pos].detach(), rtr[idx][pos])
                    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
                        quality[pos], target
                    )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}: loss {total / len(ytr):.4f}", flush=True)
    t_train = time.perf_counter() - t0

    net.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        # test-time: the mean of the eight turns' probabilities; the box from the upright crop
        probs = sum(torch.softmax(net(dihedral(xte, k), ste)[0], 1) for k in range(8)) / 8
        _, reg, quality = net(xte, ste)
        quality = torch.sigmoid(quality)

    t_cls = (time.perf_counter() - t0) / len(split["test"])
    acc = float((probs.argmax(1) == yte).float().mean())
    print(f"test proposals classified right: {acc:.3f}", flush=True)

    outputs = {
        "image_id": np.array([m[0] for m in meta]),
        "box": np.array([m[1] for m in meta], dtype=np.float64),
        "probs": probs.numpy(),
        "reg": reg.numpy(),
        "quality": quality.numpy(),
    }
    test_ids = {im["id"] for im in split["test"]}

    def score(regress: bool, agnostic: bool = False, **kw):
        return evaluate(coco, test_ids, outputs, regress=regress, agnostic=agnostic, **kw)

    result = {
        "train_images": len(split["trainval"]),
        "test_images": len(split["test"]),
        "margins_ltrb": margin.tolist(),
        "margins_sd_ltrb": np.round(margin_sd, 2).tolist(),
        "proposal_recall_iou50": {"train": round(rec_tr, 3), "test": round(rec_te, 3)},
        "test_proposals_right": round(acc, 3),
        "fitted margins": score(False),
        "fitted margins, class-agnostic": score(False, agnostic=True),
        "train_s": round(t_train, 1),
        "ms_per_pair": {"proposals": round(t_prop * 1000), "classifier": round(t_cls * 1000)},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if not args.no_regress:
        result["margins + regression"] = score(True)
        result["margins + regression, class-agnostic"] = score(True, agnostic=True)
        result["margins + regression, boxes fused"] = score(True, fuse=True)
        if args.quality:
            result["margins + regression, scored with quality"] = score(True, quality=1.0)
            result["the same, boxes fused"] = score(True, quality=1.0, fuse=True)
    if args.outputs:
        np.savez(args.outputs, **outputs)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
