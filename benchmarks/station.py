"""A line station on a 1080p video: frames per second, latency and memory, beside the seeds' loop.

    .venv/bin/python benchmarks/station.py                       # PaDiM, 300 frames
    .venv/bin/python benchmarks/station.py --model patchcore
    .venv/bin/python benchmarks/station.py --minutes 30          # memory over a looped video
    .venv/bin/python benchmarks/station.py --storage             # what a stored frame costs

Builds a throwaway Loupe (SQLite and media in a temporary folder, removed at the end), trains the
model as the app does (job body in this process: 256 px input, ONNX export, OpenVINO on CPU) on
MVTec bottle normals framed into 1920x1080 frames, writes a 1080p MJPG video of unseen bottles
with broken ones at known frames, then runs on the same video and model:

1. **Loupe's station** (``StationProcess``, what ``manage.py loupe_station`` runs): decode,
   inference, verdicts, result rows in batches, NG/unsure frames stored as project images with
   heatmaps and suggestions. Figures: end-to-end frames/s (first frame to last row), latency
   p50/p95 per frame (inference and verdict), RSS.
2. **The seeds' loop**: ``cv2.VideoCapture`` → predict each frame → one SQLite ``INSERT`` and
   ``COMMIT`` per frame, with the model in torch (as the seeds load it) and again with the same
   OpenVINO runtime as the station (so the table says what comes from the runtime and what from
   the loop).

``--minutes M`` runs the station on the video looped for M minutes (frame keys made unique per
pass) and prints RSS every minute: memory must stay flat. Timings vary with the machine's load:
quote them with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

# what ``manage.py loupe_station`` sets: every core (LOUPE_STATION_THREADS to change), idle
# OpenMP threads asleep; the seeds' loop gets the same threads
os.environ.setdefault(
    "OMP_NUM_THREADS", os.environ.get("LOUPE_STATION_THREADS") or str(os.cpu_count() or 1)
)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASETS = Path(os.environ.get("LOUPE_DATASETS", ROOT.parent / "shared" / "datasets"))
W, H = 1920, 1080


def rss_mb() -> float:
    """Current resident memory (Linux /proc), not the peak."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def framed(path: Path):
    """A bottle photo centred in a 1080p frame on the grey of a conveyor."""
    import cv2
    import numpy as np

    frame = np.full((H, W, 3), 40, np.uint8)
    photo = cv2.resize(cv2.imread(str(path)), (H, H), interpolation=cv2.INTER_AREA)
    x = (W - H) // 2
    frame[:, x : x + H] = photo
    return frame


def make_video(path: Path, normals: list[Path], broken: list[Path], frames: int, ng_every: int):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 90)
    cache_n = [framed(p) for p in normals]
    cache_b = [framed(p) for p in broken]
    ng = set()
    for i in range(frames):
        if i % ng_every == ng_every // 2:
            writer.write(cache_b[len(ng) % len(cache_b)])
            ng.add(i)
        else:
            writer.write(cache_n[i % len(cache_n)])
    writer.release()
    return ng


