"""Periodic housekeeping: Celery beat's ``loupe.maintenance`` task, and the same hooks when a
worker starts (a worker that starts after a crash re-queues the jobs the dead one left running).

The hooks themselves are registered where their rule lives (``@maintenance_hook`` in
inspection.services.maintenance); this module only runs them.
"""

import logging

from celery.signals import worker_ready

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


def _run() -> None:
    done = {name: result for name, result in maintenance_run().items() if result}
    if done:
        log.info("maintenance: %s", done)
