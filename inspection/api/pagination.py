"""Limit/offset paging that cannot be asked for more than the database or the server can give."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

MAX_OFFSET = 2**62  # past every row, inside PostgreSQL's bigint (a larger one was a 500)


class Paging(LimitOffsetPagination):
    """DRF's limit/offset (default 50) with ``limit`` capped at 1000 (a larger one gives 1000,
    as DRF does) and ``offset`` capped inside bigint, so ``?offset=<25 digits>`` is an empty
    page instead of a database error."""

    max_limit = 1000

    def get_offset(self, request) -> int:
        return min(super().get_offset(request), MAX_OFFSET)
