"""A line station's process (``manage.py loupe_station NAME``): glue between the station's
settings and results in the app, the frame sources and loop of ``workers.station`` and the
anomaly engine.

Not a job: a station runs for weeks, one process each, supervised by whatever runs the
deployment (``loupe run`` starts the stations marked "start with Loupe"). It reports every
second (``station_report``): people stop and start it from the station page through
``Station.enabled``, and a new active model or new settings are picked up without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from django import db
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from inspection import storage
from inspection.models import Image, ModelVersion, Station
from inspection.services.images import (
    IncomingFile,
    image_store_one,
    images_enqueue_derivatives,
)
from inspection.services.inspections import active_model, regions_snapshot
from inspection.services.projects import with_inspection_defaults
from inspection.services.stations import (
    station_event_add,
    station_recorded_keys,
    station_report,
    station_results_record,
    station_resume_frame,
    station_run_add_image,
    station_run_for,
    station_sample_room,
)
from workers.anomaly import errors as anomaly_errors
from workers.station import loop as station_loop
from workers.station import sources
from workers.tasks.anomaly import predict_config, store_prediction
from workers.tasks.detection import active_detector
from workers.tasks.regions import RegistrationRefused, RunRegions
from workers.tasks.runner import JobError

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
LATEST_FRAME_SIDE = 960  # the live view's frame: enough for a page, cheap to encode
PNG_FAST = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_UP,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
]


class Restart(Exception):
    """The model or the settings changed, or the station was paused: set up again."""


class StationProcess:
    """Runs one station until SIGTERM/SIGINT (or, with ``until_idle``, until a video file or the
    folder has nothing more: tests and one-off runs)."""

    def __init__(self, name: str, *, until_idle: bool = False, log=None, batch_frames: int = 4):
        self.name = name
        self.batch_frames = batch_frames  # frames read ahead inferred together (1: one by one)
        self.until_idle = until_idle
        self.log = log or (lambda message: logger.info("%s: %s", name, message))
        self.stopping = False
        self.latest: station_loop.FrameResult | None = None
        self.latest_image: np.ndarray | None = None
        self.shown_key: str | None = None
        self.last_beat = 0.0
        self.settings: tuple = ()
        self.station: Station | None = None
        self.model = None  # the loaded anomaly model being run
        self.halt = threading.Event()  # stops a video's reader thread
        self.reading_video = False
        self.source_events: deque = deque()  # a live reader's connects and drops
        self.source_down = ""

    # --- the outer loop: set up, inspect, set up again ---------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        try:
            station = Station.objects.select_related("project").get(name=self.name)
        except Station.DoesNotExist:
            raise SystemExit(
                f"No station named {self.name!r}: create it on the project's stations page first."
            ) from None
        station_event_add(station=station, kind="started", message="process started")
        wait = 1.0
        try:
            while not self.stopping:
                station.refresh_from_db()
                if not station.enabled:
                    self._beat(station, Station.Status.PAUSED, "paused on the station page")
                    time.sleep(HEARTBEAT_S)
                    continue
                version = active_model(station.project)
                if version is None or not version.artifact:
                    self._beat(station, Station.Status.WAITING, "the project has no active model")
                    if self.until_idle:
                        return 1
                    time.sleep(2 * HEARTBEAT_S)
                    continue
                try:
                    finished = self._inspect(station, version)
                    wait = 1.0
                except Restart:
                    continue
                except sources.SourceError as exc:
                    self._beat(station, Station.Status.WAITING, str(exc))
                    if self.until_idle:
                        return 1
                    time.sleep(wait)
                    wait = min(wait * 2, 30.0)
                    continue
                except anomaly_errors.AnomalyError as exc:  # a damaged or incompatible artifact
                    self._beat(
                        station, Station.Status.FAILED, f"the model could not be loaded: {exc}"
                    )
                    if self.until_idle:
                        return 1
                    time.sleep(10 * HEARTBEAT_S)  # another model may be activated meanwhile
                    continue
                if finished and self.until_idle:
                    ended = (
                        "the video ended"
                        if sources.source_kind_of(station.source) == "video"
                        else "no new file in the folder"
                    )
                    self._beat(station, Station.Status.STOPPED, ended)
                    return 0
                if finished and sources.source_kind_of(station.source) == "video":
                    # a supervised process stays up (a restart would only find the same end):
                    # a new source or model on the station page starts it again
                    self._idle(station, "the video ended; change the source to go on")
        finally:
            station.refresh_from_db()
            if station.status != Station.Status.STOPPED:
                station_report(station=station, status=Station.Status.STOPPED, message="stopped")
            station_event_add(station=station, kind="stopped", message="process stopped")
        return 0

    def _idle(self, station: Station, message: str) -> None:
        version = active_model(station.project)
        self.settings = self._settings_of(station, version) if version else ()
        while not self.stopping:
            self._beat(station, Station.Status.WAITING, message)
            time.sleep(HEARTBEAT_S)
            station.refresh_from_db()
            station.project.refresh_from_db(fields=["inspection"])
            if self._changed(station):
                return

    def _stop(self, *_args) -> None:
        self.stopping = True

    def _inspect(self, station: Station, version: ModelVersion) -> bool:
        """Inspect the station's source with ``version``; True when the source is used up."""
        from workers import anomaly

        params = with_inspection_defaults(station.project.inspection)
        regions_now = regions_snapshot(station.project)
        params |= regions_now  # as an inspection run's
        run = station_run_for(station=station, model_version=version, params=params)
        config = predict_config(params)
        # the regions the loop applies, not a second reading (a change in between would never
        # set the station up again)
        self.settings = self._settings_of(station, version, regions_now)
        artifact = Path(version.artifact)
        with (
            storage.local_tree(str(artifact.parent)) as model_dir,
            active_detector(station.project) as detect,
            contextlib.ExitStack() as stack,
        ):
            model = anomaly.load_model(model_dir / artifact.name)
            regions = None
            if params.get("regions"):  # each frame registered onto the regions' reference
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                regions = RunRegions(params["regions"], params["outside_regions"], stack, workdir)
                for note in regions.notes:
                    self.log(note)
            self.log(
                f"{version.architecture} v{version.number} loaded"
                + (f" with {len(regions.specs)} region(s)" if regions and regions.specs else "")
                + f"; inspecting {station.source}"
            )

            def with_regions(frame: sources.Frame, prediction):
                """The frame's prediction with the regions applied; a frame that cannot be
                registered fails (its verdict says so) rather than being judged unmasked."""
                if regions is None or isinstance(prediction, BaseException):
                    return prediction
                try:
                    return regions.apply_frame(frame.name, frame.image, prediction, config)
                except (RegistrationRefused, anomaly_errors.AnomalyError, JobError) as exc:
                    return exc

            def infer(frame: sources.Frame) -> station_loop.Inference:
                prediction = with_regions(
                    frame, anomaly.predict(model, frame.name, config, image=frame.image)
                )
                if isinstance(prediction, BaseException):
                    raise prediction
                return _inference(prediction)

            def infer_many(
                frames: list[sources.Frame],
            ) -> list[station_loop.Inference | BaseException]:
                # frames read ahead go through the network together (cheaper per frame), their
                # network input made on the reader's thread (``_prepare``)
                predictions = anomaly.predict_batch(
                    model,
                    [(frame.name, frame.image) for frame in frames],
                    config,
                    prepared=[frame.prepared for frame in frames],
                )
                predictions = [
                    with_regions(frame, p) for frame, p in zip(frames, predictions, strict=True)
                ]
                for frame in frames:
                    frame.prepared = None  # a frame kept for review holds its pixels only
                return [p if isinstance(p, BaseException) else _inference(p) for p in predictions]

            # rows and sampled frames are stored on a writer thread while inspection goes on
            writer = station_loop.BackgroundSink(
                ResultSink(station, version, run, detect, regions),
                on_exit=lambda: db.connection.close(),  # the writer thread's own connection
            )
            loop_config = station_loop.LoopConfig(
                unsure_margin=station.unsure_margin,
                ok_sample_rate=station.ok_sample_rate,
                batch_frames=self.batch_frames,
            )
            self._beat(station, Station.Status.RUNNING, f"inspecting with {version}")
            self.station, self.halt = station, threading.Event()
            self.model = model
            frames = self._frames(station, stop=lambda: self._should_stop(station))
            try:
                station_loop.run(
                    frames, infer, writer, loop_config, on_frame=self._shown, infer_many=infer_many
                )
            finally:
                writer.close()
        if self._changed(station):
            raise Restart()
        return not self.stopping

    def _frames(self, station: Station, stop):
        kind = sources.source_kind_of(station.source)
        self.reading_video = kind == "video"
        if kind == "video":
            name = Path(station.source).name
            start = station_resume_frame(station, name)
            if start:
                self.log(f"resuming {name} at frame {start}")
            # decoded on a thread ahead of the model; the heartbeat runs here, between frames
            # (``_shown``), and stops the reader through ``halt``
            return sources.Prefetched(
                sources.video_frames(station.source, start=start, stop=self.halt.is_set),
                prepare=self._prepare,
            )
        if kind == "folder":
            return sources.folder_frames(
                station.source,
                lambda names: station_recorded_keys(station, names),
                stop=stop,
                once=self.until_idle,
            )

        def on_event(event: str, message: str, gap_s: float) -> None:
            # the reader's thread: noted here, written by the heartbeat on this one
            self.source_events.append((event, message, gap_s))

        uri = int(station.source) if kind == "camera" else station.source
        return sources.live_frames(uri, stop=stop, on_event=on_event)

    def _prepare(self, frame: sources.Frame) -> None:
        """On the reader's thread: the frame shrunk to the model's input while the model runs
        (OpenCV's resize releases the GIL)."""
        from workers import anomaly

        try:
            frame.prepared = anomaly.network_input(self.model, frame.image)
        except Exception:  # noqa: BLE001 - made again by predict_batch, which records the error
            frame.prepared = None

    # --- heartbeat, live view, settings -------------------------------------------------------

    @staticmethod
    def _settings_of(station: Station, version: ModelVersion, regions: dict | None = None) -> tuple:
        """What the loop was set up with: when any of it changes, it is set up again.
        ``regions``: the project's regions as the loop took them (else read now)."""
        detector = active_model(station.project, ModelVersion.Kind.DETECTOR)
        return (
            version.pk,
            detector.pk if detector is not None else None,  # it classifies stored frames
            station.source,
            station.enabled,
            station.unsure_margin,
            station.ok_sample_rate,
            station.sample_quota,
            repr(sorted(with_inspection_defaults(station.project.inspection).items())),
            # regions drawn, changed or deleted
            repr(regions if regions is not None else regions_snapshot(station.project)),
        )

    def _changed(self, station: Station) -> bool:
        version = active_model(station.project)
        return version is None or self._settings_of(station, version) != self.settings

    def _shown(self, result: station_loop.FrameResult, frame: sources.Frame) -> None:
        self.latest, self.latest_image = result, frame.image
        if self.reading_video and self._should_stop(self.station):
            self.halt.set()

    def _should_stop(self, station: Station) -> bool:
        """Called by the sources between frames: the heartbeat, and whether to stop."""
        if self.stopping:
            return True
        if time.monotonic() - self.last_beat < HEARTBEAT_S:
            return False
        while self.source_events:
            event, message, gap_s = self.source_events.popleft()
            station_event_add(station=station, kind=event, message=message, gap_s=gap_s)
            self.source_down = message if event == "disconnected" else ""
        if self.source_down:  # a live source that does not answer: the page says so
            self._beat(station, Station.Status.WAITING, self.source_down + "; trying again")
        else:
            self._beat(station, Station.Status.RUNNING, "")
        station.project.refresh_from_db(fields=["inspection"])
        return self._changed(station)

    def _beat(self, station: Station, status: str, message: str) -> None:
        self.last_beat = time.monotonic()
        name, latest = None, None
        result = self.latest
        if result is not None and result.key != self.shown_key:
            latest = {
                "key": result.key,
                "verdict": result.verdict,
                "score": None if result.score is None else round(result.score, 4),
                "regions": result.regions[:20],
                "latency_ms": round(result.latency_ms, 1),
            }
            name = self._save_frame(station, result, latest)
            self.shown_key = result.key
        old = station.latest_frame
        station_report(
            station=station, status=status, message=message, latest_frame=name, latest=latest
        )
        if name and old and old != name:
            with contextlib.suppress(Exception):
                default_storage.delete(old)

    def _save_frame(self, station: Station, result, latest: dict) -> str | None:
        image = self.latest_image
        if image is None or image.size == 0:
            return None
        h, w = image.shape[:2]
        scale = min(1.0, LATEST_FRAME_SIDE / max(h, w))
        if scale < 1:
            image = cv2.resize(image, (round(w * scale), round(h * scale)), cv2.INTER_AREA)
        latest.update(width=w, height=h)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return None
        stamp = int(time.time() * 1000)
        return default_storage.save(
            f"stations/{station.pk}/latest-{stamp}.jpg", ContentFile(data.tobytes())
        )


