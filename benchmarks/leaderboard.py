"""The leaderboard ("Which model for this part?") on an MVTec-layout dev set, through Loupe's own
services and job, as a project admin would run it.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python \\
        benchmarks/leaderboard.py [--set magnetic_tile] [--models padim patchcore] \\
        [--shading-variants] [--size-variants] [--scale S [--coarse-variants]] \\
        [--lines-variants] [--params JSON]

Imports the set into a throwaway Loupe (train/good -> normal images; test/* -> test split,
ground-truth masks as imported polygons), marks the test split's ``good`` images normal as a
reviewer would, starts a comparison with the models and settings asked for
(``model_comparison_start``: one version per model and setting), runs the ``anomaly_compare``
job in this process (no broker) and prints its table: each version's setup, image AUROC, pixel
AUROC, AU-PRO, region recall at <= 1 false region per good image with their 95 % intervals,
the figures at its own threshold, train s, ms per image, the memory a fresh process took to
load it and predict three images, and its size on disk, the best marked; then the page's "Per
defect kind" table (per label category and version: the share of its regions found at the whole
set's cut, of how many, then its image / pixel AUROC). The split is the
app's, not ``benchmarks/anomaly.py``'s: one in five training normals kept aside for scoring,
plus the test split's normals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _fig(f: dict, name: str) -> str:
    value = f.get(name)
    if value is None:
        return "-"
    ci = (f.get("intervals") or {}).get(name)
    return f"{value:.3f}" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--set", default="magnetic_tile")
    ap.add_argument("--models", nargs="+", default=["padim", "patchcore"])
    ap.add_argument("--shading-variants", action="store_true", help="each without and with 0.2")
    ap.add_argument(
        "--size-variants",
        action="store_true",
        help="each at half the resolution too (128 px whole, or tiles at half the scale)",
    )
    ap.add_argument("--scale", type=float, default=None, help="tiles at this pixel scale")
    ap.add_argument(
        "--coarse-variants",
        action="store_true",
        help="with --scale: each without and with a whole-image pass beside its tiles",
    )
    ap.add_argument(
        "--lines-variants",
        action="store_true",
        help="each without and with the dark-line detector beside it",
    )
    ap.add_argument(
        "--params",
        default="{}",
        help="training parameters every version shares, as JSON (e.g. '{\"shading\": 0.2}')",
    )
    args = ap.parse_args()
    if args.coarse_variants and not args.scale:  # before minutes of importing the set
        ap.error("--coarse-variants goes with tiles: give --scale")

    from benchmarks.throwaway import throwaway_site

    _tmp, user = throwaway_site("loupe-leaderboard-")
    from django.db import transaction

    from annotations.services.dataset_import import dataset_import_run
    from annotations.services.review import image_set_normal
    from inspection.models import Image, Job, ModelVersion
    from inspection.services.inspections import anomaly_setup, model_comparison_start
    from inspection.services.projects import project_create
    from workers.tasks.anomaly_compare import compare_anomaly_models
    from workers.tasks.runner import run_job

    project = project_create(user=user, name=args.set)
    report = dataset_import_run(
        user=user,
        project=project,
        fmt="mvtec",
        folder=Path(args.datasets) / args.set,
        build_pyramids=False,
    )
    # the test split's good images: a reviewer marks them normal (no labels came with them)
    good = Image.objects.filter(project=project, split="test", annotations__isnull=True)
    for image in good:
        image_set_normal(user=user, image=image, normal=True)
    variants = [{}]
    if args.shading_variants:
        variants = [w for v in variants for w in (v, {**v, "shading": 0.2})]
    params = {**json.loads(args.params), **({"scale": args.scale} if args.scale else {})}
    if args.size_variants:  # as the models page's "each at full and half resolution"
        half = {"scale": args.scale / 2} if args.scale else {"input_size": 128}
        variants = [w for v in variants for w in (v, {**v, **half})]
    if args.coarse_variants:  # as the models page's "each with and without a whole-image pass"
        variants = [w for v in variants for w in (v, {**v, "coarse_pass": True})]
    if args.lines_variants:  # as the models page's "each with and without a dark-line detector"
        variants = [w for v in variants for w in (v, {**v, "lines": True})]
    with transaction.atomic():
        job = model_comparison_start(
            user=user, project=project, architectures=args.models, params=params, variants=variants
        )
    started = time.perf_counter()
    status = run_job(str(job.pk), compare_anomaly_models.body)
    seconds = time.perf_counter() - started
    job = Job.objects.get(pk=job.pk)
    if status != "succeeded":
        print(f"comparison {status}: {job.error}")
        return 1
    res = job.result
    print(
        f"{args.set}: {report['images']} images imported; {res['training_images']} normal images "
        f"trained on; scored on {res['defect_images']} reviewed defect images "
        f"({res['pixel_defect_images']} with pixel labels) and {res['normal_images']} normal "
        f"images; {len(res['rows'])} versions in {seconds:.0f} s; {res['message']}"
    )
    print()
    print(
        "| model | setup | image AUROC (95 % CI) | pixel AUROC | AU-PRO | region recall "
        "(≤ 1 false per good image) | at the threshold: recall · false per good image | "
        "train s | ms per image | memory to run, MB | on disk, MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    versions = ModelVersion.objects.in_bulk([r["model_version"] for r in res["rows"]])
    for r in res["rows"]:
        name = r["architecture"] + (" **best**" if r.get("best") else "")
        setup = anomaly_setup(versions[r["model_version"]].params)
        if "error" in r:
            print(f"| {name} | {setup} | failed: {r['error'][:120]} | | | | | | | | |")
            continue
        f = r["figures"]
        at = f"{f['recall_at_threshold']:.3f} · {f['false_per_good_image_at_threshold']:.2f}"
        print(
            f"| {name} | {setup} | {_fig(f, 'image_auroc')} | {_fig(f, 'pixel_auroc')} | "
            f"{_fig(f, 'au_pro')} | {_fig(f, 'region_recall')} | {at} | "
            f"{f['train_seconds']:.0f} | {f['ms_per_image']:.0f} | {f.get('memory_mb') or '-'} | "
            f"{f['model_mb']} |"
        )
    # the page's "Per defect kind": each label category's share of regions found (the whole
    # set's cut), image and pixel AUROC, per version
    scored = [r for r in res["rows"] if r.get("figures")]
    kinds = sorted({k for r in scored for k in r["figures"].get("by_type") or {}})
    if kinds:
        print()
        print("| defect kind | " + " | ".join(
            f"{r['architecture']}, {anomaly_setup(versions[r['model_version']].params)}"
            for r in scored) + " |")  # fmt: skip
        print("| --- |" + " --- |" * len(scored))
        for kind in kinds:
            cells = []
            for r in scored:
                k = (r["figures"].get("by_type") or {}).get(kind)
                cells.append(
                    "-"
                    if k is None
                    else f"{_num(k['region_recall'])} of {k['regions']} · "
                    f"{_num(k['image_auroc'])} / {_num(k['pixel_auroc'])}"
                )
            print(f"| {kind} | " + " | ".join(cells) + " |")
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
