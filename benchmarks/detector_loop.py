"""The detector half of the loop on the shared detection sets, through Loupe's own services and the
job bodies as the worker runs them.

    # seconds per training image for each backbone (the models page's time estimate)
    .venv/bin/python benchmarks/detector_loop.py --estimate

    # speed only, of an artifact trained by a run below (on a quiet machine)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detector_loop.py --speed <media>/.../model.pt \\
        --images <a folder of the set's images> --input-size 416

    # import -> freeze -> train (detection_train) -> held-out mAP -> speed -> 20 MP -> optional AL
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/detector_loop.py \\
        --sets deeppcb neu_det --epochs 12 [--backbone lite0] [--input-size 640] [--rotate] \\
        [--references own-split] [--negatives 0.1] [--transplant] \\
        [--active-learning --rounds 3 --al-epochs 4]

For each set: import its COCO file (`dataset_import` as the job runs it), put the held-out images
in the test split (DeepPCB: its official test list; NEU-DET: a seeded 20 %), freeze a version
(the rest split 90/10 into train/val; DeepPCB's templates left out, or with --references
own-split each train/val image's template a negative in its split), train as the
`detection_train` job does (per-epoch time and val mAP50 from the job's history), then on the held-out split: mAP50, mAP and AP_small of the
deployed runtime (`load_detector`, ONNX Runtime on CPU); ms per 640 slice through ONNX Runtime
and torch eager; a 20 MP mosaic of test images predicted sliced, with its peak RSS (in a child
process); and, with --active-learning (or --only-active-learning), rounds of "label the next
images" chosen as the app's "label next" ranks them (the round's detector's boxes stored as
suggestions, the image grid's order=uncertainty) against random, test mAP50 after each round. Paddle's CPU
figure for one 640 slice is 2.1 s (docs/benchmarks-detection.md). A throwaway SQLite database
and media folder are used; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PADDLE_SECONDS_PER_SLICE = 2.1


def estimate(backbones: list[str], size: int, batch: int, iterations: int) -> None:
    """Seconds per training image (forward, loss, backward, step) on synthetic 640 px crops."""
    import numpy as np
    import torch
    from PIL import Image

    from workers import detection

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        images, anns = [], []
        for i in range(batch * 2):
            arr = rng.integers(60, 120, (size, size, 3), dtype=np.uint8)
            for j in range(4):
                x, y = (int(v) for v in rng.integers(0, size - 30, 2))
                arr[y : y + 20, x : x + 20] = (230, 40, 40) if j % 2 else (40, 40, 230)
                anns.append(
                    {"id": len(anns) + 1, "image_id": i + 1, "category_id": j % 2 + 1,
                     "bbox": [x, y, 20, 20], "area": 400, "iscrowd": 0}
                )  # fmt: skip
            Image.fromarray(arr).save(root / f"{i}.png")
            images.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
        cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
        (root / "t.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
        print(f"| backbone | input | batch | s per training image (median of {iterations}) |")
        print("| --- | --- | --- | --- |")
        for backbone in backbones:
            seconds: list[float] = []
            last = [time.perf_counter()]

            def progress(fraction, message, metrics, seconds=seconds, last=last):
                now = time.perf_counter()
                if metrics is None:
                    seconds.append((now - last[0]) / batch)
                last[0] = now

            detection.train(
                root / "t.json",
                root / f"{backbone}.pt",
                image_root=root,
                model_config=detection.model_config_for(backbone, 2, eval_size=size),
                train_config=detection.TrainConfig(
                    epochs=1,
                    batch_size=batch,
                    train_sizes=detection.train_sizes_around(size),
                    max_iters_per_epoch=iterations + 1,
                    log_every=1,
                ),
                progress=progress,
            )
            per_image = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
            print(f"| {backbone} | {size} | {batch} | {per_image:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--sets", nargs="+", default=["deeppcb", "neu_det"])
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--input-size", type=int, default=640)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--iterations-per-epoch", type=int, default=None)
    ap.add_argument(
        "--rotate",
        action="store_true",
        help="train with quarter turns and vertical flips (the form's 'parts have no up')",
    )
    ap.add_argument(
        "--transplant",
        action="store_true",
        help="align DeepPCB's templates to their images (the reference job) and train with the "
        "form's 'copy defects along the reference's pattern'",
    )
    ap.add_argument(
        "--references",
        choices=("none", "own-split"),
        default="none",
        help="DeepPCB's defect-free templates (reference images): left out of the frozen "
        "version (none), or each one a negative in its own image's split, the held-out images' "
        "templates still left out (own-split: what the app's freeze does, without the leak)",
    )
    ap.add_argument(
        "--negatives",
        type=float,
        default=None,
        help="the training's largest share of images without a box per epoch (default: the "
        "form's proposal)",
    )
    ap.add_argument("--estimate", action="store_true")
    ap.add_argument("--estimate-iterations", type=int, default=6)
    ap.add_argument("--active-learning", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--al-epochs", type=int, default=4)
    ap.add_argument(
        "--only-active-learning",
        action="store_true",
        help="skip the full training, speed and 20 MP figures: only the rounds",
    )
    ap.add_argument(
        "--speed",
        metavar="ARTIFACT",
        help="only the speed figures of a trained artifact (model.pt): ms per 640 slice and the "
        "20 MP mosaic at --input-size, over the images of --images",
    )
    ap.add_argument("--images", help="with --speed: a folder of the set's images")
    args = ap.parse_args()
    if args.speed:
        speed = _speed(Path(args.speed), Path(args.images), 640)
        with tempfile.TemporaryDirectory(prefix="loupe-detector-speed-") as tmp:  # the mosaic
            mp20 = _twenty_megapixels(
                Path(args.speed), Path(args.images), args.input_size, Path(tmp)
            )
        print(
            f"ms per 640 slice: ONNX {speed['ms_onnx']:.0f}, torch {speed['ms_torch']:.0f} "
            f"({PADDLE_SECONDS_PER_SLICE * 1000 / speed['ms_onnx']:.1f}x Paddle's 2.1 s); "
            f"20 MP: {mp20['mp20_s']:.1f} s, peak RSS {mp20['mp20_rss_mb']:.0f} MB"
        )
        return
    if args.estimate:
        estimate(["lite0", "s", "m", "l"], 640, args.batch_size, args.estimate_iterations)
        return

    from benchmarks.throwaway import throwaway_site

    tmp, user = throwaway_site("loupe-detector-bench-")
    rows = []
    for name in args.sets:
        rows.append(run_set(args, user, Path(args.datasets) / name, tmp))
    print()
    print(
        "| set | backbone | input | epochs | train s/epoch | val mAP50 | test mAP50 | test mAP | "
        "test AP_small | ms/640 slice ONNX | torch | vs Paddle | 20 MP s | 20 MP peak RSS |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "map50" not in r:  # --only-active-learning: its rounds were printed above
            continue
        recipe = r["backbone"] + (", turns" if r.get("rotate") else "")
        recipe += ", defects copied" if r.get("transplant") else ""
        if r.get("references") == "own-split":
            recipe += ", templates"
        if r.get("negatives") is not None:
            recipe += f", negatives <= {r['negatives']:g}"
        print(
            f"| {r['set']} | {recipe} | {r['input']} | {r['epochs']} | "
            f"{r['s_per_epoch']:.0f} | {r['val_map50']} | {r['map50']:.3f} | {r['map']:.3f} | "
            f"{r['ap_small']:.3f} | {r['ms_onnx']:.0f} | {r['ms_torch']:.0f} | "
            f"{PADDLE_SECONDS_PER_SLICE * 1000 / r['ms_onnx']:.1f}x | {r['mp20_s']:.1f} | "
            f"{r['mp20_rss_mb']:.0f} MB |"
        )
        for line in r.get("al", []):
            print(line)


def run_set(args, user, root: Path, tmp: Path) -> dict:
    from annotations.services.dataset_import import dataset_import_run
    from annotations.services.dataset_versions import dataset_version_freeze
    from annotations.services.detectors import detector_train
    from inspection.models import Image, Job
    from inspection.services.projects import project_create
    from workers.tasks.detection import train_detector
    from workers.tasks.runner import run_job

    project = project_create(user=user, name=root.name)
    t0 = time.perf_counter()
    report = dataset_import_run(
        user=user, project=project, fmt="coco", folder=root, build_pyramids=False
    )
    print(f"{root.name}: imported {report['message']} in {time.perf_counter() - t0:.0f} s")
    coco = json.loads((root / "annotations.json").read_text())
    held_out = _held_out(coco)
    names = {Path(im["file_name"]).name for im in coco["images"] if im["id"] in held_out}
    Image.objects.filter(project=project, original_name__in=names).update(split="test")
    # DeepPCB's defect-free templates come in as references (issue #14), i.e. normal images a
    # freeze would put in train and val as negatives, the held-out images' own templates among
    # them: the single-image detector is measured as before, without them (--references none)
    Image.objects.filter(project=project, is_reference=True).update(is_normal=False)
    # a seeded tenth of the rest is the val split (per-epoch mAP); the others train
    rest = sorted(
        Image.objects.filter(project=project, is_reference=False)
        .exclude(split="test")
        .values_list("id", flat=True)
    )
    val = random.Random(0).sample(rest, max(1, len(rest) // 10))
    Image.objects.filter(pk__in=val).update(split="val")
    Image.objects.filter(pk__in=set(rest) - set(val)).update(split="train")
    if args.references == "own-split":  # each train/val image's template: a negative beside it
        for split in ("train", "val"):
            own = Image.objects.filter(
                project=project, split=split, is_reference=False, reference__isnull=False
            ).values_list("reference_id", flat=True)
            Image.objects.filter(pk__in=list(own)).update(is_normal=True, split=split)
    if args.transplant:  # the version freezes each image's alignment with its reference
        from workers.tasks.references import align_references

        t0 = time.perf_counter()
        for job in Job.objects.filter(project=project, kind="reference_align", status="queued"):
            run_job(str(job.pk), align_references.body)
        aligned = Image.objects.filter(project=project, alignment__status="ok").count()
        print(f"{root.name}: {aligned} references aligned in {time.perf_counter() - t0:.0f} s")
    version = dataset_version_freeze(user=user, project=project, seed=0)
    print(f"{root.name}: frozen v{version.number}: {version.counts['splits']}")
    params = {
        "backbone": args.backbone,
        "input_size": args.input_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "rotate": args.rotate,
        # the single-image detector (with aligned templates the form would propose the Siamese)
        "reference": "none",
    }
    if args.transplant:
        params["transplant"] = True
    if args.iterations_per_epoch:
        params["iterations_per_epoch"] = args.iterations_per_epoch
    if args.negatives is not None:
        params["negatives"] = args.negatives
    if args.only_active_learning:
        from annotations.services.detectors import detector_proposal

        sliced = detector_proposal(user=user, version=version, params=params)["params"]["slice"]
        test_json, image_root = _split_json(version, "test", tmp / f"{root.name}-test")
        whole = max(max(im["width"], im["height"]) for im in version.content["images"])
        eval_slice = args.input_size if sliced else whole
        lines = _active_learning(
            args, user, project, version, test_json, image_root, tmp, eval_slice, sliced
        )
        print("\n".join(lines))
        return {"set": root.name, "al": lines}
    model = detector_train(user=user, project=project, version=version, params=params)
    t0 = time.perf_counter()
    status = run_job(str(model.job_id), train_detector.body)
    train_s = time.perf_counter() - t0
    model.refresh_from_db()
    if status != "succeeded":
        raise SystemExit(
            f"{root.name}: training {status}: {Job.objects.get(pk=model.job_id).error}"
        )
    history = model.metrics["history"]
    per_epoch = statistics.median(h["seconds"] for h in history)
    print(
        f"{root.name}: trained {len(history)} epochs in {train_s:.0f} s "
        f"(median {per_epoch:.0f} s/epoch); val mAP50 by epoch: "
        + ", ".join(f"{h['map50']:.3f}" for h in history if "map50" in h)
    )
    artifact = Path(os.environ["MEDIA_ROOT"]) / model.artifact
    test_json, image_root = _split_json(version, "test", tmp / f"{root.name}-test")
    sliced = model.params["slice"]
    whole = max(max(im["width"], im["height"]) for im in version.content["images"])
    eval_slice = args.input_size if sliced else whole  # judged as the runs predict
    figures = _evaluate(artifact, test_json, image_root, eval_slice)
    print(f"{root.name}: held-out test: {figures}")
    speed = _speed(artifact, image_root, 640)  # Paddle's figure is per 640 slice
    mp20 = _twenty_megapixels(artifact, image_root, args.input_size, tmp)  # slices at input size
    row = {
        "set": root.name,
        "backbone": args.backbone,
        "input": args.input_size,
        "epochs": len(history),
        "rotate": args.rotate,
        "transplant": args.transplant,
        "references": args.references,
        "negatives": args.negatives,
        "s_per_epoch": per_epoch,
        "val_map50": next((f"{h['map50']:.3f}" for h in reversed(history) if "map50" in h), "—"),
        **figures,
        **speed,
        **mp20,
    }
    if args.active_learning:
        row["al"] = _active_learning(
            args, user, project, version, test_json, image_root, tmp, eval_slice, sliced
        )
    return row


def _held_out(coco: dict) -> set[int]:
    """DeepPCB's official test list; otherwise a seeded 20 % of the images."""
    official = {im["id"] for im in coco["images"] if im.get("official_split") == "test"}
    if official:
        return official
    ids = sorted(im["id"] for im in coco["images"])
    return set(random.Random(0).sample(ids, len(ids) // 5))


def _split_json(version, split: str, folder: Path, keys: set[str] | None = None):
    """A COCO file of one split of a frozen version, over links to the stored files."""
    from annotations.formats.coco import to_coco_dict
    from annotations.services.dataset_versions import version_dataset_from_content

    folder.mkdir(parents=True, exist_ok=True)
    ds = version_dataset_from_content(version.content).subset(split)
    if keys is not None:
        ds.images = [im for im in ds.images if im.key in keys]
        ds.shapes = [s for s in ds.shapes if s.image_key in keys]
    files = {str(im["id"]): im["file"] for im in version.content["images"]}
    names = {}
    for im in ds.images:
        src = Path(os.environ["MEDIA_ROOT"]) / files[im.key]
        link = folder / f"{im.key}{src.suffix}"
        if not link.exists():
            os.symlink(src, link)
        names[im.key] = link.name
    out = folder / f"{split}.json"
    out.write_text(json.dumps(to_coco_dict(ds, file_names=names)))
    return out, folder


def _evaluate(artifact: Path, coco_json: Path, image_root: Path, size: int) -> dict:
    from workers import detection

    detector = detection.load_detector(artifact)
    result = detection.evaluate(detector, coco_json, image_root=image_root, slice_size=size)
    return {
        "map50": result.map50,
        "map": result.map,
        "ap_small": max(result.ap_small, 0.0),
        "runtime": detector.runtime,
    }


def _speed(artifact: Path, image_root: Path, size: int, repeats: int = 12) -> dict:
    """ms per ``size`` slice (the network run at that input): the deployed runtime (ONNX
    Runtime) and torch eager."""
    import numpy as np
    from PIL import Image as PILImage

    from workers import detection

    first = sorted(image_root.glob("*.jpg")) or sorted(image_root.iterdir())
    with PILImage.open(first[0]) as im:
        arr = np.asarray(im.convert("RGB").resize((size, size)))
    out = {}
    for key, runtime in (("ms_onnx", "onnx"), ("ms_torch", "torch")):
        detector = detection.load_detector(artifact, runtime=runtime, device="cpu", eval_size=size)
        detector.predict(arr)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            detector.predict(arr)
            times.append(time.perf_counter() - t0)
        out[key] = 1000 * statistics.median(times)
    return out


def _twenty_megapixels(artifact: Path, image_root: Path, size: int, tmp: Path) -> dict:
    """A 5472 x 3648 mosaic of test images predicted in slices, in a child process (peak RSS)."""
    import numpy as np
    from PIL import Image as PILImage

    tiles = sorted(image_root.glob("*.jpg")) or sorted(
        p for p in image_root.iterdir() if p.suffix != ".json"
    )
    w, h = 5472, 3648
    mosaic = np.zeros((h, w, 3), np.uint8)
    n = 0
    for y in range(0, h, 608):
        for x in range(0, w, 608):
            with PILImage.open(tiles[n % len(tiles)]) as im:
                tile = np.asarray(im.convert("RGB").resize((608, 608)))
            mosaic[y : y + 608, x : x + 608] = tile[: h - y, : w - x]
            n += 1
    path = tmp / "mosaic-20mp.png"
    PILImage.fromarray(mosaic).save(path)
    code = (
        "import time\n"
        "from workers import detection, memory\n"
        f"d = detection.load_detector({str(artifact)!r})\n"
        "t0 = time.perf_counter()\n"
        f"found = d.predict_sliced({str(path)!r}, slice_size={size}, overlap=0.25, batch_size=1)\n"
        "print(time.perf_counter() - t0, round(1024 * memory.peak_rss_mb()), len(found), d.runtime)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    seconds, rss_kb, found, runtime = out.stdout.split()[-4:]
    print(f"20 MP mosaic: {float(seconds):.1f} s, {found} boxes, {runtime}, peak RSS {rss_kb} kB")
    return {"mp20_s": float(seconds), "mp20_rss_mb": int(rss_kb) / 1024}


def _active_learning(args, user, project, version, test_json, image_root, tmp, eval_slice, sliced):
    """Rounds of 'label the next images': start from a third of the train split, add a third
    each round, chosen at random or as the app's "label next" chooses them (each round's
    detector predicts the images not chosen yet, its boxes are stored as suggestions, and the
    image grid's order=uncertainty ranks the images: annotations.filters.uncertainty_ranked);
    train a fresh detector each round, as the job does (slices when the job would slice)."""
    from annotations.filters import uncertainty_ranked
    from annotations.models import Suggestion
    from annotations.services.suggestions import SuggestionIn, suggestions_store
    from inspection.models import Image, InspectionRun, ModelVersion
    from workers import detection

    train = [im for im in version.content["images"] if im["split"] == "train"]
    keys = [str(im["id"]) for im in train]
    _, every = _split_json(version, "train", tmp / f"al-{version.project_id}-all")
    path_of = {p.stem: p for p in every.iterdir() if p.suffix != ".json"}
    step = max(1, len(keys) // args.rounds)
    lines = [
        "",
        "| round | labelled images | mAP50 uncertainty | mAP50 random |",
        "| --- | --- | --- | --- |",
    ]
    chosen = {"uncertainty": set(random.Random(1).sample(keys, step))}
    chosen["random"] = set(chosen["uncertainty"])
    maps: dict[str, list[float]] = {"uncertainty": [], "random": []}
    number = 100
    for round_ in range(1, args.rounds + 1):
        labelled = len(chosen["random"])
        for how in ("uncertainty", "random"):
            folder = tmp / f"al-{version.project_id}-{how}-{round_}"
            train_json, root = _split_json(version, "train", folder, chosen[how])
            categories = json.loads(train_json.read_text())["categories"]
            result = detection.train(
                train_json,
                folder / "model.pt",
                image_root=root,
                model_config=detection.model_config_for(
                    args.backbone, len(categories), eval_size=args.input_size
                ),
                train_config=detection.TrainConfig(
                    epochs=args.al_epochs,
                    batch_size=args.batch_size,
                    crop_size=args.input_size if sliced else None,
                    train_sizes=detection.train_sizes_around(args.input_size),
                    max_iters_per_epoch=args.iterations_per_epoch,
                ),
            )
            figures = _evaluate(result.artifact, test_json, image_root, eval_slice)
            maps[how].append(figures["map50"])
            print(f"AL round {round_} {how}: {labelled} images, test mAP50 {figures['map50']:.3f}")
            rest = [k for k in keys if k not in chosen[how]]
            if not rest or round_ == args.rounds:
                continue
            if how == "random":
                chosen[how] |= set(random.Random(round_).sample(rest, min(step, len(rest))))
                continue
            detector = detection.load_detector(result.artifact)
            # only this round's detector speaks: the previous rounds' suggestions go
            Suggestion.objects.filter(model_version__architecture="al").delete()
            number += 1
            mv = ModelVersion.objects.create(
                project=project, number=number, kind="detector", architecture="al", status="ready"
            )
            run = InspectionRun.objects.create(
                project=project, model_version=mv, image_ids=[int(k) for k in rest]
            )
            for k in rest:
                found = detector.predict_sliced(
                    str(path_of[k]), slice_size=eval_slice, score_threshold=0.3
                )
                suggestions_store(
                    image=Image.objects.get(pk=int(k)),
                    run=run,
                    model_version=mv,
                    suggestions=[SuggestionIn.from_detection(d) for d in found],
                )
            ranked = uncertainty_ranked(Image.objects.filter(pk__in=[int(k) for k in rest]))
            chosen[how] |= {str(pk) for pk in ranked.values_list("id", flat=True)[:step]}
        lines.append(
            f"| {round_} | {labelled} | {maps['uncertainty'][-1]:.3f} | {maps['random'][-1]:.3f} |"
        )
    return lines


if __name__ == "__main__":
    main()
