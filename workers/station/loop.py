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
from collections.abc import Callable, Iterable, Iterator
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
    batch_frames: int = 4  # most frames handed to ``infer_many`` at once (only ones waiting)


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
    infer_many: Callable[[list[Frame]], list[Inference | BaseException]] | None = None,
) -> int:
    """Inspect every frame ``frames`` yields; return how many. ``on_frame`` sees each result and
    its frame as they are made (the live view); ``sink.flush`` gets them in batches and once more at the end —
    also when the frames stop with an exception, so what was inspected is not lost.

    ``infer_many`` (optional) infers several frames in one call (a network costs less per frame
    in batches on a CPU) and returns an ``Inference`` or the exception of each. The loop hands
    it only frames the source already has waiting (``frames.waiting()``, as
    :class:`~workers.station.sources.Prefetched` reports), up to ``config.batch_frames``: it
    never waits for a batch to fill, so a live camera's newest frame goes through at once and a
    video read ahead goes through in batches. A frame's latency is its batch's time.
    """
    config = config or LoopConfig()
    batch: list[FrameResult] = []
    last_flush = time.monotonic()
    count = 0
    size = max(1, config.batch_frames) if infer_many is not None else 1
    try:
        for group in _groups(frames, size):
            t0 = time.perf_counter()
            results = _inspect(group, infer, infer_many, config)
            latency_ms = (time.perf_counter() - t0) * 1000
            for result, frame in zip(results, group, strict=True):
                result.latency_ms = latency_ms
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


def _groups(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """The frames in groups of up to ``size``: the first one waited for, then those the source
    has ready. An error of the source comes out after the group read before it."""
    waiting = getattr(frames, "waiting", None)
    it = iter(frames)
    for first in it:
        group, error = [first], None
        while size > 1 and waiting is not None and len(group) < size and waiting() > 0:
            try:
                group.append(next(it))
            except StopIteration:
                break
            except BaseException as exc:  # noqa: BLE001 - raised once this group is inspected
                error = exc
                break
        yield group
        if error is not None:
            raise error


def _inspect(
    group: list[Frame],
    infer: Callable[[Frame], Inference],
    infer_many: Callable[[list[Frame]], list[Inference | BaseException]] | None,
    config: LoopConfig,
) -> list[FrameResult]:
    readable = [frame for frame in group if frame.image.size]
    outs: dict[int, Inference | BaseException] = {}
    if infer_many is not None and len(readable) > 1:
        try:
            many = infer_many(readable)
        except Exception as exc:  # noqa: BLE001 - every frame of the batch is recorded failed
            many = [exc] * len(readable)
        outs = {id(frame): out for frame, out in zip(readable, many, strict=True)}
    else:
        for frame in readable:
            try:
                outs[id(frame)] = infer(frame)
            except Exception as exc:  # noqa: BLE001 - one bad frame is recorded, the line goes on
                outs[id(frame)] = exc
    return [_result(frame, outs.get(id(frame)), config) for frame in group]


def _result(frame: Frame, out: Inference | BaseException | None, config: LoopConfig) -> FrameResult:
    common = dict(
        key=frame.key,
        name=frame.name,
        number=frame.number,
        captured_at=frame.captured_at,
        skipped=frame.skipped,
        latency_ms=0.0,
    )
    if out is None:  # nothing to infer: the source could not decode the frame
        return FrameResult(**common, verdict=FAILED, score=None, regions=[], error="unreadable")
    if isinstance(out, BaseException):
        error = f"{type(out).__name__}: {out}"[:300]
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
