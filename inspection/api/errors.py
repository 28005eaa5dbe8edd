"""Errors as JSON: {"error": "<one sentence>", "detail": <field errors or extra>}."""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from inspection.errors import BrokerUnavailable, ConflictError


def _first_message(detail) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            msg = _first_message(value)
            return msg if key in ("non_field_errors", "__all__", "detail") else f"{key}: {msg}"
        return "Invalid request."
    if isinstance(detail, list | tuple):
        return _first_message(detail[0]) if detail else "Invalid request."
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, BrokerUnavailable):
        return Response(
            {"error": str(exc)},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "30"},
        )
    if isinstance(exc, ConflictError):
        # the view says how to show what is stored now (e.g. the label someone else changed)
        serializer = getattr(context.get("view"), "conflict_serializer_class", None)
        current = None
        if exc.current is not None and serializer is not None:
            current = serializer(exc.current).data
        return Response({"error": str(exc), "current": current}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or "You do not have permission to do this.")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(detail, dict) and set(detail) == {"detail"}:
        body = {"error": str(detail["detail"])}
    else:
        body = {"error": _first_message(detail), "detail": detail}
    return Response(
        body,
        status=response.status_code,
        headers=getattr(response, "headers", None) and {k: v for k, v in response.items()},
    )


def json_404(request, exception=None):
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def json_500(request):
    if request.path.startswith("/api/"):
        return JsonResponse(
            {"error": "Server error; the administrators can see the details in the logs."},
            status=500,
        )
    from django.views.defaults import server_error

    return server_error(request)
