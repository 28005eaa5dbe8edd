"""Dataset API: frozen versions per project, compare, export (202 + job), download, import.

Reviewers list, compare and download; project admins freeze, export and import. Writes call the
services in ``annotations.services.dataset_*``.
"""

from __future__ import annotations

import uuid

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from annotations.models import DatasetVersion
from annotations.services import dataset_export, dataset_import, dataset_versions, detectors
from inspection.api.lookups import project_for
from inspection.api.serializers import JobSerializer, ModelVersionSerializer
from inspection.models import Job, Project, Role

from . import serializers as s


class DatasetVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """A project's frozen dataset versions (newest first): list, freeze (POST), one version
    (``?content=1`` adds the snapshot), compare two, export one, import a dataset."""

    serializer_class = s.DatasetVersionSerializer
    lookup_field = "number"
    lookup_value_regex = r"\d+"
    http_method_names = ["get", "post"]

    def project(self, minimum: str = Role.REVIEWER) -> Project:
        return project_for(self.request, self.kwargs["project_pk"], minimum)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return DatasetVersion.objects.none()
        return DatasetVersion.objects.filter(project=self.project()).select_related("created_by")

    @extend_schema(request=s.FreezeSerializer, responses={201: s.DatasetVersionSerializer})
    def create(self, request, project_pk=None):
        project = self.project(Role.ADMIN)
        form = s.FreezeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        version = dataset_versions.dataset_version_freeze(
            user=request.user, project=project, **form.validated_data
        )
        return Response(s.DatasetVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("content", bool, description="include the snapshot")],
        responses=s.DatasetVersionContentSerializer,
    )
    def retrieve(self, request, project_pk=None, number=None):
        version = self.get_object()
        if request.query_params.get("content") in ("1", "true", "yes"):
            return Response(s.DatasetVersionContentSerializer(version).data)
        return Response(s.DatasetVersionSerializer(version).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("old", {"type": "integer", "minimum": 1}, required=True),
            OpenApiParameter("new", {"type": "integer", "minimum": 1}, required=True),
        ],
        responses=dict,
    )
    @action(detail=False)
    def compare(self, request, project_pk=None):
        """What changed between two versions: ``?old=N&new=M`` (version numbers)."""
        project = self.project()
        numbers = {}
        for key in ("old", "new"):
            raw = request.query_params.get(key, "")
            if not raw.isdigit():
                raise serializers.ValidationError({key: f"Give ?{key}= as a version number."})
            numbers[key] = int(raw)
        old = get_object_or_404(DatasetVersion, project=project, number=numbers["old"])
        new = get_object_or_404(DatasetVersion, project=project, number=numbers["new"])
        return Response(
            dataset_versions.dataset_versions_compare(user=request.user, old=old, new=new)
        )

    @extend_schema(
        request={"multipart/form-data": s.ImportSerializer}, responses={202: JobSerializer}
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        url_name="import",
        parser_classes=[MultiPartParser, FormParser, JSONParser],
    )
    def import_(self, request, project_pk=None):
        """POST ``{format: coco|yolo|mvtec, zip}`` (or ``path`` on the server, site admins):
        import into the project (202 + job)."""
        project = self.project(Role.ADMIN)
        form = s.ImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job = dataset_import.dataset_import_enqueue(
            user=request.user,
            project=project,
            fmt=form.validated_data["format"],
            upload=form.validated_data.get("zip"),
            path=form.validated_data.get("path"),
        )
        return Response(
            JobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(methods=["GET"], responses=JobSerializer(many=True))
    @extend_schema(methods=["POST"], request=s.ExportSerializer, responses={202: JobSerializer})
    @action(
        detail=True,
        methods=["get", "post"],
        parser_classes=[JSONParser, FormParser, MultiPartParser],
    )
    def exports(self, request, project_pk=None, number=None):
        """GET: this version's export jobs. POST ``{format, options}``: start an export."""
        if request.method == "GET":
            version = self.get_object()
            jobs = Job.objects.filter(
                project=version.project, kind=dataset_export.JOB_KIND, payload__version=version.id
            ).select_related("project", "created_by")[:50]
            return Response(JobSerializer(jobs, many=True, context={"request": request}).data)
        version = get_object_or_404(DatasetVersion, project=self.project(Role.ADMIN), number=number)
        form = s.ExportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job = dataset_export.dataset_export_enqueue(
            user=request.user,
            version=version,
            fmt=form.validated_data["format"],
            options=form.validated_data["options"],
        )
        return Response(
            JobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(methods=["GET"], parameters=[s.DetectorParamsQuery], responses=dict)
    @extend_schema(
        methods=["POST"], request=s.DetectorTrainSerializer, responses={202: ModelVersionSerializer}
    )
    @action(detail=True, methods=["get", "post"])
    def detector(self, request, project_pk=None, number=None):
        """GET: the parameters proposed for training a detector on this version, why, and how
        long it would take (with query parameters: how long those edits would take, or why they
        are refused). POST ``{params?, activate?}``: start training (202 + the model version;
        project admins)."""
        project = self.project(Role.ADMIN)
        version = get_object_or_404(DatasetVersion, project=project, number=number)
        if request.method == "GET":
            query = s.DetectorParamsQuery(data=request.query_params)
            query.is_valid(raise_exception=True)
            return Response(
                detectors.detector_proposal(
                    user=request.user, version=version, params=query.validated_data
                )
            )
        form = s.DetectorTrainSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        model = detectors.detector_train(
            user=request.user, project=project, version=version, **form.validated_data
        )
        return Response(ModelVersionSerializer(model).data, status=status.HTTP_202_ACCEPTED)


class DatasetExportViewSet(viewsets.GenericViewSet):
    """The zip written by a finished export job (reviewers and up)."""

    queryset = Job.objects.filter(kind=dataset_export.JOB_KIND).select_related("project")
    lookup_field = "id"
    lookup_url_kwarg = "job_id"
    lookup_value_regex = r"[0-9a-f-]{36}"
    serializer_class = JobSerializer

    @extend_schema(responses={(200, "application/zip"): bytes})
    @action(detail=True)
    def download(self, request, job_id=None):
        try:
            uuid.UUID(job_id)
        except ValueError:
            raise Http404("No such export.") from None  # as for any unknown id
        job = get_object_or_404(self.get_queryset(), pk=job_id)
        job = dataset_export.dataset_export_job(user=request.user, job=job)
        name = job.result["file"]
        if not default_storage.exists(name):
            raise Http404("The export file is gone; export the version again.")
        return FileResponse(
            default_storage.open(name, "rb"),
            as_attachment=True,
            filename=job.result.get("download_name", "export.zip"),
            content_type="application/zip",
        )
