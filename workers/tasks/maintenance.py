"""Periodic housekeeping: Celery beat's ``loupe.maintenance`` task, and the same hooks when a
worker starts (a worker that starts after a crash re-queues the jobs the dead one left running).

A worker restarted quickly after a crash (systemd, docker's restart policy) is ready before the
dead one's last heartbeat is LOUPE_JOB_STALE_SECONDS old, so its first sweep finds nothing stale:
it sweeps once more when that window has passed, without waiting for beat (which a worker
started without ``-B`` may not have).

The hooks themselves are registered where their rule lives (``@maintenance_hook`` in
inspection.services.maintenance); this module only runs them.
"""

import contextlib
import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection

from inspection.services.maintenance import maintenance_run
from inspection.services.queue_health import PRESENCE_SECONDS, PRESENCE_TTL, presence_key
from workers.celery import app

log = logging.getLogger(__name__)

TASK_NAME = "loupe.maintenance"


@app.task(name=TASK_NAME, ignore_result=True)
def run_maintenance() -> None:
    _run()


@worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    _announce(sender)
    _run()
    delay = settings.LOUPE_JOB_STALE_SECONDS + settings.LOUPE_JOB_HEARTBEAT_SECONDS
    timer = threading.Timer(delay, _run_in_thread)
    timer.daemon = True
    timer.name = "maintenance-after-start"
    timer.start()


def _announce(consumer) -> None:
    """Keep this worker's presence key (its queues) in Redis while it runs: the jobs page shows
    who is alive from it (inspection/services/queue_health.py)."""
    import json
    import socket

    import redis

    hostname = getattr(consumer, "hostname", None) or socket.gethostname()
    try:
        queues = sorted(q.name for q in consumer.task_consumer.queues)
    except AttributeError:
        queues = []
    # the machine's name as jobs record it (jobs.worker_label): the sweep tells from it that a
    # job's machine has no worker left
    key, value = (
        presence_key(hostname),
        json.dumps({"queues": queues, "host": socket.gethostname()}),
    )

    def beat() -> None:
        client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_connect_timeout=2, socket_timeout=2
        )
        while True:
            try:
                client.set(key, value, ex=PRESENCE_TTL)
            except redis.RedisError:
                log.warning("worker presence not written (Redis not answering)")
            if stop.wait(PRESENCE_SECONDS):
                return

    def leave() -> None:
        stop.set()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2).delete(key)

    stop = threading.Event()
    _LEAVE.append(leave)
    threading.Thread(target=beat, daemon=True, name="worker-presence").start()


_LEAVE: list = []  # what a worker shutting down does: its presence goes at once, not in 35 s


@worker_shutdown.connect
def _on_worker_shutdown(**_kwargs) -> None:
    for leave in _LEAVE:
        leave()


def _run_in_thread() -> None:
    try:
        _run()
    except Exception:  # noqa: BLE001 - a sweep that fails must not take the worker down
        log.exception("maintenance after the worker started failed")
    finally:
        connection.close()  # this thread's own connection


def _run() -> None:
    done = {name: result for name, result in maintenance_run().items() if result}
    if done:
        log.info("maintenance: %s", done)
