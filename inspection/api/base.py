"""Small pieces every viewset shares: lists inside ``@action`` s, stored files as responses."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from rest_framework import serializers
from rest_framework.response import Response


class NumericIds:
    """For viewsets whose ids are numbers: the router only matches digits, so ``/api/images/abc/``
    is a 404 like any unknown id (otherwise the lookup raises a ValueError: a 500)."""

    lookup_value_regex = r"\d+"


def list_response(view, queryset, serializer_class, *, filterset_class=None, paginate=True):
    """What a ListAPIView answers, for an ``@action``: filtered, paged (limit/offset)."""
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
        data = serializer_class(page, many=True, context=context).data
        return view.get_paginated_response(data)
    return Response(serializer_class(queryset, many=True, context=context).data)


def stored_file(name: str, content_type: str, *, immutable: bool = True) -> FileResponse:
    """A file from storage (404 while it is not made yet); derived files never change."""
    if not name or not default_storage.exists(name):
        raise Http404("Not generated yet.")
    response = FileResponse(default_storage.open(name, "rb"), content_type=content_type)
    response["Cache-Control"] = (
        "private, max-age=31536000, immutable" if immutable else "private, no-cache"
    )
    return response
