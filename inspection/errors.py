"""Domain errors shared by the apps (the API turns them into JSON in inspection.api.errors)."""

from __future__ import annotations

from typing import Any


class ConflictError(Exception):
    """Someone else changed the object first (HTTP 409). ``current`` is what is stored now, or
    None; a view with ``conflict_serializer_class`` returns it serialized with the error."""

    def __init__(self, message: str, current: Any = None) -> None:
        super().__init__(message)
        self.current = current


class BrokerUnavailable(Exception):
    """The job queue (Redis) did not take a job's message (HTTP 503). The job row is kept and
    sent again by the maintenance sweep once the broker answers (a transactional outbox)."""
