"""Where a station's frames come from: a video file, a live camera or stream, a watched folder.

Each source yields :class:`Frame` s. The three differ in what "keeping up" means:

- a **video file** is a recording: every frame is inspected, in order, from ``start`` (the frame
  after the last one recorded, so a restarted station neither repeats nor skips one);
- a **live source** (camera index, RTSP/HTTP URL) runs in real time: a reader thread always holds
  the newest frame, the station takes that one and counts the frames it never saw
  (``Frame.skipped``) — a slow model never builds a backlog. When the stream drops, the reader
  reconnects with back-off and the gap is reported through ``on_event``;
- a **watched folder** yields each new image file once, oldest first (name order among equal
  times), after its size has stopped changing (a camera still writing it is not read half-done);
  ``done`` holds the names already recorded, so a restart does not repeat them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

READ_TRIES = 3
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}

EventCallback = Callable[[str, str, float], None]  # kind, message, gap seconds


def no_event(kind: str, message: str, gap_s: float) -> None:  # noqa: ARG001
    """The default event callback: events are dropped."""


@dataclass
class Frame:
    """One frame: ``key`` is unique within the station (idempotent result rows), ``image`` is
    RGB ``uint8`` (or grey ``(H, W)`` from a grey file), ``number`` the frame index in a video."""

    key: str
    name: str
    image: np.ndarray
    number: int | None = None
    captured_at: float = 0.0
    skipped: int = 0  # frames of a live source that went by unseen before this one
    prepared: Any = None  # what the caller made of it on the reader thread (the model's input)


class SourceError(Exception):
    """A source that cannot be opened at all (a missing file, a folder that is not one)."""


def _rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return frame


def video_frames(
    path: str | Path, start: int = 0, stop: Callable[[], bool] = lambda: False
) -> Iterator[Frame]:
    """Every frame of a video file from frame ``start`` on, in order."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path}: OpenCV cannot open this video (codec or container)")
    try:
        number = 0
        if start > 0:
            # seeking is exact for intra-only codecs (MJPG) and on key frames; reading forward
            # is exact everywhere: seek only near, then read up to ``start``
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            number = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
            if number != start:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                number = 0
            while number < start and cap.grab():
                number += 1
        while not stop():
            ok, frame = cap.read()
            if not ok:
                return
            yield Frame(
                key=f"{path.name}#{number}",
                name=path.name,
                image=_rgb(frame),
                number=number,
                captured_at=time.time(),
            )
            number += 1
    finally:
        cap.release()


