"""Many images through one model: files (:func:`predict_many`: read-ahead, whole-image batches,
and the heatmaps of one batch made while the network runs the next), or decoded images in hand
(:func:`predict_batch`: a line station's frames)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .artifact import LoadedModel, load_model
from .config import Phase, PredictConfig, ProgressCallback, no_progress
from .errors import AnomalyError, Cancelled
from .image_io import read_pixels
from .inference import Prediction, check_compatible, predict_decoded, whole_maps

logger = logging.getLogger(__name__)


def _failure(path: str, exc: BaseException) -> AnomalyError:
    """The error one image fails alone with (an unexpected one is logged with its trace)."""
    if isinstance(exc, AnomalyError):
        return exc
    logger.exception("anomaly prediction failed for %s", path)
    return AnomalyError(f"{path}: {type(exc).__name__}: {exc}")


def network_input(model: LoadedModel, image: np.ndarray) -> np.ndarray | None:
    """What a whole-image model's network takes for ``image`` (resized, float), for
    :func:`predict_batch`'s ``prepared``; None for a tiled model (it cuts its own tiles)."""
    return model.geometry.prepare(image) if model.geometry.scale is None else None


def predict_batch(
    model: LoadedModel | str | Path,
    images: Sequence[tuple[str, np.ndarray]],
    config: PredictConfig | None = None,
    prepared: Sequence[np.ndarray | None] | None = None,
) -> list[Prediction | AnomalyError]:
    """:func:`predict` of images already decoded (``(name, pixels)`` pairs, as
    :func:`~workers.anomaly.image_io.read_pixels` gives them), in order: a whole-image model
    runs them through the network in one call, which on a CPU costs less per image than one
    call each (a line station at 256 px: docs/benchmarks.md, "A line station"). Each
    result is a ``Prediction``, or the ``AnomalyError`` of an image that failed alone. Tiled
    models already batch their tiles: they predict one image after the other. ``prepared``
    (optional, one per image, None where not made): each image's :func:`network_input`, made
    earlier on another thread.
    """
    config = config or PredictConfig()
    if not isinstance(model, LoadedModel):
        model = load_model(model, config.device)
    results: list[Prediction | AnomalyError | None] = [None] * len(images)
    ready: list[tuple[int, np.ndarray]] = []  # (index, network input) of whole-image models
    for index, (name, image) in enumerate(images):
        try:
            check_compatible(model, image, name, config.allow_size_mismatch or config.fit_size)
            if model.geometry.scale is None:
                made = prepared[index] if prepared is not None else None
                ready.append((index, made if made is not None else network_input(model, image)))
            else:
                results[index] = predict_decoded(model, name, image, config, None, 0.0)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - this image fails alone
            results[index] = _failure(name, exc)
    raws: list = []
    shared = 0.0
    if ready:
        started = time.perf_counter()
        try:
            raws = list(whole_maps(model, [prepared for _, prepared in ready], config))
        except Exception:  # noqa: BLE001 - one by one below, so a bad input fails alone
            raws = [None] * len(ready)
        shared = (time.perf_counter() - started) / len(ready)
    for (index, _), raw in zip(ready, raws, strict=True):
        name, image = images[index]
        try:
            # raw None: the batch failed, the image's own map is made here
            results[index] = predict_decoded(model, name, image, config, None, 0.0, raw, shared)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            results[index] = _failure(name, exc)
    return results  # type: ignore[return-value]


