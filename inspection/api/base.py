"""Small pieces every viewset shares: lists inside ``@action`` s, stored files as responses."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping

from django.core.exceptions import FieldDoesNotExist, ObjectDoesNotExist
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.urls import get_script_prefix, reverse
from rest_framework import ISO_8601, serializers
from rest_framework.fields import SkipField
from rest_framework.relations import PKOnlyObject, PrimaryKeyRelatedField, RelatedField
from rest_framework.response import Response
from rest_framework.settings import api_settings

from inspection.listcache import cached_page


class NumericIds:
    """For viewsets whose ids are numbers: the router only matches digits, so ``/api/images/abc/``
    is a 404 like any unknown id (otherwise the lookup raises a ValueError: a 500)."""

    lookup_value_regex = r"\d+"


_MARKER = 987654321987654321


@functools.lru_cache(maxsize=256)
def _url_parts(name: str, prefix: str) -> tuple[str, str]:
    head, tail = reverse(name, args=[_MARKER]).split(str(_MARKER))
    return head, tail


def url_for(name: str, pk: int, prefix: str | None = None) -> str:
    """``reverse(name, args=[pk])`` for a route with one id, without resolving it again for every
    object of a list (an images page of 50 made 350 calls). ``prefix``: the request's
    ``get_script_prefix()``, when the caller makes several URLs of one row."""
    head, tail = _url_parts(name, get_script_prefix() if prefix is None else prefix)
    return f"{head}{pk}{tail}"


class FastRepresentation:
    """DRF's ``to_representation`` for a ``ModelSerializer`` without its per-field overhead: the
    fields are sorted once per serializer (a list's child serves every row) into method fields,
    plain attribute paths and the rest, and each value still goes through its field's own
    ``to_representation`` (datetimes, choices and numbers come out exactly as DRF makes them;
    ``tests/inspection/test_fast_representation.py`` compares the two on real rows). Anything
    unusual for one value (a missing attribute, a callable, a related field) takes DRF's own path
    for that field (docs/benchmarks.md, "API under load")."""

    def _fast_plan(self) -> list:
        plan = self.__dict__.get("_fast_plan_cache")
        if plan is None:
            plan = []
            for field in self._readable_fields:
                name = field.field_name
                if isinstance(field, serializers.SerializerMethodField):
                    plan.append((name, getattr(self, field.method_name), None, field, None))
                elif (attname := _foreign_key_column(self, field)) is not None:
                    # the related row's id is in this row's column: no related object, no query
                    plan.append((name, None, (attname,), field, _same))
                elif isinstance(field, RelatedField) or field.source == "*":
                    plan.append((name, None, None, field, None))
                else:
                    attrs = tuple(field.source_attrs)
                    plan.append((name, None, attrs, field, _iso_datetime(field)))
            self.__dict__["_fast_plan_cache"] = plan
        return plan

    @staticmethod
    def _drf_value(field, instance, ret: dict) -> None:
        """One field the way ``Serializer.to_representation`` does it."""
        try:
            attribute = field.get_attribute(instance)
        except SkipField:
            return
        check = attribute.pk if isinstance(attribute, PKOnlyObject) else attribute
        ret[field.field_name] = None if check is None else field.to_representation(attribute)

    def to_representation(self, instance):
        if isinstance(instance, Mapping):
            return super().to_representation(instance)
        ret: dict = {}
        for name, method, attrs, field, convert in self._fast_plan():
            if method is not None:
                ret[name] = method(instance)
                continue
            if attrs is None:
                self._drf_value(field, instance, ret)
                continue
            value = instance
            try:
                for attr in attrs:
                    value = getattr(value, attr)
            except (AttributeError, ObjectDoesNotExist):
                self._drf_value(field, instance, ret)  # its default, None, or skipped
                continue
            if convert is not None:
                ret[name] = None if value is None else convert(value)
                continue
            if callable(value):
                self._drf_value(field, instance, ret)
                continue
            ret[name] = None if value is None else field.to_representation(value)
        return ret


def _same(value):
    """A value that is already what its field writes (a foreign key's id)."""
    return value


def _iso_datetime(field):
    """For a ``DateTimeField`` writing ISO 8601 in a time zone: its ``to_representation`` with
    the zone looked up once per list instead of once per value (``get_current_timezone`` is a
    context-local lookup, a twentieth of an images page's time). None for any other field."""
    if type(field) is not serializers.DateTimeField:
        return None
    output = getattr(field, "format", api_settings.DATETIME_FORMAT)
    zone = field.timezone if hasattr(field, "timezone") else field.default_timezone()
    if output is None or output.lower() != ISO_8601 or zone is None:
        return None

    def convert(value):
        if isinstance(value, datetime.datetime) and value.utcoffset() is not None:
            try:
                text = value.astimezone(zone).isoformat()
            except OverflowError:
                return field.to_representation(value)  # DRF's own error
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        return field.to_representation(value)  # naive, a string, ...: DRF's own path

    return convert


def _foreign_key_column(serializer, field) -> str | None:
    """The column (``project_id``) that holds what a ``PrimaryKeyRelatedField`` on a model's own
    foreign key writes (the related row's id), or None for any other field."""
    if (
        type(field) is not PrimaryKeyRelatedField
        or field.pk_field is not None
        or len(field.source_attrs) != 1
    ):
        return None
    model = getattr(getattr(serializer, "Meta", None), "model", None)
    try:
        model_field = model._meta.get_field(field.source_attrs[0])
    except (AttributeError, FieldDoesNotExist):
        return None
    if not (model_field.many_to_one or model_field.one_to_one) or not model_field.concrete:
        return None
    if model_field.target_field.attname != model_field.related_model._meta.pk.attname:
        return None  # a foreign key to another column than the id
    return model_field.attname


#: Query parameters that page a list rather than filter it.
PAGING_PARAMS = frozenset({"limit", "offset"})


def list_response(
    view,
    queryset,
    serializer_class,
    *,
    filterset_class=None,
    paginate=True,
    prepare=None,
    cache_for=None,
):
    """What a ListAPIView answers, for an ``@action``: filtered, paged (limit/offset).
    ``prepare(rows) -> rows`` runs on the page's rows before they are serialized (related rows
    fetched for the whole page at once). ``cache_for``: the project whose data the list shows:
    the page is kept, for the user who asked, until that data changes
    (``inspection.listcache``)."""
    if cache_for is not None:
        return cached_page(
            view.request,
            cache_for,
            lambda: list_response(
                view,
                queryset,
                serializer_class,
                filterset_class=filterset_class,
                paginate=paginate,
                prepare=prepare,
            ),
        )
    # a filterset builds and validates a form of every filter; a request that only pages (the
    # grid's and the queue's first load) leaves the queryset as it is without one
    if filterset_class is not None and set(view.request.query_params) - PAGING_PARAMS:
        filterset = filterset_class(
            view.request.query_params, queryset=queryset, request=view.request
        )
        if not filterset.is_valid():
            raise serializers.ValidationError(filterset.errors)
        queryset = filterset.qs
    context = view.get_serializer_context()
    page = view.paginate_queryset(queryset) if paginate else None
    if page is not None:
        rows = prepare(list(page)) if prepare is not None else page
        data = serializer_class(rows, many=True, context=context).data
        return view.get_paginated_response(data)
    rows = prepare(list(queryset)) if prepare is not None else queryset
    return Response(serializer_class(rows, many=True, context=context).data)


def stored_file(name: str, content_type: str, *, immutable: bool = True) -> FileResponse:
    """A file from storage (404 while it is not made yet); derived files never change."""
    if not name or not default_storage.exists(name):
        raise Http404("Not generated yet.")
    response = FileResponse(default_storage.open(name, "rb"), content_type=content_type)
    response["Cache-Control"] = (
        "private, max-age=31536000, immutable" if immutable else "private, no-cache"
    )
    return response