def _inference(prediction) -> station_loop.Inference:
    """A frame's engine prediction as the loop's row material."""
    return station_loop.Inference(
        score=prediction.image_score,
        regions=[
            {"box": [round(v, 1) for v in r.box], "score": round(r.peak_score, 4)}
            for r in prediction.regions
        ],
        detail=prediction,
    )


class ResultSink:
    """Writes a batch: the sampled frames as project images (heatmap and suggestions, under the
    station's run, within its quota), then every row in one insert."""

    def __init__(self, station: Station, version: ModelVersion, run, detect, regions=None):
        self.station, self.version, self.run, self.detect = station, version, run, detect
        self.regions = regions  # RunRegions: a region's own model's suggestions are its version's
        self.room = station_sample_room(station)

    def flush(self, results: list[station_loop.FrameResult]) -> None:
        rows, new_images = [], []
        for result in results:
            image_id = None
            if result.sample and result.frame is not None and self.room > 0:
                image_id, created, categories = self._store(result)
                if created:
                    new_images.append(image_id)
                    self.room -= 1
                # the active detector's category of each region (NG frames: what went wrong)
                for region, category in zip(result.regions, categories, strict=False):
                    if category:
                        region["category"] = category
            rows.append(
                {
                    "key": result.key[:300],
                    "at": datetime.fromtimestamp(result.captured_at, tz=UTC),
                    "source_name": result.name[:300],
                    "frame_number": result.number,
                    "verdict": result.verdict,
                    "score": result.score,
                    "regions": result.regions,
                    "latency_ms": result.latency_ms,
                    "skipped": result.skipped,
                    "error": result.error[:300],
                    "model_version_id": self.version.pk,
                    "image_id": image_id,
                }
            )
        station_results_record(station=self.station, rows=rows)
        if new_images:
            with transaction.atomic():
                images_enqueue_derivatives(
                    user=None, project=self.station.project, image_ids=new_images
                )

    def _store(self, result: station_loop.FrameResult) -> tuple[int | None, bool, list[str]]:
        """The frame as a project image with its heatmap and suggestions: (id, newly stored,
        the detector's category per region). A frame stored before a crash comes back as a
        duplicate (same pixels): its id."""
        frame = result.frame
        stem = Path(result.name).stem or "frame"
        label = f"{self.station.name}-{stem}" + (
            f"-f{result.number:06d}" if result.number is not None else ""
        )
        with tempfile.TemporaryDirectory(prefix="loupe-station-") as tmp:
            path = Path(tmp) / f"{label}.png"
            bgr = (
                cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
                if frame.image.ndim == 3
                else frame.image
            )
            # lossless (tiny defects) and fast: zlib level 1, the "up" filter and run-length
            # matching write a 1080p bottle frame in 34 ms and 1.02 MB, against 83 ms and
            # 1.08 MB with level 1 alone (`benchmarks/station.py --storage`)
            if not cv2.imwrite(str(path), bgr, PNG_FAST):
                logger.error("station %s: frame %s could not be written", self.station, result.key)
                return None, False, []
            outcome = image_store_one(
                project=self.station.project,
                user=None,
                incoming=IncomingFile(path.name, path),
                source_group=f"station {self.station.name}",
            )
            if outcome.status == "duplicate":
                return outcome.duplicate_of, False, []
            if outcome.status != "stored":
                logger.error(
                    "station %s: frame %s not stored: %s", self.station, result.key, outcome.reason
                )
                return None, False, []

            image = Image.objects.get(pk=outcome.image_id)
            try:
                stored = store_prediction(
                    self.run,
                    self.version,
                    image,
                    result.inference.detail,
                    str(path),
                    self.detect,
                    self.regions.model_versions() if self.regions is not None else None,
                )
            except Exception:  # noqa: BLE001 - the image is kept; its rows go on
                logger.exception("station %s: suggestions of %s not stored", self.station, image.pk)
                stored = {"error": "the heatmap or suggestions could not be stored"}
            station_run_add_image(run=self.run, image=image, outcome=stored)
            return image.pk, True, stored.get("categories", [])
