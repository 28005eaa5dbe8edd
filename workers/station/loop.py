"""The station loop: a verdict for every frame, results handed on in batches, frames sampled.

Plain Python (no Django): ``infer`` and the ``Sink`` are given by the caller (the app's glue in
``workers/tasks/stations.py``, or a benchmark). Rows are handed on in batches of ``flush_rows``
or every ``flush_seconds``, whichever comes first: one database commit per frame caps the rate
(the seeds' loop), one per batch does not. A crash loses at most the batch in hand; the caller's
rows are keyed by ``FrameResult.key`` so a frame redone after a restart is written once.
"""

from __future__ import annotations

import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .sources import Frame

OK, NG, UNSURE, FAILED = "ok", "ng", "unsure", "failed"


@dataclass
class LoopConfig:
    """How verdicts are given and what is sampled.

    Scores are the engine's calibrated ones (0.5 = the model's threshold). A frame is NG at
    ``0.5 + unsure_margin`` or above, OK below ``0.5 - unsure_margin``, unsure between.
    NG and unsure frames are always sampled; OK frames at ``ok_sample_rate`` (0-1), chosen by a
    hash of the frame key, so the same frames are chosen again when a batch is redone.
    """

    unsure_margin: float = 0.1
    ok_sample_rate: float = 0.01
    flush_rows: int = 50
    flush_seconds: float = 1.0


@dataclass
class Inference:
    """What ``infer`` returns for a frame: calibrated score, regions as JSON-ready dicts
    (``box`` [x0, y0, x1, y1] in frame pixels, ``score``), and the engine's own result (kept
    for sampled frames: the sink stores its heatmap and suggestions)."""

    score: float
    regions: list[dict]
    detail: Any = None


@dataclass
class FrameResult:
    """One frame's row: what the results table stores."""

    key: str
    name: str
    number: int | None
    captured_at: float
    verdict: str
    score: float | None
    regions: list[dict]
    latency_ms: float
    skipped: int = 0
    error: str = ""
    sample: bool = False
    frame: Frame | None = field(default=None, repr=False)  # kept only when sampled
    inference: Inference | None = field(default=None, repr=False)


class Sink(Protocol):
    def flush(self, results: list[FrameResult]) -> None: ...


def verdict_of(score: float, margin: float) -> str:
    if score >= 0.5 + margin:
        return NG
    if score < 0.5 - margin:
        return OK
    return UNSURE


def sampled(key: str, verdict: str, rate: float) -> bool:
    """NG and unsure always; an OK frame when the hash of its key falls under ``rate``."""
    if verdict in (NG, UNSURE):
        return True
    if verdict != OK or rate <= 0:
        return False
    return zlib.crc32(key.encode()) % 100_000 < rate * 100_000


def run(
    frames: Iterable[Frame],
    infer: Callable[[Frame], Inference],
    sink: Sink,
    config: LoopConfig | None = None,
    on_frame: Callable[[FrameResult, Frame], None] | None = None,
) -> int:
    """Inspect every frame ``frames`` yields; return how many. ``on_frame`` sees each result and
    its frame as they are made (the live view); ``sink.flush`` gets them in batches and once more at the end —
    also when the frames stop with an exception, so what was inspected is not lost."""
    config = config or LoopConfig()
    batch: list[FrameResult] = []
    last_flush = time.monotonic()
    count = 0
    try:
        for frame in frames:
            t0 = time.perf_counter()
            result = _inspect(frame, infer, config)
            result.latency_ms = (time.perf_counter() - t0) * 1000
            count += 1
            if on_frame is not None:
                on_frame(result, frame)
            batch.append(result)
            now = time.monotonic()
            if len(batch) >= config.flush_rows or now - last_flush >= config.flush_seconds:
                sink.flush(batch)
                batch, last_flush = [], now
    finally:
        if batch:
            sink.flush(batch)
    return count


def _inspect(frame: Frame, infer: Callable[[Frame], Inference], config: LoopConfig) -> FrameResult:
    common = dict(
        key=frame.key,
        name=frame.name,
        number=frame.number,
        captured_at=frame.captured_at,
        skipped=frame.skipped,
        latency_ms=0.0,
    )
    if frame.image.size == 0:
        return FrameResult(**common, verdict=FAILED, score=None, regions=[], error="unreadable")
    try:
        out = infer(frame)
    except Exception as exc:  # noqa: BLE001 - one bad frame is recorded, the line goes on
        error = f"{type(exc).__name__}: {exc}"[:300]
        return FrameResult(**common, verdict=FAILED, score=None, regions=[], error=error)
    verdict = verdict_of(out.score, config.unsure_margin)
    sample = sampled(frame.key, verdict, config.ok_sample_rate)
    return FrameResult(
        **common,
        verdict=verdict,
        score=out.score,
        regions=out.regions,
        sample=sample,
        frame=frame if sample else None,
        inference=out if sample else None,
    )


class BackgroundSink:
    """Hands batches to ``sink`` on a writer thread, so the next frames are inspected while a
    batch is stored (sampled frames are images to encode and store: far slower than a row).

    At most ``depth`` batches wait; more make ``flush`` wait (memory stays bounded when storage
    is slower than the line). An error of the writer comes out of the next ``flush`` or of
    ``close``. ``on_exit`` runs on the writer thread as it ends (the app closes its database
    connection there).
    """

    def __init__(self, sink: Sink, depth: int = 8, on_exit: Callable[[], None] | None = None):
        self.sink = sink
        self.on_exit = on_exit
        self.batches: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="station-writer", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        try:
            while True:
                batch = self.batches.get()
                if batch is None:
                    return
                if self.error is None:
                    try:
                        self.sink.flush(batch)
                    except BaseException as exc:  # noqa: BLE001 - raised on the caller's side
                        self.error = exc
        finally:
            if self.on_exit is not None:
                self.on_exit()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def flush(self, results: list[FrameResult]) -> None:
        self._raise()
        self.batches.put(list(results))

    def close(self) -> None:
        """Store what waits, stop the thread; raises the writer's error if there was one."""
        if self.thread.is_alive():
            self.batches.put(None)
            self.thread.join()
        self._raise()
