"""How many crops the two-stage change detector trains on, with DeepPCB's templates as shipped
and aligned as the app aligns them: an epoch's time is proportional to it (batches of 64 crops).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/two_stage_crops.py \
        [--dataset ../shared/datasets/deeppcb] [--split trainval]

For each pair of the split: the proposals (``two_stage.proposals``, the crops of a training
epoch) against the template as shipped, and against the template aligned onto the image
(``workers.change.align`` then ``warp_reference``: what the detector training job reads). Some
templates are 2-4 px off their images; their edges then change all along the pattern.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/deeppcb")
    parser.add_argument("--split", default="trainval", help="DeepPCB's official_split")
    args = parser.parse_args()

    from workers.change import align, read_rgb
    from workers.change.align import warp_reference
    from workers.detection import two_stage

    coco = json.loads((args.dataset / "annotations.json").read_text())
    pairs = [im for im in coco["images"] if im.get("official_split") == args.split]
    if not pairs:
        parser.error(f"no {args.split} pairs in {args.dataset}")
    config = two_stage.PairConfig()
    shipped = aligned = refused = 0
    began = time.time()
    for im in pairs:
        image = read_rgb(args.dataset / im["file_name"])
        template = read_rgb(args.dataset / im["template_file_name"])
        grey = two_stage.grey(image)
        shipped += len(two_stage.proposals(grey, two_stage.grey(template), config))
        alignment = align(image, template)
        refused += not alignment.ok
        if alignment.ok:
            template = warp_reference(template, alignment, image.shape[:2])[0]
        aligned += len(two_stage.proposals(grey, two_stage.grey(template), config))
    n = len(pairs)
    print(
        f"{n} {args.split} pairs ({time.time() - began:.0f} s): templates as shipped {shipped} "
        f"crops ({shipped / n:.1f} per pair, {shipped / 64:.0f} batches of 64 per epoch); aligned "
        f"{aligned} ({aligned / n:.1f} per pair, {aligned / 64:.0f} batches; {refused} pairs "
        "refused by the alignment, counted as shipped)"
    )


if __name__ == "__main__":
    main()
