"""Limit/offset paging that cannot be asked for more than the database or the server can give."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination

MAX_OFFSET = 2**62  # past every row, inside PostgreSQL's bigint (a larger one was a 500)


def _whole(request, name: str, least: int) -> None:
    """A paging parameter given as something else than a whole number >= ``least`` is a 400
    (DRF reads it as the default, so a typo silently gave the first page)."""
    raw = request.query_params.get(name)
    if (
        raw is not None
        and raw != ""
        and not (raw.isascii() and raw.isdigit() and int(raw) >= least)
    ):
        raise ValidationError({name: [f"Enter a whole number, {least} or more."]})


class Paging(LimitOffsetPagination):
    """DRF's limit/offset (default 50) with ``limit`` capped at 1000 (a larger one gives 1000,
    as DRF does) and ``offset`` capped inside bigint, so ``?offset=<25 digits>`` is an empty
    page instead of a database error; anything but a whole number is a 400."""

    max_limit = 1000

    def get_limit(self, request):
        _whole(request, self.limit_query_param, 1)
        return super().get_limit(request)

    def get_offset(self, request) -> int:
        _whole(request, self.offset_query_param, 0)
        return min(super().get_offset(request), MAX_OFFSET)

    def get_schema_operation_parameters(self, view):
        """DRF's two parameters, with the least value each takes (the schema says what a 400
        refuses)."""
        params = super().get_schema_operation_parameters(view)
        least = {self.limit_query_param: 1, self.offset_query_param: 0}
        for p in params:
            if p["name"] in least:
                p["schema"] = {**p["schema"], "minimum": least[p["name"]]}
        return params