def train(args, tmp: Path):
    import cv2

    from inspection.services.images import IncomingFile, image_store_one
    from inspection.services.inspections import model_version_train
    from inspection.services.projects import project_create
    from workers.tasks.anomaly import train_anomaly_model
    from workers.tasks.runner import run_job

    user = args.user
    project = project_create(user=user, name="Line 3")
    root = DATASETS / "mvtec_bottle"
    normals = sorted((root / "train" / "good").glob("*.png"))
    folder = tmp / "normals"
    folder.mkdir()
    for i, p in enumerate(normals[: args.normals]):
        out = folder / f"n{i}.png"
        cv2.imwrite(str(out), framed(p))
        image_store_one(
            project=project, user=user, incoming=IncomingFile(out.name, out), is_normal=True
        )
    t = time.perf_counter()
    version = model_version_train(
        user=user, project=project, architecture=args.model, params={"input_size": 256}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "succeeded"
    version.refresh_from_db()
    print(
        f"trained {args.model} on {args.normals} framed normals in "
        f"{time.perf_counter() - t:.0f} s; exports {version.metrics.get('exports')}"
    )
    unseen = normals[args.normals :] + sorted((root / "test" / "good").glob("*.png"))
    broken = sorted((root / "test" / "broken_large").glob("*.png"))
    return project, version, unseen, broken


class LoopedStation:
    """The station process on the video played ``minutes`` long (keys unique per pass)."""

    @staticmethod
    def make(name: str, minutes: float, report):
        from workers.station import sources
        from workers.tasks.stations import StationProcess

        class Looped(StationProcess):
            def _frames(self, station, stop):
                end = time.monotonic() + minutes * 60
                n = 0

                def frames():
                    nonlocal n
                    while time.monotonic() < end and not self.halt.is_set():
                        for frame in sources.video_frames(station.source, stop=self.halt.is_set):
                            frame.key = f"pass{n}:{frame.key}"
                            yield frame
                            if time.monotonic() >= end:
                                return
                        n += 1

                # read ahead and prepared on a thread, batched, the heartbeat on this one (in
                # ``_shown``): as the station reads a video
                self.reading_video = True
                return sources.Prefetched(frames(), prepare=self._prepare)

            def _shown(self, result, frame):
                super()._shown(result, frame)
                report()

        return Looped(name, until_idle=True, log=lambda m: None)


def seeds_loop(video: Path, model, config, db: Path) -> tuple[int, float]:
    """The seeds' skeleton: read a frame, predict, INSERT + COMMIT, next."""
    import cv2

    from workers import anomaly

    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE results (id INTEGER PRIMARY KEY, ts REAL, frame INTEGER, verdict TEXT, "
        "score REAL)"
    )
    cap = cv2.VideoCapture(str(video))
    n, t0 = 0, time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        p = anomaly.predict(model, "frame", config, image=rgb)
        con.execute(
            "INSERT INTO results (ts, frame, verdict, score) VALUES (?, ?, ?, ?)",
            (time.time(), n, "NG" if p.is_anomalous else "OK", p.image_score),
        )
        con.commit()
        n += 1
    cap.release()
    con.close()
    return n, time.perf_counter() - t0


def storage_costs(args, tmp: Path, project, version, unseen, broken) -> None:
    """``--storage``: what a frame sent to review costs (CPU ms), whole and by part."""
    import io

    import cv2
    from PIL import Image as PILImage

    from inspection import storage
    from inspection.imaging import probe_image
    from inspection.services.projects import with_inspection_defaults
    from inspection.services.stations import station_create, station_run_for
    from workers import anomaly
    from workers.station import loop, sources
    from workers.tasks.anomaly import predict_config
    from workers.tasks.stations import PNG_FAST, ResultSink

    def cpu_ms(fn, n: int = 5) -> float:
        t = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t) / n * 1000

    station = station_create(user=args.user, project=project, name="line-3", source=str(tmp))
    params = with_inspection_defaults(project.inspection)
    run_ = station_run_for(station=station, model_version=version, params=params)
    config = predict_config(project.inspection)
    paths = broken[:10] + unseen[:10]
    frames = [cv2.cvtColor(framed(p), cv2.COLOR_BGR2RGB) for p in paths]
    artifact = Path(version.artifact)
    with storage.local_tree(str(artifact.parent)) as model_dir:
        model = anomaly.load_model(model_dir / artifact.name)
        results = []
        for i, image in enumerate(frames):
            p = anomaly.predict(model, f"f{i}", config, image=image)
            frame = sources.Frame(key=f"f{i}", name=f"f{i}.png", image=image, number=i)
            out = loop.Inference(p.image_score, [{"box": list(r.box)} for r in p.regions], p)
            results.append(
                loop.FrameResult(
                    key=frame.key, name=frame.name, number=i, captured_at=time.time(),
                    verdict=loop.NG, score=p.image_score, regions=out.regions, latency_ms=0.0,
                    sample=True, frame=frame, inference=out,
                )
            )  # fmt: skip
        t = time.process_time()
        ResultSink(station, version, run_, None).flush(results)
        per_frame = (time.process_time() - t) / len(results) * 1000
    bgr = framed(paths[-1])
    print(
        f"a 1080p frame sent to review (ResultSink.flush, {len(results)} frames): {per_frame:.0f} ms CPU each"
    )
    for label, params_ in [
        ("PNG, zlib level 1", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
        ("PNG, the station's (level 1, up filter, RLE)", PNG_FAST),
    ]:
        size = len(cv2.imencode(".png", bgr, params_)[1]) / 1e6
        ms = cpu_ms(lambda p_=params_: cv2.imencode(".png", bgr, p_))
        print(f"  {label}: {ms:.0f} ms, {size:.2f} MB")
    png = tmp / "frame.png"
    cv2.imwrite(str(png), bgr, PNG_FAST)

    def pillow_exif() -> None:
        with PILImage.open(png) as im:
            im.getexif()  # decodes the whole PNG to look for eXIf

    print(f"  upload check of that PNG (probe_image): {cpu_ms(lambda: probe_image(png, max_pixels=10**9)):.0f} ms; "
          f"Pillow's getexif() on it, no longer called for PNG: {cpu_ms(pillow_exif):.0f} ms")  # fmt: skip
    heat = results[0].inference.detail.heatmap
    for level in (6, 3, 1):
        buf = io.BytesIO()
        PILImage.fromarray(heat).save(buf, format="PNG", compress_level=level)

        def enc(level_=level) -> None:
            PILImage.fromarray(heat).save(io.BytesIO(), format="PNG", compress_level=level_)

        print(f"  heatmap {heat.shape[1]}x{heat.shape[0]} PNG, zlib level {level}: "
              f"{cpu_ms(enc):.0f} ms, {len(buf.getvalue()) / 1e3:.0f} KB")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="padim", choices=["padim", "patchcore"])
    ap.add_argument("--frames", type=int, default=300, help="video length (12 s at 25 fps)")
    ap.add_argument("--normals", type=int, default=28)
    ap.add_argument("--ng-every", type=int, default=25, help="one broken bottle per N frames")
    ap.add_argument("--minutes", type=float, default=0, help="memory run: loop the video")
    ap.add_argument(
        "--unsure-margin",
        type=float,
        default=0.1,
        help="the station's setting: frames this close to the threshold are stored for review",
    )
    ap.add_argument("--ok-rate", type=float, default=0.01, help="share of OK frames stored")
    ap.add_argument(
        "--batch-frames",
        type=int,
        default=4,
        help="frames read ahead inferred in one network call (the station's default; 1: one by one)",
    )
    ap.add_argument("--skip-seeds", action="store_true")
    ap.add_argument(
        "--storage", action="store_true", help="only what a frame sent to review costs, by part"
    )
    args = ap.parse_args()
    if not (DATASETS / "mvtec_bottle").is_dir():
        sys.exit(f"no mvtec_bottle under {DATASETS} (set LOUPE_DATASETS)")

    from benchmarks.throwaway import throwaway_site

    tmp, args.user = throwaway_site("loupe-bench-station-")
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    from inspection.models import StationResult
    from inspection.services.stations import station_create
    from workers import anomaly
    from workers.tasks.anomaly import predict_config
    from workers.tasks.stations import StationProcess

    project, version, unseen, broken = train(args, tmp)
    if args.storage:
        storage_costs(args, tmp, project, version, unseen, broken)
        return
    video = tmp / "line-3.avi"
    t = time.perf_counter()
    ng = make_video(video, unseen, broken, args.frames, args.ng_every)
    print(
        f"video: {args.frames} frames {W}x{H} MJPG ({video.stat().st_size / 1e6:.0f} MB), "
        f"{len(ng)} broken bottles, written in {time.perf_counter() - t:.0f} s"
    )
    station = station_create(
        user=args.user,
        project=project,
        name="line-3",
        source=str(video),
        ok_sample_rate=args.ok_rate,
        unsure_margin=args.unsure_margin,
    )

    if args.minutes:
        samples = []
        last = [time.monotonic()]

        def report() -> None:
            if time.monotonic() - last[0] >= 60:
                last[0] = time.monotonic()
                samples.append(rss_mb())
                count = StationResult.objects.filter(station=station).count()
                print(f"  {len(samples)} min: RSS {samples[-1]:.0f} MB, {count} rows", flush=True)

        before = rss_mb()
        t = time.perf_counter()
        LoopedStation.make("line-3", args.minutes, report).run()
        wall = time.perf_counter() - t
        rows = StationResult.objects.filter(station=station).count()
        print(
            f"looped {args.minutes:g} min: {rows} frames, {rows / wall:.1f} frames/s; RSS "
            f"{before:.0f} MB before the model, {samples[0] if samples else 0:.0f} MB after 1 min, "
            f"{rss_mb():.0f} MB at the end"
        )
        return

    t = time.perf_counter()
    StationProcess(
        "line-3", until_idle=True, log=lambda m: None, batch_frames=args.batch_frames
    ).run()
    wall = time.perf_counter() - t
    rows = list(
        StationResult.objects.filter(station=station)
        .order_by("frame_number")
        .values("at", "latency_ms", "verdict", "frame_number", "image_id")
    )
    span = (rows[-1]["at"] - rows[0]["at"]).total_seconds()
    lat = sorted(r["latency_ms"] for r in rows)
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
    found = {r["frame_number"] for r in rows if r["verdict"] == "ng"}
    unsure = sum(r["verdict"] == "unsure" for r in rows)
    stored = sum(r["image_id"] is not None for r in rows)
    station_fps = (len(rows) - 1) / span
    print(
        f"\nLoupe station ({args.model}, {os.environ['OMP_NUM_THREADS']} threads, batches of up "
        f"to {args.batch_frames} frames, exports "
        f"{version.metrics.get('exports')}): "
        f"{len(rows)} frames; {station_fps:.1f} frames/s from first frame to last row "
        f"({len(rows) / wall:.1f} with the model load, {wall:.1f} s in all); "
        f"latency p50 {statistics.median(lat):.1f} ms, p95 {p95:.1f} ms; "
        f"NG {len(found & ng)}/{len(ng)} broken found, {len(found - ng)} false NG, "
        f"{unsure} unsure; {stored} frames stored for review; RSS {rss_mb():.0f} MB"
    )
    if args.skip_seeds:
        return

    from inspection import storage

    config = predict_config(project.inspection)
    artifact = Path(version.artifact)
    with storage.local_tree(str(artifact.parent)) as model_dir:
        for backend in ("torch", "auto"):
            model = anomaly.load_model(model_dir / artifact.name, backend=backend)
            db = Path(tempfile.mkdtemp(dir=tmp)) / "seeds.sqlite3"
            n, seconds = seeds_loop(video, model, config, db)
            label = "torch" if backend == "torch" else "the station's runtime"
            print(
                f"seeds' loop ({label}): {n} frames, {n / seconds:.1f} frames/s "
                f"(the station does {station_fps / (n / seconds):.1f}x as many)"
            )


if __name__ == "__main__":
    main()