class LiveReader:
    """Reads a camera or stream on its own thread and keeps only the newest frame.

    ``open_capture`` makes the ``cv2.VideoCapture`` (a parameter so a test can hand in a source
    that drops); reconnects wait ``backoff`` seconds, doubling up to ``max_backoff``.
    """

    def __init__(
        self,
        uri: str | int,
        on_event: EventCallback = no_event,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        open_capture: Callable[[str | int], cv2.VideoCapture] = cv2.VideoCapture,
    ):
        self.uri = uri
        self.on_event = on_event
        self.backoff, self.max_backoff = backoff, max_backoff
        self.open_capture = open_capture
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._number = 0  # frames read since the reader started
        self._taken = 0  # number of the last frame handed out
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"station-reader {uri}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self.backoff
        lost_at: float | None = None
        first = True
        while not self._closed:
            cap = self.open_capture(self.uri)
            if not cap.isOpened():
                cap.release()
                if lost_at is None:
                    lost_at = time.time()
                    self.on_event("disconnected", f"cannot open {self.uri}", 0.0)
                time.sleep(wait)
                wait = min(wait * 2, self.max_backoff)
                continue
            if lost_at is not None:
                gap = time.time() - lost_at
                self.on_event("reconnected", f"{self.uri} answers again", gap)
            elif first:
                self.on_event("connected", f"{self.uri} opened", 0.0)
            first, lost_at, wait = False, None, self.backoff
            while not self._closed:
                ok, frame = cap.read()
                if not ok:
                    lost_at = time.time()
                    self.on_event("disconnected", f"{self.uri} stopped sending frames", 0.0)
                    break
                with self._cond:
                    self._frame = frame
                    self._number += 1
                    self._cond.notify_all()
            cap.release()

    def newest(self, timeout: float = 1.0) -> tuple[np.ndarray, int, int] | None:
        """The newest frame not handed out yet, its number and how many went by unseen; None
        when no new frame came within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._number > self._taken, timeout):
                return None
            skipped = self._number - self._taken - 1
            self._taken = self._number
            return self._frame, self._number, skipped

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=5)


def live_frames(
    uri: str | int,
    stop: Callable[[], bool] = lambda: False,
    on_event: EventCallback = no_event,
    **reader_options,
) -> Iterator[Frame]:
    """Newest frames of a camera (an int index) or a stream URL, until ``stop()``."""
    reader = LiveReader(uri, on_event=on_event, **reader_options)
    session = time.strftime("%Y%m%dT%H%M%S")
    try:
        while not stop():
            got = reader.newest(timeout=0.5)
            if got is None:
                continue
            frame, number, skipped = got
            yield Frame(
                key=f"{session}#{number}",
                name=str(uri),
                image=_rgb(frame),
                number=number,
                captured_at=time.time(),
                skipped=skipped,
            )
    finally:
        reader.close()


def folder_frames(
    folder: str | Path,
    recorded: Callable[[list[str]], set[str]],
    stop: Callable[[], bool] = lambda: False,
    poll: float = 0.5,
    settle: float = 0.3,
    once: bool = False,
    read: Callable[[Path], np.ndarray] | None = None,
) -> Iterator[Frame]:
    """New image files in ``folder`` (and below), each once, oldest first.

    A file is read when its size and time were the same at two looks ``settle`` seconds apart;
    one that cannot be decoded is tried ``READ_TRIES`` times (a writer may have paused), then
    yielded with an empty ``image``: the station records it as failed and does not retry it.
    ``recorded(names)`` says which of ``names`` (relative to the folder) were inspected before
    (the station's result rows); it is asked only about files in the folder that this
    generator has not met yet, so memory and lookups follow what the folder holds, not the
    station's history (years of rows are never loaded). ``once``: stop when nothing new is left
    (tests, one-off runs).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such folder")
    read = read or _read_file
    done: set[str] = set()  # files in the folder that were inspected (before or here)
    met: set[str] = set()  # files in the folder already looked up in ``recorded``
    seen: dict[str, tuple[int, float]] = {}
    failures: dict[str, int] = {}
    while not stop():
        present: dict[str, tuple[Path, os.stat_result]] = {}
        for path in folder.rglob("*"):
            if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
                continue
            try:
                present[path.relative_to(folder).as_posix()] = (path, path.stat())
            except OSError:
                continue  # moved away meanwhile
        # a file moved away is forgotten (it comes back as new only if it comes back)
        done &= present.keys()
        met &= present.keys()
        new = [name for name in present if name not in met]
        if new:
            done |= recorded(new)
            met.update(new)
        fresh = sorted(
            (st.st_mtime, name, path, (st.st_size, st.st_mtime))
            for name, (path, st) in present.items()
            if name not in done
        )
        pending = False
        for _, name, path, sig in fresh:
            if stop():
                return
            if seen.get(name) != sig:  # new or still changing: look again after ``settle``
                seen[name] = sig
                pending = True
                continue
            seen.pop(name, None)
            try:
                image = read(path)
            except Exception:  # noqa: BLE001 - a writer that paused, or a broken file
                failures[name] = failures.get(name, 0) + 1
                if failures[name] < READ_TRIES:
                    pending = True
                    continue
                image = np.zeros((0, 0), np.uint8)  # recorded as a failed frame, not retried
            failures.pop(name, None)
            done.add(name)
            yield Frame(key=name, name=name, image=image, captured_at=time.time())
        if pending:
            time.sleep(settle)
            continue
        if once:
            return
        time.sleep(poll)


def _read_file(path: Path) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path.name}: not an image OpenCV can read")
    if image.dtype != np.uint8:  # 16-bit camera files: the models take 8-bit frames here
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    return _rgb(image)


def source_kind_of(source: str) -> str:
    """``camera`` (an integer), ``stream`` (a URL), ``folder`` or ``video`` (a path)."""
    if source.strip().isdigit():
        return "camera"
    if "://" in source:
        return "stream"
    return "folder" if os.path.isdir(source) else "video"


class Prefetched(Iterator[Frame]):
    """``frames`` read ahead on a thread (``depth`` frames at most): a video's next frames are
    decoded while the model looks at these (OpenCV's decoder releases the GIL). ``prepare``
    (optional) runs on that thread too, on each frame (the station shrinks it to the model's
    input there, off the model's thread). Errors
    of the source, and of ``prepare``, come out here, in order; :meth:`waiting` says how many
    frames are ready (the loop batches them); closing this iterator (or dropping it) stops the
    thread."""

    def __init__(
        self,
        frames: Iterator[Frame],
        depth: int = 4,
        prepare: Callable[[Frame], None] | None = None,
    ) -> None:
        self.prepare = prepare
        self.items: queue.Queue = queue.Queue(maxsize=depth)
        self.closed = threading.Event()
        self.thread = threading.Thread(
            target=self._pump, args=(frames,), name="station-prefetch", daemon=True
        )
        self.thread.start()
        self.consumer = self._consume()

    _END = object()

    def _put(self, item) -> bool:
        while not self.closed.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, frames: Iterator[Frame]) -> None:
        try:
            for frame in frames:
                if self.prepare is not None and frame.image.size:
                    self.prepare(frame)
                if not self._put(frame):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)
        finally:
            self._put(self._END)

    def _consume(self) -> Iterator[Frame]:
        try:
            while True:
                item = self.items.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.closed.set()
            self.thread.join(timeout=5)

    def __next__(self) -> Frame:
        return next(self.consumer)

    def waiting(self) -> int:
        """Frames (or the end, or an error) decoded and waiting: taking them will not block."""
        return self.items.qsize()

    def close(self) -> None:
        self.consumer.close()

    def __del__(self) -> None:
        if getattr(self, "consumer", None) is not None:
            self.close()
