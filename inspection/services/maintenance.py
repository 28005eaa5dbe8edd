"""Periodic housekeeping as a registry of hooks (NetBox's ``system_job`` registry is the model).

A hook is a function without required arguments that keeps the data tidy: re-queue jobs whose
worker died, delete export zips past their keeping time... Each module registers its own with
``@maintenance_hook("what it does")``; :func:`maintenance_run` runs them all. It is called by
Celery beat every LOUPE_MAINTENANCE_SECONDS (``loupe.maintenance`` in workers/tasks/maintenance.py;
embedded in ``./loupe run``'s worker, a separate process in docker-compose), when a worker starts,
and by ``manage.py loupe_jobs --sweep``. No request handler runs them: a read never writes.

Hooks run every time, so each must be cheap when there is nothing to do (one indexed query) and
safe to run twice at once (row locks, or idempotent updates). One failing hook is logged and does
not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_HOOKS: dict[str, Callable[[], Any]] = {}


def maintenance_hook(name: str):
    """Register ``fn()`` as a maintenance hook called ``name``."""

    def decorator(fn: Callable[..., Any]):
        if name in _HOOKS and _HOOKS[name] is not fn:
            raise ValueError(f"maintenance hook {name!r} is registered twice")
        _HOOKS[name] = fn
        return fn

    return decorator


def maintenance_hooks() -> dict[str, Callable[[], Any]]:
    return dict(_HOOKS)


def maintenance_run() -> dict[str, Any]:
    """Run every hook; returns what each returned (or ``{"error": ...}`` for one that failed)."""
    out: dict[str, Any] = {}
    for name, fn in _HOOKS.items():
        try:
            out[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one broken hook must not stop the others
            log.exception("maintenance hook %r failed", name)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
