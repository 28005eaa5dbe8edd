"""The station as operators run it: ``manage.py loupe_station NAME`` in its own process, on this
test database. Killed mid-video (SIGKILL: no chance to flush) and started again, it resumes with
no frame missing and none written twice; a watched folder takes files as they arrive; a camera
stream that drops is waited for and followed again when it is back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import pytest

from inspection.models import Image, Station, StationResult
from inspection.services.stations import station_create
from tests.conftest import _MEDIA, ROOT, _database_url
from tests.workers.tasks.test_stations import NG_FRAMES, bottle, line_video, trained  # noqa: F401


def start_station(name: str, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        DATABASE_URL=_database_url(),
        MEDIA_ROOT=_MEDIA,
        DJANGO_SETTINGS_MODULE="inspection.settings",
        OMP_NUM_THREADS="1",
    )
    log = tempfile.NamedTemporaryFile(prefix="loupe-station-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "loupe_station", name, *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = log.name
    return proc


def wait_until(condition, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None and not condition():
            pytest.fail(
                f"the station exited ({proc.returncode}) before {what}:\n"
                + Path(proc.log_path).read_text()[-3000:]
            )
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no {what} in {timeout} s:\n" + Path(proc.log_path).read_text()[-3000:])


@pytest.mark.django_db(transaction=True)
def test_a_killed_station_resumes_without_gaps_or_duplicates(trained, tmp_path):  # noqa: F811
    length = 90
    video = line_video(tmp_path / "line-7.avi", trained, length=length)
    station = station_create(
        user=trained["admin"], project=trained["project"], name="line-7", source=str(video)
    )
    rows = StationResult.objects.filter(station=station)
    proc = start_station("line-7")
    wait_until(lambda: rows.count() >= 10, 120, proc, "first results")
    proc.send_signal(signal.SIGKILL)  # a power cut: the batch in hand is lost
    proc.wait(timeout=10)
    killed_at = rows.count()
    assert 10 <= killed_at < length, "the kill came too late to test a resume"
    Station.objects.filter(pk=station.pk).update(status="running")  # as a kill leaves it

    again = start_station("line-7", "--until-idle")
    assert again.wait(timeout=300) == 0, Path(again.log_path).read_text()[-3000:]
    log = Path(again.log_path).read_text()
    assert "resuming line-7.avi at frame" in log
    numbers = sorted(rows.values_list("frame_number", flat=True))
    assert numbers == list(range(length))  # every frame once: no gap, no duplicate
    assert set(rows.filter(verdict="ng").values_list("frame_number", flat=True)) == NG_FRAMES
    sampled = rows.exclude(image=None)
    # a frame sampled before the kill and redone after it is the same image, stored once (the
    # video repeats its normal parts: those frames share one image too)
    images = Image.objects.filter(source_group="station line-7")
    assert images.count() == len(set(sampled.values_list("image", flat=True)))
    assert images.values("sha256").distinct().count() == images.count()
    station.refresh_from_db()
    assert station.status == "stopped"
    assert list(station.events.values_list("kind", flat=True)[:2]) == ["stopped", "started"]


@pytest.mark.django_db(transaction=True)
def test_a_watched_folder_is_inspected_as_files_arrive(trained, tmp_path):  # noqa: F811
    folder = tmp_path / "drop"
    folder.mkdir()
    root = trained["root"]
    station = station_create(
        user=trained["admin"],
        project=trained["project"],
        name="press-2",
        source=str(folder),
        ok_sample_rate=0.0,
    )
    proc = start_station("press-2")
    try:
        rows = StationResult.objects.filter(station=station)
        wait_until(
            lambda: Station.objects.get(pk=station.pk).status == "running", 120, proc, "a start"
        )
        good = trained["unseen_normals"][0]
        broken = sorted((root / "test" / "broken_large").glob("*.png"))[0]
        cv2.imwrite(str(folder / "part-001.png"), bottle(good))
        (folder / "part-002.png").write_bytes(b"\x89PNG\r\n\x1a\n not finished, never will be")
        cv2.imwrite(str(folder / "part-003.png"), bottle(broken))
        wait_until(lambda: rows.count() == 3, 60, proc, "three results")
        by = dict(rows.values_list("key", "verdict"))
        assert by == {"part-001.png": "ok", "part-002.png": "failed", "part-003.png": "ng"}
        assert rows.get(key="part-003.png").image.original_name == "press-2-part-003.png"
    finally:
        proc.send_signal(signal.SIGTERM)  # stopped as a supervisor stops it: cleanly
        assert proc.wait(timeout=30) == 0, Path(proc.log_path).read_text()[-3000:]
    station.refresh_from_db()
    assert station.status == "stopped"
    # started again: the files already recorded are not inspected twice
    proc = start_station("press-2", "--until-idle")
    assert proc.wait(timeout=120) == 0, Path(proc.log_path).read_text()[-3000:]
    assert rows.count() == 3


class MjpegCamera:
    """An IP camera on 127.0.0.1: multipart JPEG over HTTP (what many cameras serve), bottle
    frames at 25 per second. ``stop()`` pulls its plug; ``start()`` plugs it in again on the
    same address."""

    def __init__(self, frames: list) -> None:
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.port = 0
        self.server = None

    def start(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        jpegs = self.jpegs

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not self.server.unplugged:
                        jpg = jpegs[i % len(jpegs)]
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpg)).encode()
                            + b"\r\n\r\n"
                            + jpg
                            + b"\r\n"
                        )
                        i += 1
                        time.sleep(0.04)
                except OSError:  # the station went away
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.unplugged = False
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def stop(self) -> None:
        self.server.unplugged = True
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.django_db(transaction=True)
def test_a_camera_stream_that_drops_is_waited_for_and_followed_again(trained, tmp_path):  # noqa: F811
    camera = MjpegCamera([bottle(p) for p in trained["unseen_normals"][:4]])
    camera.start()
    station = station_create(
        user=trained["admin"], project=trained["project"], name="cam-1", source=camera.url
    )
    rows = StationResult.objects.filter(station=station)
    events = station.events.all()
    proc = start_station("cam-1")
    try:
        wait_until(lambda: rows.count() >= 10, 120, proc, "frames from the camera")
        camera.stop()  # the cable is pulled
        wait_until(
            lambda: Station.objects.get(pk=station.pk).status == "waiting", 30, proc, "waiting"
        )
        assert "trying again" in Station.objects.get(pk=station.pk).message
        before = rows.count()
        time.sleep(1.5)
        camera.start()  # and plugged in again
        wait_until(lambda: events.filter(kind="reconnected").exists(), 60, proc, "a reconnect")
        wait_until(lambda: rows.count() >= before + 10, 60, proc, "frames again")
        assert Station.objects.get(pk=station.pk).status == "running"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, Path(proc.log_path).read_text()[-3000:]
        if camera.server is not None:
            with contextlib.suppress(OSError):
                camera.stop()
    kinds = list(events.order_by("at", "id").values_list("kind", flat=True))
    assert kinds[:3] == ["started", "connected", "disconnected"], kinds
    assert events.get(kind="reconnected").gap_s >= 1.5
    assert rows.filter(verdict="ng").count() == 0  # normal bottles only
    assert len(set(rows.values_list("key", flat=True))) == rows.count()