def predict_many(
    model: LoadedModel | str | Path,
    image_paths: Sequence[str | Path],
    config: PredictConfig | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[str, Prediction | AnomalyError]]:
    """:func:`predict` over many images, faster: yields ``(path, Prediction)`` in order, or
    ``(path, error)`` for an image that cannot be read or does not fit the model (it fails
    alone; the others go on).

    Decoding runs ahead in one background thread (OpenCV releases the GIL, so reading the next
    files overlaps the network), and a whole-image model takes up to ``config.batch_size``
    images per network call (PaDiM's per-position covariances, for one, are then read once per
    batch instead of once per image): as many as are decoded when the network is free, so the
    network never waits for a batch to fill while the reader is the slower of the two. Their
    heatmaps, calibration and regions are made in a third thread while the network runs the next
    batch. Tiled models already batch their tiles; they get the read-ahead.
    Memory: for whole-image models, one batch being decoded ahead, one in the network and one
    in the post thread; each image is held as its network input only (the full-size pixels are
    dropped after resizing), except with ``config.specular_mask`` or a line detector beside the
    model (``TrainConfig.lines``), which need them: then up to about three batches of full-size
    decoded images wait (a 24 MP image is 72 MB in 8 bits).
    Tiled models keep one image ahead (~290 MB of float tiles are made a batch at a time, not
    all at once). Batches hold what is decoded, so their make-up varies from run to run, and a
    batched matrix product may round differently: maps can differ in the last float bits
    between runs (a pixel exactly at a threshold could then flip).
    ``progress`` is called after each image with the share done; raising from it stops early.
    """
    config = config or PredictConfig()
    progress = progress or no_progress
    if not isinstance(model, LoadedModel):
        model = load_model(model, config.device)
    paths = [str(p) for p in image_paths]
    whole = model.geometry.scale is None
    batch_size = max(1, config.batch_size) if whole else 1
    # the specular mask and the line detector (its own network, run per image) read the pixels
    keep_pixels = config.specular_mask or (model.lines is not None and config.lines)

    def load(path: str) -> tuple[np.ndarray, np.ndarray | None, float]:
        started = time.perf_counter()
        image = read_pixels(path)
        check_compatible(model, image, path, config.allow_size_mismatch or config.fit_size)
        if not whole:
            return image, None, time.perf_counter() - started
        prepared = model.geometry.prepare(image)
        if not keep_pixels:
            # only the shape is used from here on: drop the full-size pixels (a 24 MP image is
            # 72 MB in 8 bits) for a zero-byte stand-in of the same shape
            image = np.broadcast_to(np.zeros((), np.float32), image.shape)
        return image, prepared, time.perf_counter() - started

    def maps_of(items: list[tuple[str, tuple]]) -> list:
        """Whole-image maps of a batch; if the batch fails, one by one so a bad input fails alone."""
        try:
            return list(whole_maps(model, [item[1] for _, item in items], config))
        except Exception:  # noqa: BLE001 - retried per image below, each failure reported
            out = []
            for path, item in items:
                try:
                    out.append(whole_maps(model, [item[1]], config)[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(failure(path, exc))
            return out

    failure = _failure

    def finish(
        path: str, item: tuple, raw: np.ndarray | None, shared: float, phase: Phase | None
    ) -> Prediction | AnomalyError:
        """The Prediction of one decoded image, or its error (Cancelled passes through)."""
        image, _, read_s = item
        try:
            return predict_decoded(model, path, image, config, phase, read_s, raw, shared)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - this image fails alone
            return failure(path, exc)

    done = 0
    # Whole-image models: heatmap, calibration and regions of one batch run in a second thread
    # while the network takes the next batch (at most one batch waits there).
    pending: deque[tuple[str, object]] = deque()
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="loupe-read") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="loupe-post") as post,
    ):
        ahead = batch_size
        futures: list = [pool.submit(load, p) for p in paths[:ahead]]
        try:
            index = 0
            while index < len(paths) or pending:
                batch: list[tuple[str, tuple | AnomalyError]] = []
                while index < len(paths) and len(batch) < batch_size:
                    if batch and not futures[index].done():
                        break  # run what is decoded instead of waiting to fill the batch
                    if index + ahead < len(paths):
                        futures.append(pool.submit(load, paths[index + ahead]))
                    future, futures[index] = futures[index], None  # frees the image later
                    try:
                        batch.append((paths[index], future.result()))
                    except Exception as exc:  # noqa: BLE001 - fails alone, reported in place
                        batch.append((paths[index], failure(paths[index], exc)))
                    index += 1
                ok = [(p, item) for p, item in batch if not isinstance(item, AnomalyError)]
                raws: list = [None] * len(ok)
                shared = 0.0
                if whole and ok:
                    started = time.perf_counter()
                    raws = maps_of(ok)
                    shared = (time.perf_counter() - started) / len(ok)
                maps = iter(raws)
                for path, item in batch:
                    if isinstance(item, AnomalyError):
                        pending.append((path, item))
                        continue
                    raw = next(maps)
                    if isinstance(raw, AnomalyError):
                        pending.append((path, raw))
                    elif whole:
                        pending.append((path, post.submit(finish, path, item, raw, shared, None)))
                    else:
                        # tiled models run their network here, reporting per tile batch: a large
                        # image moves the bar and can be cancelled mid-way
                        phase = Phase(progress, done / len(paths), (done + 1) / len(paths))
                        pending.append((path, finish(path, item, None, 0.0, phase)))
                # hand out, in order, what is finished; wait only to keep one batch in flight
                while pending and (
                    index >= len(paths)
                    or len(pending) > batch_size
                    or not isinstance(pending[0][1], Future)
                    or pending[0][1].done()
                ):
                    path, result = pending.popleft()
                    if isinstance(result, Future):
                        result = result.result()
                    yield path, result
                    done += 1
                    progress(done / len(paths), f"{done}/{len(paths)} images")
        finally:
            for future in futures:
                if future is not None:
                    future.cancel()
            for _, result in pending:
                if isinstance(result, Future):
                    result.cancel()
