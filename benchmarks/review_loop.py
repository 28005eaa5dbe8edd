"""The review loop's figures on the MVTec-layout dev sets, through Loupe's own services and jobs.

    .venv/bin/python benchmarks/review_loop.py [--datasets ../shared/datasets] [--model padim]
        [--input-size 256] [--sets mvtec_bottle magnetic_tile]

For each set: import it (train/good -> normal images, test/* -> images to inspect, masks -> ground
truth), train the anomaly model as the `anomaly_train` job does, inspect every test image as the
`anomaly_inspect` job does (full-resolution tiles, heatmap -> regions -> suggestions), and print the
run's figures: suggestions made, precision of suggestions against ground truth, region recall,
false suggestions per normal image (at the model's calibrated threshold), and the best recall at
<= 1 false suggestion per normal image. Job bodies run in this process (no broker needed); a
throwaway SQLite database and media folder are used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=["mvtec_bottle", "magnetic_tile"])
    ap.add_argument("--model", default="padim", choices=["padim", "patchcore", "efficientad"])
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="EfficientAD steps")
    args = ap.parse_args()

    from benchmarks.throwaway import throwaway_site

    _tmp, user = throwaway_site("loupe-bench-")
    from django.db import transaction

    from annotations.figures import run_figures
    from annotations.services.dataset_import import dataset_import_run
    from inspection.models import Job
    from inspection.services.inspections import inspection_run_start, model_version_train
    from inspection.services.projects import project_create
    from workers.tasks.anomaly import run_inspection, train_anomaly_model
    from workers.tasks.runner import run_job

    rows = []
    for name in args.sets:
        root = Path(args.datasets) / name
        project = project_create(user=user, name=name)
        t0 = time.perf_counter()
        report = dataset_import_run(
            user=user, project=project, fmt="mvtec", folder=root, build_pyramids=False
        )
        params = {"input_size": args.input_size}
        if args.steps:
            params["steps"] = args.steps
        with transaction.atomic():
            version = model_version_train(
                user=user, project=project, architecture=args.model, params=params
            )
        t1 = time.perf_counter()
        status = run_job(str(version.job_id), train_anomaly_model.body)
        train_s = time.perf_counter() - t1
        if status != "succeeded":
            print(name, "training", status, Job.objects.get(pk=version.job_id).error)
            continue
        with transaction.atomic():
            run = inspection_run_start(user=user, project=project, scope="new")
        t2 = time.perf_counter()
        status = run_job(str(run.job_id), run_inspection.body)
        inspect_s = time.perf_counter() - t2
        run.refresh_from_db()
        f = run_figures(run)
        rows.append((name, report, f, train_s, inspect_s, len(run.image_ids)))
        print(
            f"{name}: {report['negatives']} normal, {len(run.image_ids)} inspected in {inspect_s:.0f} s "
            f"({1000 * inspect_s / max(len(run.image_ids), 1):.0f} ms/image), trained in {train_s:.0f} s; "
            f"{f.suggestions} suggestions, precision {f.precision_gt}, region recall {f.region_recall}, "
            f"false/normal image {f.false_per_normal_image}, recall at <=1 false/normal {f.recall_at_1_false_per_normal} "
            f"(total {time.perf_counter() - t0:.0f} s)"
        )
    print()
    print(
        "| set | model | normal / inspected | suggestions | precision | region recall | false per normal image | recall at ≤1 false/normal | train s | inspect ms/image |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, report, f, train_s, inspect_s, n in rows:
        print(
            f"| {name} | {args.model} {args.input_size}px | {report['negatives']} / {n} | {f.suggestions} | {f.precision_gt} | "
            f"{f.region_recall} ({f.gt_regions} regions) | {f.false_per_normal_image} ({f.normal_images} images) | "
            f"{f.recall_at_1_false_per_normal} | {train_s:.0f} | {1000 * inspect_s / max(n, 1):.0f} |"
        )


if __name__ == "__main__":
    main()
