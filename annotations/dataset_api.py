"""Dataset API: frozen versions per project, compare, export (202 + job), download, import.

Reviewers list, compare and download; project admins freeze, export and import. Writes call the
services in ``annotations.datasets``.
"""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import datasets as services
from annotations.models import DatasetVersion
from inspection.api.lookups import project_for
from inspection.api.serializers import JobSerializer
from inspection.models import Job, Project, Role


def _project(request, pk, minimum=Role.REVIEWER) -> Project:
    return project_for(request, pk, minimum)  # dataset pages start at reviewer


def _version(request, pk, number, minimum=Role.REVIEWER) -> DatasetVersion:
    project = _project(request, pk, minimum)
    return get_object_or_404(DatasetVersion, project=project, number=number)


class DatasetVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", default=None, read_only=True)

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "project",
            "number",
            "note",
            "options",
            "content_hash",
            "counts",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class DatasetVersionContentSerializer(DatasetVersionSerializer):
    class Meta(DatasetVersionSerializer.Meta):
        fields = [*DatasetVersionSerializer.Meta.fields, "content"]
        read_only_fields = fields


class FreezeSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
    include_pending = serializers.BooleanField(required=False, default=False)
    include_ground_truth = serializers.BooleanField(required=False, default=False)
    seed = serializers.IntegerField(required=False, default=0)
    ratios = serializers.DictField(child=serializers.FloatField(), required=False, default=None)


class ExportSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(services.EXPORT_FORMATS))
    options = serializers.DictField(required=False, default=dict)


class ImportSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(services.IMPORT_FORMATS))
    zip = serializers.FileField(help_text="COCO: JSON + images; YOLO: data.yaml, images/, labels/.")


class DatasetVersionListView(generics.ListAPIView):
    """GET: the project's frozen dataset versions, newest first. POST: freeze a new one."""

    serializer_class = DatasetVersionSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return DatasetVersion.objects.none()
        project = _project(self.request, self.kwargs["pk"])
        return DatasetVersion.objects.filter(project=project).select_related("created_by")

    @extend_schema(request=FreezeSerializer, responses={201: DatasetVersionSerializer})
    def post(self, request, pk):
        project = _project(request, pk, Role.ADMIN)
        form = FreezeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        version = services.dataset_version_freeze(
            user=request.user, project=project, **form.validated_data
        )
        return Response(DatasetVersionSerializer(version).data, status=status.HTTP_201_CREATED)


class DatasetVersionDetailView(APIView):
    """One version; ``?content=1`` adds the frozen images, categories and labels."""

    @extend_schema(
        parameters=[OpenApiParameter("content", bool, description="include the snapshot")],
        responses=DatasetVersionContentSerializer,
    )
    def get(self, request, pk, number):
        version = _version(request, pk, number)
        if request.query_params.get("content") in ("1", "true", "yes"):
            return Response(DatasetVersionContentSerializer(version).data)
        return Response(DatasetVersionSerializer(version).data)


class DatasetCompareView(APIView):
    """What changed between two versions: ``?old=N&new=M`` (version numbers)."""

    @extend_schema(
        parameters=[OpenApiParameter("old", int, required=True), OpenApiParameter("new", int)],
        responses=dict,
    )
    def get(self, request, pk):
        project = _project(request, pk)
        numbers = {}
        for key in ("old", "new"):
            raw = request.query_params.get(key, "")
            if not raw.isdigit():
                raise serializers.ValidationError({key: f"Give ?{key}= as a version number."})
            numbers[key] = int(raw)
        old = get_object_or_404(DatasetVersion, project=project, number=numbers["old"])
        new = get_object_or_404(DatasetVersion, project=project, number=numbers["new"])
        return Response(services.dataset_versions_compare(user=request.user, old=old, new=new))


class DatasetExportView(APIView):
    """GET: this version's export jobs. POST ``{format, options}``: start an export (202 + job)."""

    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(responses=JobSerializer(many=True))
    def get(self, request, pk, number):
        version = _version(request, pk, number)
        jobs = Job.objects.filter(
            project=version.project, kind="export", payload__version=version.id
        ).select_related("project", "created_by")[:50]
        return Response(JobSerializer(jobs, many=True, context={"request": request}).data)

    @extend_schema(request=ExportSerializer, responses={202: JobSerializer})
    def post(self, request, pk, number):
        version = _version(request, pk, number, Role.ADMIN)
        form = ExportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job = services.dataset_export_enqueue(
            user=request.user,
            version=version,
            fmt=form.validated_data["format"],
            options=form.validated_data["options"],
        )
        return Response(
            JobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )


class DatasetExportDownloadView(APIView):
    """The zip written by a finished export job (reviewers and up)."""

    @extend_schema(responses={(200, "application/zip"): bytes})
    def get(self, request, job_id):
        job = get_object_or_404(Job.objects.select_related("project"), pk=job_id, kind="export")
        job = services.dataset_export_job(user=request.user, job=job)
        name = job.result["file"]
        if not default_storage.exists(name):
            raise Http404("The export file is gone; export the version again.")
        return FileResponse(
            default_storage.open(name, "rb"),
            as_attachment=True,
            filename=job.result.get("download_name", "export.zip"),
            content_type="application/zip",
        )


class DatasetImportView(APIView):
    """POST multipart ``{format: coco|yolo|mvtec, zip}``: import into the project (202 + job)."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": ImportSerializer}, responses={202: JobSerializer}
    )
    def post(self, request, pk):
        project = _project(request, pk, Role.ADMIN)
        form = ImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job = services.dataset_import_enqueue(
            user=request.user,
            project=project,
            fmt=form.validated_data["format"],
            upload=form.validated_data["zip"],
        )
        return Response(
            JobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )
