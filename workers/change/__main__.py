"""Command line: ``python -m workers.change align|regions IMAGE REFERENCE``.

Examples::

    python -m workers.change align board.jpg golden.jpg --out diff.png
    python -m workers.change regions board.jpg golden.jpg --threshold 1.9 --heatmap heat.png
    python -m workers.change regions board.jpg golden.jpg --calibration calibration.json

``align`` prints the alignment as JSON (exit code 1 when it is refused) and, with ``--out``,
writes the difference image. ``regions`` prints the alignment and the candidate regions; its
scores are raw unless ``--calibration`` names a ``ChangeCalibration.to_dict()`` JSON file, with
``--threshold`` the raw score that counts as a change (its default is DeepPCB's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (1: alignment refused, 2: bad input)."""
    from workers.anomaly.regions import RegionConfig

    from .compare import DEEPPCB_RAW_THRESHOLD

    parser = argparse.ArgumentParser(
        prog="python -m workers.change",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--max-side", type=int, default=1600, help="alignment works this small")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("align", help="align REFERENCE onto IMAGE, print the alignment as JSON")
    a.add_argument("image")
    a.add_argument("reference")
    a.add_argument("--out", help="write the difference image (PNG) here")
    r = sub.add_parser("regions", help="change regions of IMAGE against REFERENCE, as JSON")
    r.add_argument("image")
    r.add_argument("reference")
    r.add_argument("--calibration", help="a ChangeCalibration JSON file (scores become 0.5-based)")
    r.add_argument(
        "--threshold",
        type=float,
        default=DEEPPCB_RAW_THRESHOLD,
        help=f"raw score of a change without --calibration (default {DEEPPCB_RAW_THRESHOLD}, "
        "DeepPCB's)",
    )
    r.add_argument("--min-area", type=float, default=64.0, help="image pixels")
    r.add_argument("--merge-distance", type=float, default=16.0, help="image pixels")
    r.add_argument("--layers", default="1,2", help="Lite0 levels, e.g. 1,2")
    r.add_argument("--pixel-weight", type=float, default=None, help="weight of grey levels")
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--heatmap", help="write the calibrated heatmap as an 8-bit PNG here")
    args = parser.parse_args(argv)

    from .align import AlignmentError, align, difference_image, warp_reference
    from .compare import read_rgb

    try:
        image, reference = read_rgb(args.image), read_rgb(args.reference)
        if args.command == "align":
            alignment = align(image, reference, max_side=args.max_side)
            print(json.dumps(alignment.to_dict(), indent=2))
            if args.out and alignment.ok:
                warped, valid = warp_reference(reference, alignment, image.shape[:2])
                cv2.imwrite(str(Path(args.out)), difference_image(image, warped, valid))
            return 0 if alignment.ok else 1
        from .compare import compare
        from .heatmap import ChangeCalibration, ChangeEncoder

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if args.calibration:
            data = json.loads(Path(args.calibration).read_text())
            calibration = ChangeCalibration.from_dict(data)
        else:
            # lo = 0: a calibrated score is raw / (2 * threshold), printed back as raw below
            calibration = ChangeCalibration(
                lo=0.0, threshold=args.threshold, quantile=0.0, rule="raw threshold given"
            )
        encoder = ChangeEncoder(
            device=args.device, layers=tuple(int(v) for v in args.layers.split(","))
        )
        config = RegionConfig(
            threshold=0.5, min_area=args.min_area, merge_distance=args.merge_distance
        )
        result = compare(
            image,
            reference,
            encoder=encoder,
            calibration=calibration,
            region_config=config,
            max_side=args.max_side,
            pixel_weight=args.pixel_weight,
        )
    except (AlignmentError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = result.to_dict()
    if not args.calibration:
        scale = 2.0 * args.threshold  # calibrated s = raw / (2 * threshold) with lo = 0
        for region in out["regions"]:
            region["peak_score"] *= scale
            region["mean_score"] *= scale
        out["scores"] = f"raw (threshold {args.threshold})"
    else:
        out["scores"] = "calibrated (0.5 = threshold)"
    print(json.dumps(out, indent=2))
    if args.heatmap and result.heatmap is not None:
        import numpy as np

        png = np.clip(result.heatmap * 255.0, 0, 255).astype(np.uint8)
        cv2.imwrite(str(Path(args.heatmap)), png)
    return 0 if result.alignment.ok else 1


if __name__ == "__main__":
    sys.exit(main())
