"""API views: authenticate, parse, call one service or selector, shape the answer."""

import uuid
from pathlib import Path

from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import services as category_services
from annotations.models import DefectCategory
from inspection import selectors
from inspection.filters import ImageFilter, JobFilter
from inspection.models import Image, Role
from inspection.permissions import is_site_admin, require_role
from inspection.services import images as image_services
from inspection.services import jobs as job_services
from inspection.services import projects as project_services

from . import serializers as s
from .lookups import image_for, project_for


class ProjectViewSet(viewsets.ModelViewSet):
    """Projects you are a member of (site admins: all)."""

    serializer_class = s.ProjectSerializer
    http_method_names = ["get", "post", "patch", "delete"]

    def get_queryset(self):
        return (
            selectors.projects_visible_to(self.request.user)
            .annotate(image_count=Count("images"))
            .order_by("name")
        )

    def get_object(self):
        return project_for(self.request, self.kwargs["pk"])

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        settings = {k: data.pop(k) for k in ("auto_inspect", "inspection") if k in data}
        with transaction.atomic():  # refused settings leave no project behind
            project = project_services.project_create(user=self.request.user, **data)
            if settings:
                project = project_services.project_update(
                    user=self.request.user, project=project, **settings
                )
        serializer.instance = project

    def perform_update(self, serializer):
        serializer.instance = project_services.project_update(
            user=self.request.user, project=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        project_services.project_delete(user=self.request.user, project=instance)


class MemberListView(APIView):
    """GET the members of a project; POST {username, role} to add one or change a role."""

    @extend_schema(responses=s.MembershipSerializer(many=True))
    def get(self, request, pk):
        project = project_for(request, pk)
        members = project.memberships.select_related("user")
        return Response(s.MembershipSerializer(members, many=True).data)

    @extend_schema(request=s.MemberWriteSerializer, responses=s.MembershipSerializer)
    def post(self, request, pk):
        project = project_for(request, pk)
        data = s.MemberWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = project_services.member_set(
            user=request.user, project=project, **data.validated_data
        )
        return Response(s.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request, pk, username):
        project = project_for(request, pk)
        project_services.member_remove(user=request.user, project=project, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CategoryViewSet(viewsets.ModelViewSet):
    """Defect categories of a project."""

    serializer_class = s.CategorySerializer
    pagination_class = None
    http_method_names = ["get", "post", "patch", "delete"]

    def get_project(self):
        return project_for(self.request, self.kwargs["project_pk"])

    def get_queryset(self):
        return DefectCategory.objects.filter(project=self.get_project())

    def perform_create(self, serializer):
        serializer.instance = category_services.category_create(
            user=self.request.user, project=self.get_project(), **serializer.validated_data
        )

    def perform_update(self, serializer):
        serializer.instance = category_services.category_update(
            user=self.request.user, category=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        category_services.category_delete(user=self.request.user, category=instance)


class ProjectImagesView(generics.ListAPIView):
    """GET: the project's images (filters: state, split, category, name). POST: upload files or zips."""

    serializer_class = s.ImageSerializer
    filterset_class = ImageFilter
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        project = project_for(self.request, self.kwargs["pk"])
        return (
            Image.objects.filter(project=project)
            .select_related("uploaded_by")
            .prefetch_related("heatmaps")
            .order_by("id")
        )

    @extend_schema(request={"multipart/form-data": s.UploadSerializer}, responses={201: dict})
    def post(self, request, pk):
        project = project_for(request, pk)
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
    import tempfile

    tmp = tempfile.NamedTemporaryFile(
        delete=False, prefix="loupe-", suffix=Path(uploaded.name).suffix
    )
    for chunk in uploaded.chunks():
        tmp.write(chunk)
    tmp.close()
    uploaded._loupe_tmp = tmp.name
    return Path(tmp.name)


class RebuildPyramidsView(APIView):
    """Rebuild the zoomable views that are missing (a cancelled, failed or lost pyramid job)."""

    @extend_schema(request=None, responses={202: s.JobSerializer, 200: None})
    def post(self, request, pk):
        project = project_for(request, pk)
        job = image_services.images_rebuild_derivatives(user=request.user, project=project)
        if job is None:
            return Response({"job": None, "message": "Every image has its zoomable view."})
        return Response(
            s.JobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )


class MvtecImportView(APIView):
    """Import an MVTec AD folder: upload it as a zip, or (site admins) name a server folder."""

    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(request=s.MvtecImportSerializer, responses={202: s.JobSerializer})
    def post(self, request, pk):
        project = project_for(request, pk, Role.ADMIN)
        form = s.MvtecImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        if form.validated_data.get("path"):
            path = selectors.import_path_allowed(request.user, form.validated_data["path"])
            payload = {"path": str(path)}
        else:
            upload = form.validated_data["zip"]
            # through storage, so that a worker on another machine can read it
            name = default_storage.save(f"projects/{project.pk}/imports/{uuid.uuid4()}.zip", upload)
            payload = {"zip": name, "name": upload.name}
        job = job_services.job_enqueue(
            kind="import_mvtec", user=request.user, project=project, payload=payload
        )
        return Response(
            s.JobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )


class ImageViewSet(
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """One image: read it, mark it normal / set its split, delete it."""

    serializer_class = s.ImageSerializer
    http_method_names = ["get", "patch", "delete"]
    queryset = Image.objects.select_related("project", "uploaded_by")

    def get_object(self):
        image = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        require_role(self.request.user, image.project, Role.ANNOTATOR)
        return image

    def perform_update(self, serializer):
        serializer.instance = image_services.image_update(
            user=self.request.user, image=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        image_services.image_delete(user=self.request.user, image=instance)


def _stored_file(name: str, content_type: str, *, immutable: bool = True) -> FileResponse:
    if not name or not default_storage.exists(name):
        raise Http404("Not generated yet.")
    response = FileResponse(default_storage.open(name, "rb"), content_type=content_type)
    response["Cache-Control"] = (
        "private, max-age=31536000, immutable" if immutable else "private, no-cache"
    )
    return response


class ImageThumbnailView(APIView):
    @extend_schema(responses={(200, "image/jpeg"): bytes})
    def get(self, request, pk):
        return _stored_file(image_for(request, pk).thumbnail_path, "image/jpeg")


class ImageOriginalView(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, pk):
        image = image_for(request, pk)
        if not default_storage.exists(image.file.name):
            raise Http404("The original file is missing.")
        return FileResponse(
            default_storage.open(image.file.name, "rb"),
            as_attachment=True,
            filename=image.original_name,
            content_type=f"image/{image.format}",
        )


class ImageDziView(APIView):
    """The Deep Zoom descriptor; tiles live at .../image_files/<level>/<col>_<row>.jpg."""

    @extend_schema(responses={(200, "application/xml"): str})
    def get(self, request, pk):
        return _stored_file(image_for(request, pk).pyramid_path, "application/xml")


class ImageTileView(APIView):
    @extend_schema(responses={(200, "image/jpeg"): bytes})
    def get(self, request, pk, level, col, row):
        image = image_for(request, pk)
        if not image.pyramid_path:
            raise Http404("Not generated yet.")
        base = image.pyramid_path[: -len(".dzi")]
        return _stored_file(f"{base}_files/{level}/{col}_{row}.jpg", "image/jpeg")


class ImageHeatmapView(APIView):
    """The latest anomaly heatmap of the image (8-bit grey PNG), 404 when there is none."""

    @extend_schema(responses={(200, "image/png"): bytes})
    def get(self, request, pk):
        heatmap = image_for(request, pk).heatmaps.first()
        if heatmap is None:
            raise Http404("This image has no heatmap yet.")
        return _stored_file(heatmap.path, "image/png")


class ImageNeighborsView(APIView):
    """Previous and next image in the project's list under the same filters as the grid."""

    @extend_schema(responses=dict)
    def get(self, request, pk):
        image = image_for(request, pk)
        return Response(selectors.image_neighbors(image=image, params=request.query_params))


class JobViewSet(viewsets.ReadOnlyModelViewSet):
    """Background jobs you can see: status, progress, timings, errors; POST .../cancel/."""

    serializer_class = s.JobSerializer
    filterset_class = JobFilter

    def get_queryset(self):
        job_services.jobs_requeue_stale_throttled()
        return selectors.jobs_visible_to(self.request.user).select_related("project", "created_by")

    @extend_schema(request=None, responses=s.JobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = job_services.job_cancel(user=request.user, job=self.get_object())
        return Response(s.JobSerializer(job, context={"request": request}).data)


class MeView(APIView):
    """Who am I (handy for scripts checking their token)."""

    @extend_schema(responses=dict)
    def get(self, request):
        return Response(
            {"username": request.user.username, "site_admin": is_site_admin(request.user)}
        )
