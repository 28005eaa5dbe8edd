"""Image uploads over HTTP: files (and zips) to local disk, to the upload service, to a response."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rest_framework import status
from rest_framework.response import Response

from inspection.models import Project
from inspection.services import images as image_services

from . import serializers as s


def upload_response(request, project: Project) -> Response:
    """Store the request's files in ``project``: 201 when any was stored, 400 when every file
    was refused (the first reason in ``error``), 200 when all were duplicates."""
    form = s.UploadSerializer(data=request.data)
    form.is_valid(raise_exception=True)
    incoming = []
    try:
        for f in form.validated_data["files"]:
            incoming.append(image_services.IncomingFile(f.name, _local_path(f)))
        report = image_services.images_upload(
            user=request.user,
            project=project,
            files=incoming,
            is_normal=form.validated_data["is_normal"],
        )
    finally:
        for f in form.validated_data["files"]:
            if getattr(f, "_loupe_tmp", None):
                Path(f._loupe_tmp).unlink(missing_ok=True)
    body = report.to_dict()
    counts = report.counts()
    if counts["stored"]:
        return Response(body, status=status.HTTP_201_CREATED)
    if counts["rejected"] and not counts["duplicate"]:
        first = next(f for f in report.files if f.status == "rejected")
        body["error"] = f"No image was stored. {first.name}: {first.reason}"
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    return Response(body, status=status.HTTP_200_OK)


def _local_path(uploaded) -> Path:
    """Uploaded files on local disk (small ones arrive in memory: spill them)."""
    if hasattr(uploaded, "temporary_file_path"):
        return Path(uploaded.temporary_file_path())
    tmp = tempfile.NamedTemporaryFile(
        delete=False, prefix="loupe-", suffix=Path(uploaded.name).suffix
    )
    for chunk in uploaded.chunks():
        tmp.write(chunk)
    tmp.close()
    uploaded._loupe_tmp = tmp.name
    return Path(tmp.name)
