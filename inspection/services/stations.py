"""Line stations: settings people change, and the rows and state the station process writes.

The station process (``workers/tasks/stations.py``) writes only through ``station_report``,
``station_event_add`` and ``station_results_record``; the page and the API read through
``station_live`` and ``station_results_csv``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, F
from django.db.models.functions import TruncMinute
from django.utils import timezone

from inspection.models import (
    Image,
    InspectionRun,
    ModelVersion,
    Project,
    Role,
    Station,
    StationEvent,
    StationResult,
)
from inspection.permissions import require_role

EDITABLE = (
    "source",
    "enabled",
    "start_with_loupe",
    "unsure_margin",
    "ok_sample_rate",
    "sample_quota",
)
# a station that has not reported for this long is shown as not running
STALE_AFTER = timedelta(seconds=15)


def _check(fields: dict) -> None:
    errors = {}
    if "source" in fields and not str(fields["source"]).strip():
        errors["source"] = "Give a camera index, a stream URL, a video file or a folder."
    margin = fields.get("unsure_margin")
    if margin is not None and not (0 <= float(margin) < 0.5):
        errors["unsure_margin"] = "Between 0 and 0.5 (scores are 0-1 with the threshold at 0.5)."
    rate = fields.get("ok_sample_rate")
    if rate is not None and not (0 <= float(rate) <= 1):
        errors["ok_sample_rate"] = "A share between 0 and 1 (0.01 = one OK frame in a hundred)."
    if errors:
        raise ValidationError(errors)


def station_create(*, user, project: Project, name: str, source: str, **fields) -> Station:
    """A new station of ``project`` (project admins)."""
    require_role(user, project, Role.ADMIN)
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise ValidationError({k: "Not a station setting." for k in unknown})
    _check({"source": source, **fields})
    if Station.objects.filter(name=name).exists():
        raise ValidationError({"name": f"A station named {name!r} exists already."})
    return Station.objects.create(
        project=project, name=name, source=source.strip(), created_by=user, **fields
    )


def station_update(*, user, station: Station, **fields) -> Station:
    """Change a station's settings; a running process takes them at its next heartbeat."""
    require_role(user, station.project, Role.ADMIN)
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise ValidationError({k: "Not a station setting." for k in unknown})
    _check(fields)
    for key, value in fields.items():
        setattr(station, key, value.strip() if key == "source" else value)
    station.save(update_fields=[*fields])
    return station


def station_delete(*, user, station: Station) -> None:
    """Delete a station and its results; the frames it stored stay in the project."""
    require_role(user, station.project, Role.ADMIN)
    station.delete()


# --- what the station process writes --------------------------------------------------------


def station_report(
    *,
    station: Station,
    status: str,
    message: str = "",
    latest_frame: str | None = None,
    latest: dict | None = None,
) -> Station:
    """The process's heartbeat: its state and the latest frame; returns the station as people
    left it (``enabled`` and the settings are read back from here)."""
    fields = {"status": status, "message": message[:500], "heartbeat_at": timezone.now()}
    if latest_frame is not None:
        fields["latest_frame"] = latest_frame
    if latest is not None:
        fields["latest"] = latest
    Station.objects.filter(pk=station.pk).update(**fields)
    station.refresh_from_db()
    return station


def station_event_add(*, station: Station, kind: str, message: str = "", gap_s: float = 0.0):
    return StationEvent.objects.create(
        station=station, kind=kind, message=message[:500], gap_s=round(gap_s, 3)
    )


def station_results_record(*, station: Station, rows: Iterable[dict]) -> int:
    """Store result rows (dicts of StationResult fields, ``key`` unique per station) in one
    insert and add them to the station's totals; a row whose key is already stored (a batch
    redone after a crash) is skipped. Returns how many rows were new."""
    objs = {row["key"]: StationResult(station=station, **row) for row in rows}
    if not objs:
        return 0
    with transaction.atomic():
        stored = set(
            StationResult.objects.filter(station=station, key__in=list(objs)).values_list(
                "key", flat=True
            )
        )
        new = [o for key, o in objs.items() if key not in stored]
        # one process writes a station's rows: no other insert races this one (the unique
        # key still guards against a second process started by mistake)
        StationResult.objects.bulk_create(new, ignore_conflicts=True, batch_size=500)
        counts = {f"count_{v}": 0 for v in StationResult.Verdict.values}
        for o in new:
            counts[f"count_{o.verdict}"] += 1
        counts["count_sampled"] = sum(o.image_id is not None for o in new)
        Station.objects.filter(pk=station.pk).update(
            **{field: F(field) + n for field, n in counts.items() if n}
        )
    return len(new)


def station_sample_room(station: Station) -> int:
    """How many more frames the station may store as images: its quota minus the rows that
    point to a stored frame (the running total, not a count of millions of rows)."""
    station.refresh_from_db(fields=["count_sampled", "sample_quota"])
    return max(station.sample_quota - station.count_sampled, 0)


def station_resume_frame(station: Station, source_name: str) -> int:
    """The frame of a video to start from: the one after the last recorded."""
    last = (
        StationResult.objects.filter(station=station, source_name=source_name)
        .order_by("-frame_number")
        .values_list("frame_number", flat=True)
        .first()
    )
    return 0 if last is None else last + 1


def station_recorded_keys(station: Station, keys: list[str]) -> set[str]:
    """Which of ``keys`` (a watched folder's file names) have a result row already: looked up
    in chunks by the unique (station, key) index, never the station's whole history."""
    found: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = [key[:300] for key in keys[start : start + 500]]  # rows keep 300 characters
        found.update(
            StationResult.objects.filter(station=station, key__in=chunk).values_list(
                "key", flat=True
            )
        )
    return {key for key in keys if key[:300] in found}


