"""Which Lite0 features should PatchCore compare? A probe (no model is saved): every training
patch in the bank (no coreset), each test patch's distance to its nearest one, upsampled and
blurred as PatchCore's map, scored at 256 px against the masks.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_layers_probe.py \\
        --dataset ../shared/datasets/mvtec_bottle --layers 2+4 1+2+4 2 1+2
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_layers_probe.py \\
        --dataset ../shared/datasets/magnetic_tile --layers 2+4 --bank-views none flip turn \\
        --bank-sample 40000

``--layers`` names Lite0 stages as timm's ``blocks.N`` (1: stride 4, 24 channels; 2: stride 8,
40; 4: stride 16, 112); ``2+4`` is ``patchcore``, ``1+2`` is ``patchcore_fine``.
``--bank-views`` adds flipped (``flip``: 4 views) or also quarter-turned (``turn``: 8 views)
normal images to the bank; ``--bank-sample`` keeps a random share of it (the test images are
never turned). ``--input`` feeds the network larger (or smaller) images; their maps are still
scored at 256 px. ``--bank-neighbours K`` compares each test image with the patches of the K
normal images whose mean feature is nearest to its own only (SPADE's first step);
``--score max-median`` scores an image by its map's maximum less its median;
``--features centred`` subtracts each image's mean feature from its patches (bank and test
alike); ``--self-radius R`` also scores each test patch by its distance to the nearest patch of
its own image farther than R feature cells, alone and fused with the bank's distance;
``--shading S`` corrects every image's lighting first (``TrainConfig.shading``); ``--pad P``
reflect-pads the network's input and crops the features back, ``--conv-padding reflect`` makes
every convolution pad by reflection, ``--position-window R`` also compares each test patch with
the normal patches within R cells of its place only. Prints image AUROC (the map's maximum),
pixel AUROC and AU-PRO, and image AUROC
per defect type. docs/benchmarks-anomaly.md (2026-12-06, "PatchCore on finer features", and
2026-12-07 evening for the padding and the window) has the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 256
STAGES = {"1": 1, "2": 2, "4": 3}  # blocks.N -> timm's features_only index (strides 4, 8, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="an MVTec-layout folder")
    ap.add_argument("--layers", nargs="+", default=["2+4", "1+2"])
    ap.add_argument("--bank-views", nargs="+", default=["none"], choices=("none", "flip", "turn"))
    ap.add_argument("--bank-sample", type=int, default=0, help="keep this many bank rows (0: all)")
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument(
        "--pool",
        type=int,
        default=3,
        help="each feature averaged over this many cells square (PatchCore's 3; odd)",
    )
    ap.add_argument(
        "--input", type=int, default=SIZE, help="network input side (maps are scored at 256 px)"
    )
    ap.add_argument(
        "--bank-neighbours",
        nargs="+",
        type=int,
        default=[0],
        help="compare each test image with the K normal images nearest to it (mean feature) "
        "only (0: all of them)",
    )
    ap.add_argument(
        "--score",
        nargs="+",
        default=["max"],
        choices=("max", "max-median"),
        help="image score: the map's maximum, or its maximum less its median",
    )
    ap.add_argument(
        "--features",
        nargs="+",
        default=["raw"],
        choices=("raw", "centred"),
        help="raw features, or each image's features less their mean over the image (a "
        "lighting setup's shift removed) in the bank and the test images alike",
    )
    ap.add_argument(
        "--self-radius",
        nargs="+",
        type=int,
        default=[0],
        help="also score each test patch by its distance to the nearest patch of the same "
        "image farther than R feature cells away (0: off); printed alone and fused with the "
        "bank's distance (minimum, geometric mean)",
    )
    ap.add_argument(
        "--own",
        nargs="+",
        default=[],
        choices=("median", "column"),
        help="also score each test patch by its distance to its own image's median feature "
        "(median) or to the median of its own column of cells (column: where the part's "
        "texture runs one way); printed alone and added to the bank's distance, each map "
        "standardised by the maps of --kept normal images left out of the bank",
    )
    ap.add_argument("--kept", type=int, default=20, help="normal images left out (with --own)")
    ap.add_argument(
        "--shading",
        type=float,
        default=0.0,
        help="correct each image's lighting first (correct_shading's blur, a fraction of the "
        "shorter side; 0: off)",
    )
    ap.add_argument(
        "--pad",
        nargs="+",
        type=int,
        default=[0],
        help="reflect-pad the network's input by P px on every side and crop the features "
        "back (a multiple of 16; 0: off), so that the tile's border is not the network's",
    )
    ap.add_argument(
        "--conv-padding",
        default="zeros",
        choices=("zeros", "reflect", "replicate"),
        help="what the backbone's convolutions pad with (its ImageNet training: zeros)",
    )
    ap.add_argument(
        "--position-window",
        nargs="+",
        type=int,
        default=[],
        help="also compare each test patch only with the normal images' patches within R "
        "cells of its own place (every image is squashed to the same square, so a cell is a "
        "place on the part); printed per R",
    )
    args = ap.parse_args()
    if any(p % 16 for p in args.pad):
        ap.error("--pad must be a multiple of 16 (the deepest stage's stride)")
    if args.own and any(args.bank_neighbours):
        ap.error("--own standardises against the whole bank: not with --bank-neighbours")

    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812
    from PIL import Image

    from benchmarks.probe_common import TestSet, lite0_stages
    from benchmarks.probe_common import blur as patchcore_blur
    from workers.anomaly.backbone import lite_normalise
    from workers.anomaly.image_io import correct_shading, normalise_layout, to_float

    torch.set_num_threads(1)
    root = Path(args.dataset)
    train = sorted((root / "train" / "good").glob("*.png"))
    tests = TestSet(root, SIZE)
    test = tests.paths
    net = lite0_stages()
    if args.conv_padding != "zeros":
        pad_with(net, args.conv_padding)

    def read(path: Path) -> np.ndarray:
        pixels = normalise_layout(np.asarray(Image.open(path).convert("RGB")))
        return to_float(correct_shading(pixels, args.shading))

    def views(img: np.ndarray, which: str) -> list[np.ndarray]:
        flips = [img, img[::-1], img[:, ::-1], img[::-1, ::-1]]
        if which == "none":
            return [img]
        if which == "flip":
            return flips
        return flips + [np.rot90(v) for v in flips]

    pad = 0  # the --pad of the run under way

    @torch.no_grad()
    def embed(img: np.ndarray, stages: list[int]) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(args.input, args.input), mode="bilinear", antialias=True)
        if pad:
            x = F.pad(x, (pad,) * 4, mode="reflect")
        feats = net(lite_normalise(x))
        # PatchCore's pooler (3 x 3), or a wider neighbourhood
        feats = [F.avg_pool2d(feats[i], args.pool, 1, args.pool // 2) for i in stages]
        if pad:  # the padding's cells cut off again (stage i's stride: 2 ** (i + 1))
            feats = [
                f[..., pad >> (i + 1) : -(pad >> (i + 1)), pad >> (i + 1) : -(pad >> (i + 1))]
                for f, i in zip(feats, stages, strict=True)
            ]
        h, w = feats[0].shape[-2:]
        feats = [
            f if f.shape[-1] == w else F.interpolate(f, size=(h, w), mode="bilinear") for f in feats
        ]
        return torch.cat(feats, 1)[0]

    def blur(m: torch.Tensor) -> torch.Tensor:
        return patchcore_blur(m, args.sigma)

    def self_distance(e: torch.Tensor, radius: int) -> torch.Tensor:
        """Each patch's distance to the nearest patch of its own image outside its
        (2R+1)-cell square."""
        c, h, w = e.shape
        rows = e.flatten(1).T
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        out = []
        for idx in torch.arange(h * w).split(1024):
            d = torch.cdist(rows[idx], rows)
            close = ((yy[idx, None] - yy[None]).abs() <= radius) & (
                (xx[idx, None] - xx[None]).abs() <= radius
            )
            out.append(d.masked_fill(close, float("inf")).amin(1))
        return torch.cat(out).view(h, w)

    def report(spec, which, k_near, score, maps, medians, bank_rows, started) -> None:
        scores = [
            float(m.max()) - (med if score == "max-median" else 0.0)
            for m, med in zip(maps, medians, strict=True)
        ]
        print(
            f"blocks {spec:7s} bank {which:4s} ({bank_rows} rows, nearest {k_near or 'all'}), "
            f"score {score}: {tests.figures(maps, scores)} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    gen = torch.Generator().manual_seed(0)
    print(
        f"{root.name}: {len(train)} normal training images, {len(test)} test images, "
        f"{args.input} px input"
    )

    def own_distance(e: torch.Tensor, how: str) -> torch.Tensor:
        """Each patch's distance to its own image's median feature, or its column's."""
        if how == "median":
            med = e.flatten(1).median(1).values[:, None, None]
        else:
            med = e.median(1, keepdim=True).values
        return (e - med).norm(dim=0)

    def to_map(d: torch.Tensor) -> np.ndarray:
        return blur(F.interpolate(d[None, None], size=(SIZE, SIZE)))[0, 0].numpy()

    kept: list[Path] = []
    if args.own:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1)).tolist()
        kept = [train[i] for i in order[: args.kept]]
        train = [train[i] for i in order[args.kept :]]
        print(f"{len(kept)} normal images left out of the bank to standardise the maps")

    def near_by_place(e: torch.Tensor, grids: torch.Tensor, r: int) -> torch.Tensor:
        """Each cell's distance to the nearest normal patch within ``r`` cells of its place
        (``grids``: the normal images' patches, ``(N, h, w, c)``)."""
        c, h, w = e.shape
        t = e.permute(1, 2, 0)  # (h, w, c)
        padded = F.pad(grids.permute(0, 3, 1, 2), (r,) * 4, value=float("inf"))
        best = torch.full((h, w), float("inf"))
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                shifted = padded[:, :, dy : dy + h, dx : dx + w].permute(0, 2, 3, 1)
                d = (shifted - t).pow(2).sum(-1).amin(0)
                best = torch.minimum(best, d.nan_to_num(float("inf")))
        return best.sqrt()

    def centre(e: torch.Tensor, how: str) -> torch.Tensor:
        return e - e.mean((1, 2), keepdim=True) if how == "centred" else e

    for spec, how, pad in [(s, f, p) for s in args.layers for f in args.features for p in args.pad]:
        stages = [STAGES[s] for s in spec.split("+")]
        for which, k_near in [(v, k) for v in args.bank_views for k in args.bank_neighbours]:
            started = time.perf_counter()
            per_image = [
                torch.cat(
                    [centre(embed(v, stages), how).flatten(1).T for v in views(read(p), which)]
                )
                for p in train
            ]
            means = torch.stack([e.mean(0) for e in per_image])
            bank = torch.cat(per_image)
            if args.bank_sample and len(bank) > args.bank_sample:
                bank = bank[torch.randperm(len(bank), generator=gen)[: args.bank_sample]]
            maps, medians = [], []
            selfs: dict[int, list[torch.Tensor]] = {r: [] for r in args.self_radius if r}
            for path in test:
                e = centre(embed(read(path), stages), how)
                c, h, w = e.shape
                for r in selfs:
                    selfs[r].append(self_distance(e, r))
                rows = e.flatten(1).T
                own = bank
                if k_near:
                    nearest = torch.cdist(rows.mean(0, keepdim=True), means)[0].argsort()
                    own = torch.cat([per_image[i] for i in nearest[:k_near].tolist()])
                near = torch.cat([torch.cdist(part, own).amin(1) for part in rows.split(1024)])
                m = F.interpolate(near.view(1, 1, h, w), size=(SIZE, SIZE))  # PatchCore: nearest
                maps.append(blur(m)[0, 0].numpy())
                medians.append(float(np.median(maps[-1])))
            label = f"{spec}{'' if how == 'raw' else ' centred'}{f' pad {pad}' if pad else ''}"
            for score in args.score:
                report(label, which, k_near, score, maps, medians, len(bank), started)
            if args.position_window:
                grids = torch.stack([e.view(h, w, c) for e in per_image])  # views: none only
                for r in args.position_window:
                    started = time.perf_counter()
                    placed = [to_map(near_by_place(embed(read(p), stages), grids, r)) for p in test]
                    pmed = [float(np.median(m)) for m in placed]
                    report(f"{label} window {r}", which, k_near, "max", placed, pmed,
                           len(bank), started)  # fmt: skip
            if args.own:

                def both(path: Path, stages=stages, how=how, bank=bank):  # noqa: ANN001, ANN202
                    e = centre(embed(read(path), stages), how)
                    c, h, w = e.shape
                    rows = e.flatten(1).T
                    near = torch.cat([torch.cdist(r, bank).amin(1) for r in rows.split(1024)])
                    return to_map(near.view(h, w)), {
                        o: to_map(own_distance(e, o)) for o in args.own
                    }

                ref = [both(p) for p in kept]
                test_own = [both(p)[1] for p in test]
                ref_bank = np.stack([b for b, _ in ref])
                mu_b, sd_b = float(ref_bank.mean()), float(ref_bank.std())
                for o in args.own:
                    ref_own = np.stack([d[o] for _, d in ref])
                    mu_o, sd_o = float(ref_own.mean()), float(ref_own.std())
                    own_maps = [d[o] for d in test_own]
                    std_bank = [(m - mu_b) / sd_b for m in maps]
                    std_own = [(m - mu_o) / sd_o for m in own_maps]
                    for name, fmaps in (
                        (f"own {o}", own_maps),
                        (
                            f"bank + own {o}",
                            [a + b for a, b in zip(std_bank, std_own, strict=True)],
                        ),
                        (
                            f"bank + own {o} / 2",
                            [a + b / 2 for a, b in zip(std_bank, std_own, strict=True)],
                        ),
                    ):
                        fmed = [float(np.median(m)) for m in fmaps]
                        report(f"{label} {name}", which, k_near, "max", fmaps, fmed, len(bank),
                               started)  # fmt: skip
            for r, near_self in selfs.items():
                own_maps = [
                    blur(F.interpolate(d[None, None], size=(SIZE, SIZE)))[0, 0].numpy()
                    for d in near_self
                ]
                fused = {
                    f"self r{r}": own_maps,
                    f"min(bank, self r{r})": [
                        np.minimum(a, b) for a, b in zip(maps, own_maps, strict=True)
                    ],
                    f"sqrt(bank x self r{r})": [
                        np.sqrt(np.maximum(a, 0) * np.maximum(b, 0))
                        for a, b in zip(maps, own_maps, strict=True)
                    ],
                }
                for name, fmaps in fused.items():
                    fmed = [float(np.median(m)) for m in fmaps]
                    for score in args.score:
                        report(f"{label} {name}", which, k_near, score, fmaps, fmed,
                               len(bank), started)  # fmt: skip


def pad_with(net, mode: str) -> None:  # noqa: ANN001 - a timm network
    """Make every convolution of ``net`` pad with ``mode`` (reflect, replicate) instead of zeros:
    ``nn.Conv2d`` through its ``padding_mode``, timm's TF-style ``Conv2dSame`` (zero-padded in
    its forward) by padding first and convolving unpadded."""
    import torch.nn.functional as F  # noqa: N812
    from timm.layers import padding as timm_padding
    from timm.layers.conv2d_same import Conv2dSame
    from torch import nn

    for module in net.modules():
        if isinstance(module, Conv2dSame):

            def forward(x, m=module):  # noqa: ANN001, ANN202
                ih, iw = x.shape[-2:]
                ph = timm_padding.get_same_padding(ih, m.weight.shape[-2], m.stride[0], 1)
                pw = timm_padding.get_same_padding(iw, m.weight.shape[-1], m.stride[1], 1)
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
                return F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)

            module.forward = forward
        elif isinstance(module, nn.Conv2d) and any(module.padding):
            module.padding_mode = mode


if __name__ == "__main__":
    main()
