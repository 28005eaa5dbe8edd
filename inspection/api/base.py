"""Small pieces every viewset shares: lists inside ``@action`` s, stored files as responses."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from django.core.exceptions import ObjectDoesNotExist
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.urls import get_script_prefix, reverse
from rest_framework import serializers
from rest_framework.fields import SkipField
from rest_framework.relations import PKOnlyObject, RelatedField
from rest_framework.response import Response


class NumericIds:
    """For viewsets whose ids are numbers: the router only matches digits, so ``/api/images/abc/``
    is a 404 like any unknown id (otherwise the lookup raises a ValueError: a 500)."""

    lookup_value_regex = r"\d+"


_MARKER = 987654321987654321


@functools.lru_cache(maxsize=256)
def _url_parts(name: str, prefix: str) -> tuple[str, str]:
    head, tail = reverse(name, args=[_MARKER]).split(str(_MARKER))
    return head, tail


def url_for(name: str, pk: int) -> str:
    """``reverse(name, args=[pk])`` for a route with one id, without resolving it again for every
    object of a list (an images page of 50 made 350 calls)."""
    head, tail = _url_parts(name, get_script_prefix())
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
                if isinstance(field, serializers.SerializerMethodField):
                    plan.append((field.field_name, getattr(self, field.method_name), None, field))
                elif isinstance(field, RelatedField) or field.source == "*":
                    plan.append((field.field_name, None, None, field))
                else:
                    plan.append((field.field_name, None, tuple(field.source_attrs), field))
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
        for name, method, attrs, field in self._fast_plan():
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
            if callable(value):
                self._drf_value(field, instance, ret)
                continue
            ret[name] = None if value is None else field.to_representation(value)
        return ret


def list_response(
    view, queryset, serializer_class, *, filterset_class=None, paginate=True, prepare=None
):
    """What a ListAPIView answers, for an ``@action``: filtered, paged (limit/offset).
    ``prepare(rows) -> rows`` runs on the page's rows before they are serialized (related rows
    fetched for the whole page at once)."""
    if filterset_class is not None:
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