def station_run_for(
    *, station: Station, model_version: ModelVersion, params: dict
) -> InspectionRun:
    """The inspection run the station's sampled frames are stored under: one per station,
    model version and inspection settings, so the review queue can filter by it."""
    run = (
        InspectionRun.objects.filter(station=station, model_version=model_version)
        .order_by("-id")
        .first()
    )
    if run is not None and run.params == params:
        return run
    return InspectionRun.objects.create(
        project=station.project,
        model_version=model_version,
        station=station,
        scope=InspectionRun.Scope.SELECTED,
        params=params,
    )


def station_run_add_image(*, run: InspectionRun, image: Image, outcome: dict) -> None:
    """Note a sampled frame on its run (the run page lists its images)."""
    with transaction.atomic():
        locked = InspectionRun.objects.select_for_update().get(pk=run.pk)
        if image.pk not in locked.image_ids:
            locked.image_ids.append(image.pk)
        locked.results[str(image.pk)] = outcome
        locked.save(update_fields=["image_ids", "results"])


# --- what the page and the API read ---------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def station_running(station: Station) -> bool:
    """Whether the process reported recently (a killed process leaves ``running`` behind)."""
    return (
        station.status in (Station.Status.RUNNING, Station.Status.WAITING, Station.Status.PAUSED)
        and station.heartbeat_at is not None
        and timezone.now() - station.heartbeat_at < STALE_AFTER
    )


def station_live(station: Station, *, minutes: int = 60, recent: int = 200) -> dict:
    """What the station page shows: state, counts and yield, throughput and latency of the
    latest ``recent`` frames, per-minute counts over the last ``minutes`` (0: none), the last NG
    frames."""
    results = StationResult.objects.filter(station=station)
    totals = {
        v: getattr(station, f"count_{v}") for v in ("ok", "ng", "unsure", "failed", "sampled")
    }
    totals["total"] = sum(totals[v] for v in StationResult.Verdict.values)
    judged = totals["ok"] + totals["ng"]
    last = list(results.order_by("-at", "-id").values("at", "latency_ms", "skipped")[:recent])
    latencies = [r["latency_ms"] for r in last]
    fps = None
    if len(last) >= 2:
        span = (last[0]["at"] - last[-1]["at"]).total_seconds()
        fps = round((len(last) - 1) / span, 2) if span > 0 else None
    buckets: dict[str, dict] = {}
    if minutes:  # counted by the database (90,000 rows an hour at 25 frames/s)
        since = timezone.now() - timedelta(minutes=minutes)
        per_minute = (
            results.filter(at__gte=since)
            .annotate(minute=TruncMinute("at"))
            .values("minute", "verdict")
            .annotate(n=Count("id"))
        )
        for row in per_minute:
            minute = row["minute"].isoformat()
            b = buckets.setdefault(minute, {"minute": minute, "ok": 0, "ng": 0, "unsure": 0})
            if row["verdict"] in b:
                b[row["verdict"]] += row["n"]
    ng = results.filter(verdict="ng").select_related("image").order_by("-at", "-id")[:8]
    return {
        "id": station.pk,
        "name": station.name,
        "status": station.status if station_running(station) else Station.Status.STOPPED,
        "reported_status": station.status,
        "message": station.message,
        "enabled": station.enabled,
        "heartbeat_at": station.heartbeat_at.isoformat() if station.heartbeat_at else None,
        "latest": station.latest,
        "counts": totals,
        "yield": round(totals["ok"] / judged, 4) if judged else None,
        "frames_per_s": fps,
        "latency_ms": {
            "p50": _round(_percentile(latencies, 0.5)),
            "p95": _round(_percentile(latencies, 0.95)),
        },
        "skipped": sum(r["skipped"] for r in last),
        "per_minute": sorted(buckets.values(), key=lambda b: b["minute"]),
        "last_ng": [
            {
                "key": r.key,
                "at": r.at.isoformat(),
                "score": _round(r.score, 3),
                "regions": len(r.regions),
                "image": r.image_id,
            }
            for r in ng
        ],
        "events": [
            {"at": e.at.isoformat(), "kind": e.kind, "message": e.message, "gap_s": e.gap_s}
            for e in station.events.all()[:10]
        ],
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


CSV_COLUMNS = [
    "at",
    "key",
    "source",
    "frame",
    "verdict",
    "score",
    "regions",
    "latency_ms",
    "skipped",
    "model_version",
    "image",
    "error",
]


def station_results_csv(
    station: Station, *, start: datetime | None = None, end: datetime | None = None
) -> Iterator[str]:
    """The results of a time range as CSV lines (streamed: a day at 25 frames/s is 2 M rows)."""
    rows = StationResult.objects.filter(station=station).order_by("at", "id")
    if start is not None:
        rows = rows.filter(at__gte=start)
    if end is not None:
        rows = rows.filter(at__lt=end)
    buf = io.StringIO()
    writer = csv.writer(buf)

    def take() -> str:
        out = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return out

    writer.writerow(CSV_COLUMNS)
    yield take()
    for r in rows.values_list(
        "at",
        "key",
        "source_name",
        "frame_number",
        "verdict",
        "score",
        "regions",
        "latency_ms",
        "skipped",
        "model_version_id",
        "image_id",
        "error",
    ).iterator(chunk_size=2000):
        at, key, source, frame, verdict, score, regions, latency, skipped, mv, image, error = r
        writer.writerow(
            [
                at.isoformat(),
                key,
                source,
                "" if frame is None else frame,
                verdict,
                "" if score is None else round(score, 4),
                len(regions or []),
                round(latency, 1),
                skipped,
                mv or "",
                image or "",
                error,
            ]
        )
        yield take()
