"""Would a head trained on made-up defects beat the nearest-normal distance? A probe (no model is
saved), in the spirit of DRAEM and SimpleNet: synthetic defects are painted on the normal
training images (thin wandering curves, spots, blotches darker, brighter or of another normal
image's texture, bites out of an edge), frozen Lite0 features (``blocks.2+4``, PatchCore's) are
taken of each, and a small convolutional head learns to mark the painted cells. Its map on the
test images is scored at 256 px as ``benchmarks/anomaly_layers_probe.py`` scores PatchCore's,
alone and averaged with the nearest-normal map (each standardised over the test maps).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_synthetic_probe.py \\
        --dataset ../shared/datasets/magnetic_tile

docs/benchmarks-anomaly.md (2026-12-07, "shading correction") has the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 256


def main() -> None:  # noqa: C901, PLR0915 - one probe, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="an MVTec-layout folder")
    ap.add_argument("--samples", type=int, default=1200, help="synthetic training images")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812
    from PIL import Image, ImageDraw
    from scipy.ndimage import gaussian_filter, zoom

    from benchmarks.probe_common import TestSet, blur, lite0_stages
    from workers.anomaly.backbone import lite_normalise

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    root = Path(args.dataset)
    train = sorted((root / "train" / "good").glob("*.png"))
    tests = TestSet(root, SIZE)
    net = lite0_stages()

    def load(path: Path) -> np.ndarray:
        grey = Image.open(path).convert("L").resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(grey, dtype=np.float32) / 255.0

    @torch.no_grad()
    def embed(batch: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(batch))[:, None].repeat(1, 3, 1, 1)
        feats = net(lite_normalise(x))
        feats = [F.avg_pool2d(feats[i], 3, 1, 1) for i in (2, 3)]  # blocks.2 and blocks.4
        h, w = feats[0].shape[-2:]
        return torch.cat([feats[0], F.interpolate(feats[1], size=(h, w), mode="bilinear")], 1)

    normals = [load(p) for p in train]

    def painted(kind: str) -> np.ndarray:
        """A defect's soft mask (256 x 256, 0..1) of the given kind."""
        if kind == "blotch":  # a thresholded smooth noise field: stains, unevenness
            scale = int(rng.choice([16, 32, 64]))
            noise = zoom(rng.standard_normal((SIZE // scale + 2,) * 2), scale, order=3)
            mask = (noise[:SIZE, :SIZE] > rng.uniform(1.0, 2.0)).astype(np.float32)
            return gaussian_filter(mask, rng.uniform(1, 6))
        if kind == "edge":  # a bite out of one side: missing material
            depth, pos, span = rng.uniform(4, 30), rng.uniform(0, SIZE), rng.uniform(15, 120)
            yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
            across, along = [(yy, xx), (SIZE - 1 - yy, xx), (xx, yy), (SIZE - 1 - xx, yy)][
                rng.integers(4)
            ]
            profile = depth * np.clip(1 - ((along - pos) / (span / 2)) ** 2, 0, 1)
            return (across < profile * (1 + 0.3 * np.sin(along / rng.uniform(2, 8)))).astype(
                np.float32
            )
        canvas = Image.new("L", (SIZE * 2, SIZE * 2))  # drawn at twice the size: soft edges
        draw = ImageDraw.Draw(canvas)
        x, y = rng.uniform(0, SIZE * 2, 2)
        if kind == "line":  # a wandering thin curve: a crack or a scratch
            angle, points = rng.uniform(0, 2 * math.pi), [(x, y)]
            for _ in range(int(rng.uniform(5, 47))):
                angle += rng.normal(0, 0.25)
                x, y = x + 6 * math.cos(angle), y + 6 * math.sin(angle)
                points.append((x, y))
            draw.line(points, fill=255, width=int(rng.integers(1, 6)))
        else:  # a spot: a hole, dust
            rx, ry = rng.uniform(3, 20, 2)
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
        small = canvas.resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(small, dtype=np.float32) / 255.0

    def synthetic(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, total = image.copy(), np.zeros_like(image)
        for _ in range(rng.integers(1, 4)):
            kind = ("line", "spot", "blotch", "edge")[rng.integers(4)]
            mask = painted(kind)
            if mask.max() < 0.05:
                continue
            if kind == "blotch" and rng.random() < 0.5:  # another normal image's texture
                other = normals[rng.integers(len(normals))] * rng.uniform(0.6, 1.4)
                out = out * (1 - mask) + mask * other
            elif kind == "edge":
                out = out * (1 - mask) + mask * rng.uniform(0.0, 0.15)
            else:
                amount = rng.uniform(0.25, 0.7) if kind != "blotch" else rng.uniform(0.15, 0.4)
                if rng.random() < 0.7:
                    out = out * (1 - amount * mask)
                else:
                    out = out + amount * mask * (1 - out)
            total = np.maximum(total, mask)
        return np.clip(out, 0, 1), total

    started = time.perf_counter()
    features, targets, batch, masks = [], [], [], []
    for i in range(args.samples):
        image = normals[rng.integers(len(normals))]
        image = image[:, ::-1] if rng.random() < 0.5 else image
        image = image[::-1] if rng.random() < 0.5 else image
        image, mask = synthetic(image) if rng.random() < 0.8 else (image, np.zeros_like(image))
        batch.append(np.ascontiguousarray(image))
        masks.append(mask)
        if len(batch) == 16 or i == args.samples - 1:
            features.append(embed(batch).half())
            cells = F.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks))[:, None], (32, 32))
            targets.append((cells > 0.05).float())
            batch, masks = [], []
    x_all, y_all = torch.cat(features), torch.cat(targets)
    mean = x_all.float().mean((0, 2, 3), keepdim=True)
    std = x_all.float().std((0, 2, 3), keepdim=True) + 1e-3
    print(
        f"{root.name}: {args.samples} synthetic images from {len(train)} normal ones, "
        f"{float(y_all.mean()):.3f} of the cells painted ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    channels = x_all.shape[1]
    head = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 64, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 1, 1),
    )
    opt = torch.optim.Adam(head.parameters(), 1e-3, weight_decay=1e-4)
    for _epoch in range(args.epochs):
        for idx in torch.randperm(len(x_all)).split(32):
            logit = head((x_all[idx].float() - mean) / std)
            p, t = torch.sigmoid(logit), y_all[idx]
            bce = F.binary_cross_entropy_with_logits(logit, t, reduction="none")
            loss = (bce * ((1 - p) * t + p * (1 - t)) ** 2).mean()  # focal, gamma 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()

    def as_map(cells: torch.Tensor) -> np.ndarray:  # PatchCore's: nearest up, then blurred
        return blur(F.interpolate(cells[None, None].float(), size=(SIZE, SIZE)))[0, 0].numpy()

    bank = torch.cat([embed([n])[0].flatten(1).T for n in normals])
    head_maps, bank_maps = [], []
    with torch.no_grad():
        for path in tests.paths:
            f = embed([load(path)])
            head_maps.append(as_map(torch.sigmoid(head((f - mean) / std))[0, 0]))
            rows = f[0].flatten(1).T
            near = torch.cat([torch.cdist(part, bank).amin(1) for part in rows.split(1024)])
            bank_maps.append(as_map(near.view(32, 32)))

    def standardised(maps: list[np.ndarray]) -> list[np.ndarray]:
        values = np.concatenate([m.ravel() for m in maps])
        return [(m - values.mean()) / values.std() for m in maps]

    def report(name: str, maps: list[np.ndarray]) -> None:
        print(f"{name}: {tests.figures(maps)}", flush=True)

    report("head on synthetic defects", head_maps)
    report("nearest normal patch", bank_maps)
    for weight in (0.25, 0.5):
        fused = [
            (1 - weight) * a + weight * b
            for a, b in zip(standardised(bank_maps), standardised(head_maps), strict=True)
        ]
        report(f"nearest normal + head, weight {weight}", fused)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
