"""Frame sources and the verdict loop of a line station, without the app: real videos written
with OpenCV, a real folder, a stream that drops and comes back."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from workers.station import loop, sources


def numbered_frame(i: int, size=(48, 64)) -> np.ndarray:
    """A frame whose mean grey level says its number (lossless codecs keep it exactly)."""
    return np.full((*size, 3), i, np.uint8)


def write_video(path: Path, count: int, fourcc: str = "png ", fps: float = 25) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (64, 48))
    assert writer.isOpened()
    for i in range(count):
        writer.write(numbered_frame(i))
    writer.release()
    return path


def test_a_video_is_read_whole_and_resumes_after_the_last_frame(tmp_path):
    video = write_video(tmp_path / "line.avi", 12)
    frames = list(sources.video_frames(video))
    assert [f.number for f in frames] == list(range(12))
    assert [int(f.image.mean()) for f in frames] == list(range(12))
    assert frames[3].key == "line.avi#3" and frames[3].image.shape == (48, 64, 3)
    resumed = list(sources.video_frames(video, start=7))
    assert [f.number for f in resumed] == [7, 8, 9, 10, 11]
    assert [int(f.image.mean()) for f in resumed] == [7, 8, 9, 10, 11]
    with pytest.raises(sources.SourceError, match="no such video"):
        list(sources.video_frames(tmp_path / "gone.avi"))
    (tmp_path / "junk.avi").write_bytes(b"not a video at all")
    with pytest.raises(sources.SourceError, match="cannot open"):
        list(sources.video_frames(tmp_path / "junk.avi"))


def test_a_watched_folder_yields_each_finished_file_once_oldest_first(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["b.png", "a.png", "sub/c.png"]):
        cv2.imwrite(str(folder / name), numbered_frame(10 * i))
        t = time.time() - 100 + i
        os.utime(folder / name, (t, t))
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows: set[str] = set()  # the station's result rows, as the database keeps them
    asked: list[list[str]] = []

    def recorded(names):
        asked.append(sorted(names))
        return rows & set(names)

    got = list(sources.folder_frames(folder, recorded, once=True, settle=0.05))
    assert [f.key for f in got][:3] == ["b.png", "a.png", "sub/c.png"]  # by time, not name
    assert [int(f.image.mean()) for f in got[:3]] == [0, 10, 20]
    broken = [f for f in got if f.key == "broken.png"]
    assert broken and broken[0].image.size == 0  # recorded as failed, never retried
    assert {f.key for f in got} == {"a.png", "b.png", "sub/c.png", "broken.png"}
    assert asked == [["a.png", "b.png", "broken.png", "sub/c.png"]]  # each file looked up once
    rows |= {f.key for f in got}

    # a restart: only new files; the lookups name files in the folder, not the history
    rows |= {f"old/{i}.png" for i in range(10_000)}  # rows of files long moved away
    cv2.imwrite(str(folder / "d.png"), numbered_frame(30))
    asked.clear()
    again = list(sources.folder_frames(folder, recorded, once=True, settle=0.05))
    assert [f.key for f in again] == ["d.png"]
    assert asked == [["a.png", "b.png", "broken.png", "d.png", "sub/c.png"]]


def test_a_file_still_being_written_waits_until_its_size_settles(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    ok, data = cv2.imencode(".png", numbered_frame(5, (200, 200)))
    partial = folder / "slow.png"
    blob = data.tobytes()
    partial.write_bytes(blob[:100])  # the camera is still writing it, a chunk every 0.1 s

    def finish() -> None:
        with partial.open("ab") as fh:
            for start in range(100, len(blob), max(len(blob) // 6, 1)):
                time.sleep(0.1)
                fh.write(blob[start : start + max(len(blob) // 6, 1)])
                fh.flush()

    threading.Thread(target=finish).start()
    got = []
    for frame in sources.folder_frames(folder, lambda names: set(), poll=0.05, settle=0.3):
        got.append(frame)
        break
    assert got[0].image.shape == (200, 200, 3)  # read whole, not the first 100 bytes


def test_a_live_source_hands_out_the_newest_frame_and_counts_the_rest(tmp_path):
    """A reader faster than the inspection: no backlog, every frame either inspected or
    counted as skipped."""
    video = write_video(tmp_path / "cam.avi", 200, fourcc="MJPG")
    stop_after = time.time() + 30
    taken = []
    for frame in sources.live_frames(str(video), stop=lambda: time.time() > stop_after):
        taken.append(frame)
        time.sleep(0.02)  # a slow model
        if len(taken) > 3 and time.time() > stop_after - 29.5:
            break
    assert len(taken) > 3
    numbers = [f.number for f in taken]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    # what was handed out plus what was skipped is every frame read before the last one taken
    assert sum(f.skipped for f in taken) + len(taken) == taken[-1].number
    assert sum(f.skipped for f in taken) > 0


def test_a_dropped_stream_reconnects_and_the_gap_is_recorded(tmp_path):
    """The stream ends (the camera went away), cannot be opened for a while, then answers:
    the reader waits with back-off, reconnects by itself and says how long it was gone."""
    video = write_video(tmp_path / "cam.avi", 20)
    away = tmp_path / "away.avi"
    events: list[tuple[str, float]] = []
    lock = threading.Lock()

    def on_event(kind: str, message: str, gap: float) -> None:
        with lock:
            events.append((kind, gap))
        if kind == "disconnected" and away.exists() is False and video.exists():
            shutil.move(video, away)  # gone: opening fails until it is back

    reader = sources.LiveReader(str(video), on_event=on_event, backoff=0.05, max_backoff=0.2)
    try:
        deadline = time.time() + 10
        while time.time() < deadline and not any(k == "disconnected" for k, _ in events):
            reader.newest(timeout=0.1)
        time.sleep(0.5)  # a few failed attempts, with back-off
        shutil.move(away, video)
        while time.time() < deadline and not any(k == "reconnected" for k, _ in events):
            time.sleep(0.05)
    finally:
        reader.close()
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["connected", "disconnected"]
    assert "reconnected" in kinds
    gap = next(g for k, g in events if k == "reconnected")
    assert gap >= 0.4


class ListSink:
    def __init__(self) -> None:
        self.batches: list[list[loop.FrameResult]] = []

    def flush(self, results):
        self.batches.append(list(results))


def test_the_loop_gives_verdicts_samples_and_flushes_in_batches(tmp_path):
    video = write_video(tmp_path / "line.avi", 30)
    scores = {4: 0.9, 9: 0.55, 17: 0.45, 20: 0.62}  # NG, unsure, unsure, NG; the rest OK

    def infer(frame):
        if frame.number == 25:
            raise RuntimeError("runtime choked")
        return loop.Inference(score=scores.get(frame.number, 0.1), regions=[])

    sink = ListSink()
    config = loop.LoopConfig(unsure_margin=0.1, ok_sample_rate=0.0, flush_rows=8)
    count = loop.run(sources.video_frames(video), infer, sink, config)
    assert count == 30
    assert [len(b) for b in sink.batches] == [8, 8, 8, 6]
    rows = [r for b in sink.batches for r in b]
    by = {r.number: r for r in rows}
    assert {n for n, r in by.items() if r.verdict == "ng"} == {4, 20}
    assert {n for n, r in by.items() if r.verdict == "unsure"} == {9, 17}
    assert by[25].verdict == "failed" and "runtime choked" in by[25].error
    assert {n for n, r in by.items() if r.sample} == {4, 9, 17, 20}
    assert by[4].frame is not None and by[0].frame is None  # images kept only when sampled


def test_ok_frames_are_sampled_at_the_rate_and_the_same_ones_again():
    keys = [f"line.avi#{i}" for i in range(20_000)]
    chosen = [k for k in keys if loop.sampled(k, loop.OK, 0.05)]
    assert 0.04 < len(chosen) / len(keys) < 0.06
    assert chosen == [k for k in keys if loop.sampled(k, loop.OK, 0.05)]
    assert not any(loop.sampled(k, loop.OK, 0.0) for k in keys[:100])
    assert loop.sampled("x", loop.NG, 0.0) and loop.sampled("x", loop.UNSURE, 0.0)


def test_rows_in_hand_are_flushed_when_the_source_fails(tmp_path):
    def frames():
        for i in range(3):
            yield sources.Frame(key=str(i), name="x", image=numbered_frame(i), number=i)
        raise OSError("camera unplugged")

    sink = ListSink()
    with pytest.raises(OSError):
        loop.run(frames(), lambda f: loop.Inference(0.1, []), sink, loop.LoopConfig(flush_rows=50))
    assert [r.key for b in sink.batches for r in b] == ["0", "1", "2"]


def test_frames_read_ahead_are_inferred_in_batches_of_what_is_waiting(tmp_path):
    """The loop hands ``infer_many`` the frames the reader has ready (never more than
    ``batch_frames``, never waiting for a batch to fill): every frame once, in order; a batch
    the runtime chokes on records its frames failed and the line goes on; a source's error
    comes out after the frames read before it were inspected."""
    video = write_video(tmp_path / "line.avi", 40)
    groups = []

    def infer_many(frames):
        groups.append([f.number for f in frames])
        time.sleep(0.02)  # a model's time: the reader gets ahead meanwhile
        if 1 in groups[-1]:
            raise RuntimeError("runtime choked")
        return [
            ValueError("odd frame") if f.number == 33 else loop.Inference(0.9 * (f.number == 7), [])
            for f in frames
        ]

    def infer(frame):
        groups.append([frame.number])
        time.sleep(0.02)
        if frame.number == 33:
            raise ValueError("odd frame")
        return loop.Inference(0.9 * (frame.number == 7), [])

    frames = sources.Prefetched(sources.video_frames(video), depth=4)
    while frames.waiting() < 4:  # let the reader get ahead, as it does while a model runs
        time.sleep(0.01)
    sink = ListSink()
    config = loop.LoopConfig(ok_sample_rate=0.0, batch_frames=3)
    assert loop.run(frames, infer, sink, config, infer_many=infer_many) == 40
    rows = [r for b in sink.batches for r in b]
    assert [r.number for r in rows] == list(range(40))
    assert [n for g in groups for n in g] == list(range(40))
    assert max(len(g) for g in groups) == 3
    by = {r.number: r for r in rows}
    assert by[7].verdict == "ng" and by[7].sample
    assert groups[0] == [0, 1, 2]  # four were waiting: the first batch is full
    assert all("runtime choked" in by[n].error for n in (0, 1, 2))
    assert by[33].verdict == "failed" and "odd frame" in by[33].error
    assert {r.number for r in rows if r.verdict == "failed"} == {0, 1, 2, 33}

    def failing():
        for i in range(5):
            yield sources.Frame(key=str(i), name="x", image=numbered_frame(i), number=i)
        raise OSError("camera unplugged")

    frames = sources.Prefetched(failing(), depth=8)
    while frames.waiting() < 6:
        time.sleep(0.01)
    sink = ListSink()
    with pytest.raises(OSError, match="unplugged"):
        loop.run(frames, infer, sink, loop.LoopConfig(batch_frames=8), infer_many=infer_many)
    assert [r.key for b in sink.batches for r in b] == ["0", "1", "2", "3", "4"]


def test_prefetched_frames_come_in_order_with_the_sources_error_and_stop_when_closed(tmp_path):
    video = write_video(tmp_path / "line.avi", 10)

    def prepare(frame):  # the station makes the model's input here, off the model's thread
        if frame.number == 8:
            raise ValueError("cannot shrink frame 8")
        frame.prepared = (threading.current_thread().name, frame.image.shape)

    got = []
    with pytest.raises(ValueError, match="frame 8"):
        for frame in sources.Prefetched(sources.video_frames(video), prepare=prepare):
            got.append(frame)
    assert [f.number for f in got] == list(range(8))
    assert {f.prepared for f in got} == {("station-prefetch", (48, 64, 3))}
    assert [f.number for f in sources.Prefetched(sources.video_frames(video))] == list(range(10))

    def failing():
        yield sources.Frame(key="0", name="x", image=numbered_frame(0), number=0)
        raise sources.SourceError("camera unplugged")

    got = []
    with pytest.raises(sources.SourceError, match="unplugged"):
        for frame in sources.Prefetched(failing()):
            got.append(frame.key)
    assert got == ["0"]
    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield sources.Frame(key=str(i), name="x", image=numbered_frame(i % 250), number=i)
            i += 1

    stream = sources.Prefetched(endless(), depth=2)
    assert next(stream).number == 0
    stream.close()  # the reader thread stops; at most depth + 2 frames were read ahead
    time.sleep(0.3)
    assert len(read) <= 4
    assert not any(t.name == "station-prefetch" for t in threading.enumerate())


def test_a_background_sink_stores_every_batch_in_order_and_reports_its_error():
    class Slow(ListSink):
        def flush(self, results):
            time.sleep(0.02)
            if results and results[0].key == "boom":
                raise OSError("disk full")
            super().flush(results)

    def result(key):
        return loop.FrameResult(key, "x", None, 0.0, loop.OK, 0.1, [], 1.0)

    inner, exited = Slow(), []
    sink = loop.BackgroundSink(inner, depth=2, on_exit=lambda: exited.append(True))
    for i in range(6):
        sink.flush([result(f"{i}a"), result(f"{i}b")])
    sink.close()
    assert [r.key for b in inner.batches for r in b] == [f"{i}{s}" for i in range(6) for s in "ab"]
    assert exited == [True]

    sink = loop.BackgroundSink(Slow())
    sink.flush([result("boom")])
    time.sleep(0.2)
    with pytest.raises(OSError, match="disk full"):
        sink.flush([result("next")])
    sink.close()
