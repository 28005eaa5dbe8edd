"""Do deep, coarse features see what PatchCore's miss, and does adding their map to PatchCore's
help? A probe (no model is saved), after CS-Flow and DifferNet, whose published magnetic-tile
image AUROC (0.99, 0.98) comes from the last stride-32 stage of an EfficientNet.

A run is ``BLOCKS@SIZE`` (``2+4@256`` is PatchCore's features at 256 px, ``5@192`` Lite0's
``blocks.5``, stride 32, at 192 px): each image (its lighting corrected with ``--shading``, as
``TrainConfig.shading``) squashed to SIZE, the stages' features averaged over 3 x 3 cells
(``--pool``) and stacked at the finest one's grid; each test position's distance to the nearest
training position (all of them: no coreset) is its map, upsampled to 256 px and blurred as
PatchCore's. Each run's maps are standardised by the maps of ``--kept`` normal images left out
of the bank (mean and standard deviation of their pixels), and every pair of runs is also
scored by the sum of their standardised maps (and by the first plus half the second). A
``p1`` after a run's size (``5@192p1``) sets its pooling apart from ``--pool``. Prints image AUROC (the map's maximum), pixel
AUROC and AU-PRO, then per defect type its image and pixel AUROC::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_deep_probe.py \\
        --dataset ../shared/datasets/magnetic_tile --runs 2+4@256 5@192 6@128
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--runs", nargs="+", default=["2+4@256", "5@192"])
    ap.add_argument("--variant", default="lite0", choices=("lite0", "lite1", "lite2"))
    ap.add_argument("--shading", type=float, default=0.2)
    ap.add_argument("--pool", type=int, default=3)
    ap.add_argument("--kept", type=int, default=20, help="normal images left out of the bank")
    args = ap.parse_args()

    import timm
    import torch
    import torch.nn.functional as F  # noqa: N812
    from PIL import Image

    from benchmarks.probe_common import TestSet, blur
    from workers import lite0
    from workers.anomaly.backbone import lite_normalise
    from workers.anomaly.image_io import correct_shading, normalise_layout, to_float

    torch.set_num_threads(1)
    net = timm.create_model(lite0.timm_name(args.variant), pretrained=False, features_only=True)
    lite0.load_into(net, args.variant)
    net.eval()
    root = Path(args.dataset)
    train = sorted((root / "train" / "good").glob("*.png"))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1)).tolist()
    kept, train = [train[i] for i in order[: args.kept]], [train[i] for i in order[args.kept :]]
    tests = TestSet(root, SIZE)
    pixels = {}
    for path in [*train, *kept, *tests.paths]:
        image = normalise_layout(np.asarray(Image.open(path).convert("RGB")))
        pixels[path] = to_float(correct_shading(image, args.shading))
    print(
        f"{root.name}: {len(train)} normal images in the bank, {len(kept)} kept aside, "
        f"{len(tests.paths)} test images"
    )

    @torch.no_grad()
    def embed(path: Path, blocks: list[int], size: int, pool: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels[path])).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        x = net.bn1(net.conv_stem(lite_normalise(x)))
        out = []
        for i in range(max(blocks) + 1):
            x = net.blocks[i](x)
            if i in blocks:
                out.append(F.avg_pool2d(x, pool, 1, pool // 2))
        h, w = out[0].shape[-2:]
        out = [f if f.shape[-1] == w else F.interpolate(f, size=(h, w), mode="bilinear")
               for f in out]  # fmt: skip
        return torch.cat(out, 1)[0]

    maps: dict[str, list[np.ndarray]] = {}
    for run in args.runs:
        started = time.perf_counter()
        spec, size = run.split("@")
        size, _, pool = size.partition("p")
        pool = int(pool or args.pool)
        blocks = [int(b) for b in spec.split("+")]
        bank = torch.cat([embed(p, blocks, int(size), pool).flatten(1).T for p in train])

        def heat(path: Path, blocks=blocks, size=size, pool=pool, bank=bank) -> np.ndarray:  # noqa: ANN001
            e = embed(path, blocks, int(size), pool)
            c, h, w = e.shape
            rows = e.flatten(1).T
            near = torch.cat([torch.cdist(part, bank).amin(1) for part in rows.split(1024)])
            m = F.interpolate(near.view(1, 1, h, w), size=(SIZE, SIZE), mode="bilinear")
            return blur(m)[0, 0].numpy()

        ref = np.stack([heat(p) for p in kept])
        mu, sd = float(ref.mean()), float(ref.std())
        maps[run] = [(heat(p) - mu) / sd for p in tests.paths]
        print(f"{run}: {tests.figures(maps[run])} ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
    for a, b in itertools.combinations(args.runs, 2):
        for weight in (1.0, 0.5):
            fused = [x + weight * y for x, y in zip(maps[a], maps[b], strict=True)]
            print(f"{a} + {weight:g} x {b}: {tests.figures(fused)}", flush=True)


if __name__ == "__main__":
    main()
