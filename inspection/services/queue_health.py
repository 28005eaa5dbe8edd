"""Is anyone there to run the jobs? The broker (Redis) and the workers, as the jobs page and
``GET /api/jobs/health/`` report them.

Workers announce themselves: each one keeps a key ``loupe<prefix>:worker:<hostname>`` in Redis
(its queues and its machine's name, refreshed every ``PRESENCE_SECONDS``, expiring after
``PRESENCE_TTL``; ``workers/tasks/maintenance.py``), so the web process learns who is alive with
one Redis call and no broadcast to wait for, and the stale-job sweep learns which machines still
run a worker (a job whose machine has none lost its worker: ``jobs.worker_gone``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from django.conf import settings

from inspection.models import Job

PRESENCE_SECONDS = 10
PRESENCE_TTL = 35


def presence_key(hostname: str) -> str:
    return f"loupe{settings.LOUPE_QUEUE_PREFIX}:worker:{hostname}"


@dataclass
class QueueHealth:
    broker: bool
    workers: list[dict] = field(default_factory=list)  # [{"name", "queues"}]
    waiting: dict[str, int] = field(default_factory=dict)  # queue -> queued jobs
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _redis():
    import redis

    return redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_connect_timeout=0.5, socket_timeout=0.5
    )


def _presences(client) -> list[dict]:
    """The live workers' presence keys: ``{"name", "queues", "host"}`` each (``host`` None for
    a worker of an older version, which wrote its queues only)."""
    keys = list(client.scan_iter(match=presence_key("*"), count=200))
    found = []
    for key, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        if value is None:
            continue  # expired between the scan and the read
        name = key.decode().rsplit(":worker:", 1)[1]
        data = json.loads(value)
        if isinstance(data, list):
            data = {"queues": data}
        found.append({"name": name, "queues": data.get("queues", []), "host": data.get("host")})
    return found


def worker_hosts() -> set[str] | None:
    """The machines (``socket.gethostname()``) with a live worker, or None when Redis does not
    answer (then nobody can tell) or a worker of an older version is alive (its machine is not
    known)."""
    try:
        presences = _presences(_redis())
    except Exception:  # noqa: BLE001 - any failure to talk to Redis: unknown
        return None
    if any(p["host"] is None for p in presences):
        return None
    return {p["host"] for p in presences}


def queue_health() -> QueueHealth:
    """The broker's answer, the live workers and their queues, the queued jobs per queue, and
    the problems in words (empty when all is well)."""
    from inspection.services.jobs import QUEUES, queue_name

    waiting = {q: Job.objects.filter(status=Job.Status.QUEUED, queue=q).count() for q in QUEUES}
    health = QueueHealth(broker=False, waiting=waiting)
    try:
        client = _redis()
        client.ping()
        health.broker = True
        health.workers = [{"name": w["name"], "queues": w["queues"]} for w in _presences(client)]
    except Exception:  # noqa: BLE001 - any failure to talk to Redis means "not answering"
        health.broker = False
    if not health.broker:
        health.problems.append(
            "The job queue (Redis) is not answering: nothing can start. What you send is kept "
            "and starts once it answers; whoever runs Loupe should check Redis."
        )
        return health
    served = {q for w in health.workers for q in w["queues"]}
    if not health.workers:
        health.problems.append(
            "No worker is running: jobs wait until one starts (`./loupe run` starts one; see "
            "docs/operations.md)."
        )
    else:
        for q in QUEUES:
            if waiting[q] and queue_name(q) not in served:
                health.problems.append(
                    f"{waiting[q]} job(s) wait for a worker on the {q} queue, and no running "
                    f"worker takes that queue (start one with -Q {queue_name(q)})."
                )
    return health
