"""Periodic housekeeping: Celery beat's ``loupe.maintenance`` task, and the same hooks when a
worker starts (a worker that starts after a crash re-queues the jobs the dead one left running).

A worker restarted quickly after a crash (systemd, docker's restart policy) is ready before the
dead one's last heartbeat is LOUPE_JOB_STALE_SECONDS old, so its first sweep finds nothing stale:
it sweeps once more when that window has passed, without waiting for beat (which a worker
started without ``-B`` may not have).

The hooks themselves are registered where their rule lives (``@maintenance_hook`` in
inspection.services.maintenance); this module only runs them.
"""

import logging
import threading

from celery.signals import worker_ready
from django.conf import settings
from django.db import connection

from inspection.services.maintenance import maintenance_run
from workers.celery import app

log = logging.getLogger(__name__)

TASK_NAME = "loupe.maintenance"


@app.task(name=TASK_NAME, ignore_result=True)
def run_maintenance() -> None:
    _run()


@worker_ready.connect
def _on_worker_ready(**_kwargs) -> None:
    _run()
    delay = settings.LOUPE_JOB_STALE_SECONDS + settings.LOUPE_JOB_HEARTBEAT_SECONDS
    timer = threading.Timer(delay, _run_in_thread)
    timer.daemon = True
    timer.name = "maintenance-after-start"
    timer.start()


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
