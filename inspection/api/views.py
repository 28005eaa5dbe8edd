"""API views of the core: projects and their members, images and their files, jobs, anomaly
model versions and inspection runs. Each view authenticates, parses, calls one service or
selector, and shapes the answer. Labels, suggestions, reviews and datasets: annotations.api.
"""

from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Q
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from inspection import selectors
from inspection.filters import JobFilter, StationFilter, StationResultFilter
from inspection.models import (
    Image,
    InspectionRegion,
    InspectionRun,
    Job,
    ModelVersion,
    Project,
    Role,
    Station,
)
from inspection.permissions import is_site_admin, require_role
from inspection.services import accounts
from inspection.services import images as image_services
from inspection.services import inspections as inspection_services
from inspection.services import jobs as job_services
from inspection.services import projects as project_services
from inspection.services import references as reference_services
from inspection.services import regions as region_services
from inspection.services import stations as station_services

from . import serializers as s
from .base import NumericIds, list_response, stored_file, url_for
from .lookups import image_for, project_for


class ProjectViewSet(NumericIds, viewsets.ModelViewSet):
    """Projects you are a member of (site admins: all), with their members, models and runs."""

    serializer_class = s.ProjectSerializer
    http_method_names = ["get", "post", "patch", "delete"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Project.objects.none()
        return (
            selectors.projects_visible_to(self.request.user)
            .annotate(image_count=Count("images"))
            .order_by("name")
        )

    def get_object(self):
        return project_for(self.request, self.kwargs["pk"])

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        settings = {
            k: data.pop(k)
            for k in ("auto_inspect", "inspection", "retrain_after_labels", "reference_rule")
            if k in data
        }
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

    @extend_schema(methods=["GET"], responses=s.MembershipSerializer(many=True))
    @extend_schema(
        methods=["POST"], request=s.MemberWriteSerializer, responses={201: s.MembershipSerializer}
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def members(self, request, pk=None):
        """GET the members of a project; POST {username, role} to add one or change a role."""
        project = self.get_object()
        if request.method == "GET":
            members = project.memberships.select_related("user")
            return Response(s.MembershipSerializer(members, many=True).data)
        data = s.MemberWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = project_services.member_set(
            user=request.user, project=project, **data.validated_data
        )
        return Response(s.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={204: None})
    @action(
        detail=True,
        methods=["delete"],
        url_path=r"members/(?P<username>[^/]+)",
        url_name="member",
    )
    def member(self, request, pk=None, username=None):
        """Remove a member (project admins; the last admin stays)."""
        project_services.member_remove(
            user=request.user, project=self.get_object(), username=username
        )
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: s.JobSerializer, 200: None})
    @action(
        detail=True,
        methods=["post"],
        url_path="images/rebuild-pyramids",
        url_name="rebuild-pyramids",
    )
    def rebuild_pyramids(self, request, pk=None):
        """Rebuild the zoomable views that are missing (a cancelled, failed or lost pyramid job)."""
        job = image_services.images_rebuild_derivatives(
            user=request.user, project=self.get_object()
        )
        if job is None:
            return Response({"job": None, "message": "Every image has its zoomable view."})
        return Response(
            s.JobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(methods=["GET"], responses=s.ModelVersionSerializer(many=True))
    @extend_schema(
        methods=["POST"], request=s.TrainSerializer, responses={202: s.ModelVersionSerializer}
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def models(self, request, pk=None):
        """GET the project's model versions (anomaly models, detectors, change detectors); POST
        to train a new anomaly model or (``kind: change``) calibrate a change detector (202 with
        the job; detectors train from a dataset version: ``.../datasets/{n}/detector/``)."""
        project = self.get_object()
        if request.method == "GET":
            versions = ModelVersion.objects.filter(project=project).select_related("created_by")
            return list_response(self, versions, s.ModelVersionSerializer, paginate=False)
        data = s.TrainSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        options = dict(data.validated_data)
        if options.pop("kind") == ModelVersion.Kind.CHANGE:
            options.pop("architecture")
            version = inspection_services.change_model_calibrate(
                user=request.user, project=project, **options
            )
        else:
            version = inspection_services.model_version_train(
                user=request.user, project=project, **options
            )
        return Response(s.ModelVersionSerializer(version).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(methods=["GET"], responses=s.JobSerializer)
    @extend_schema(methods=["POST"], request=s.CompareSerializer, responses={202: s.JobSerializer})
    @action(
        detail=True,
        methods=["get", "post"],
        url_path="model-comparisons",
        url_name="model-comparisons",
        pagination_class=None,
    )
    def model_comparisons(self, request, pk=None):
        """POST to compare anomaly models on the project's own reviewed images (202 with the
        job; one new version per architecture and setting, none made active); GET the newest comparison's
        job, whose ``result.rows`` is the table (404 before the first)."""
        project = self.get_object()
        if request.method == "GET":
            job = inspection_services.latest_comparison(project)
            if job is None:
                raise Http404("No model comparison in this project yet.")
        else:
            data = s.CompareSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            job = inspection_services.model_comparison_start(
                user=request.user, project=project, **data.validated_data
            )
        code = status.HTTP_200_OK if request.method == "GET" else status.HTTP_202_ACCEPTED
        return Response(s.JobSerializer(job, context={"request": request}).data, status=code)

    @extend_schema(methods=["GET"], responses=s.RunSerializer(many=True))
    @extend_schema(methods=["POST"], request=s.RunStartSerializer, responses={202: s.RunSerializer})
    @action(detail=True, methods=["get", "post"])
    def runs(self, request, pk=None):
        """GET the project's inspection runs; POST to start one (202 with the run and its job)."""
        project = self.get_object()
        if request.method == "GET":
            runs = InspectionRun.objects.filter(project=project).select_related("created_by")
            return list_response(self, runs, s.RunSerializer)
        data = s.RunStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = None
        if data.validated_data.get("model_version"):
            version = get_object_or_404(
                ModelVersion, pk=data.validated_data["model_version"], project=project
            )
        run = inspection_services.inspection_run_start(
            user=request.user,
            project=project,
            scope=data.validated_data["scope"],
            image_ids=data.validated_data.get("image_ids"),
            model_version=version,
            kind=data.validated_data["kind"],
        )
        body = s.RunSerializer(run).data
        body["job_detail"] = s.JobSerializer(run.job, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(methods=["GET"], responses=s.RegionListSerializer)
    @extend_schema(
        methods=["POST"], request=s.RegionInSerializer, responses={201: s.RegionSerializer}
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def regions(self, request, pk=None):
        """GET the project's regions of interest, the image they are drawn on, the project's
        reference images to draw on, and whether the area outside them is inspected; POST a
        new region (project admins)."""
        project = self.get_object()
        if request.method == "POST":
            data = s.RegionInSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            options = dict(data.validated_data)
            reference = get_object_or_404(Image, pk=options.pop("reference"), project=project)
            region = region_services.region_create(
                user=request.user, project=project, reference=reference, **options
            )
            return Response(s.RegionSerializer(region).data, status=status.HTTP_201_CREATED)
        regions = list(
            region_services.regions_of(project)
            .select_related("reference")
            .annotate(
                # waiting in the review queue (the app below annotations names the status)
                suggestion_count=Count("suggestions", filter=Q(suggestions__status="pending"))
            )
        )
        context = {"models": s.regions_models(regions)}
        drawn_on = regions[0].reference if regions else None
        references = Image.objects.filter(project=project, is_reference=True).order_by("id")
        return Response(
            {
                "reference": _reference_card(drawn_on) if drawn_on else None,
                "outside": project_services.inspection_settings(project)["outside_regions"],
                "references": [_reference_card(i) for i in references[:200]],
                "results": s.RegionSerializer(regions, many=True, context=context).data,
            }
        )


def _reference_card(image: Image) -> dict:
    return {
        "id": image.pk,
        "name": image.original_name,
        "width": image.width,
        "height": image.height,
        "dzi": url_for("api-image-dzi", image.pk) if image.pyramid_path else None,
    }


class RegionViewSet(
    NumericIds,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """One region of interest: read it, change it, delete it, train its own model."""

    serializer_class = s.RegionSerializer
    queryset = InspectionRegion.objects.select_related("project", "reference", "model_version")
    http_method_names = ["get", "patch", "post", "delete"]

    def get_object(self):
        region = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        require_role(self.request.user, region.project, Role.ANNOTATOR)
        return region

    @extend_schema(request=s.RegionPatchSerializer, responses=s.RegionSerializer)
    def partial_update(self, request, pk=None):
        region = self.get_object()
        data = s.RegionPatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        if changes.get("model_version") is not None:
            changes["model_version"] = get_object_or_404(
                ModelVersion, pk=changes["model_version"], project=region.project
            )
        region = region_services.region_update(user=request.user, region=region, **changes)
        return Response(s.RegionSerializer(region).data)

    def perform_destroy(self, instance):
        region_services.region_delete(user=self.request.user, region=instance)

    @extend_schema(request=s.RegionTrainSerializer, responses={202: s.ModelVersionSerializer})
    @action(detail=True, methods=["post"])
    def train(self, request, pk=None):
        """Train a model on this region of every normal image (202 with the model version; it
        becomes the region's model when ready)."""
        data = s.RegionTrainSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = region_services.region_model_train(
            user=request.user, region=self.get_object(), **data.validated_data
        )
        body = s.ModelVersionSerializer(version).data
        body["job_detail"] = s.JobSerializer(version.job, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class ImageViewSet(
    NumericIds,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """One image: read it, set its split, delete it; its original, thumbnail, Deep Zoom pyramid
    and latest heatmap."""

    serializer_class = s.ImageSerializer
    http_method_names = ["get", "post", "patch", "delete"]
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

    @extend_schema(responses={(200, "image/jpeg"): bytes})
    @action(detail=True)
    def thumbnail(self, request, pk=None):
        return stored_file(image_for(request, pk).thumbnail_path, "image/jpeg")

    @extend_schema(responses={(200, "image/*"): bytes})  # as uploaded: JPEG, PNG, TIFF...
    @action(detail=True)
    def original(self, request, pk=None):
        image = image_for(request, pk)
        if not default_storage.exists(image.file.name):
            raise Http404("The original file is missing.")
        return FileResponse(
            default_storage.open(image.file.name, "rb"),
            as_attachment=True,
            filename=image.original_name,
            content_type=f"image/{image.format}",
        )

    # The three below are files whose names are their URLs (OpenSeadragon finds the tiles of
    # .../image.dzi at .../image_files/<level>/<col>_<row>.jpg): bound in urls.py without the
    # router's trailing slash.
    @extend_schema(responses={(200, "application/xml"): str})
    def dzi(self, request, pk=None):
        """The Deep Zoom descriptor."""
        return stored_file(image_for(request, pk).pyramid_path, "application/xml")

    @extend_schema(responses={(200, "image/jpeg"): bytes})
    def tile(self, request, pk=None, level=None, col=None, row=None):
        image = image_for(request, pk)
        if not image.pyramid_path:
            raise Http404("Not generated yet.")
        base = image.pyramid_path[: -len(".dzi")]
        return stored_file(f"{base}_files/{level}/{col}_{row}.jpg", "image/jpeg")

    @extend_schema(responses={(200, "image/png"): bytes})
    def heatmap(self, request, pk=None):
        """The latest anomaly heatmap of the image (8-bit grey PNG), 404 when there is none."""
        heatmap = image_for(request, pk).heatmaps.first()
        if heatmap is None:
            raise Http404("This image has no heatmap yet.")
        return stored_file(heatmap.path, "image/png")

    @extend_schema(request=s.ReferenceSerializer, responses=s.ImageSerializer)
    @action(detail=True, methods=["post"])
    def reference(self, request, pk=None):
        """Compare the image with a reference image of its project (``{"reference": id}``) or
        with nothing (``{"reference": null}``); the alignment is then redone in the background
        (``alignment.status``: pending, then ok or failed with its reason)."""
        image = self.get_object()
        data = s.ReferenceSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ref_id = data.validated_data["reference"]
        reference = None
        if ref_id is not None:
            reference = Image.objects.filter(pk=ref_id, project_id=image.project_id).first()
            if reference is None:
                raise serializers.ValidationError(
                    {"reference": f"No image {ref_id} in this project."}
                )
        image = reference_services.image_set_reference(
            user=request.user, image=image, reference=reference
        )
        return Response(s.ImageSerializer(image, context=self.get_serializer_context()).data)

    @extend_schema(responses={(200, "application/xml"): str})
    def reference_dzi(self, request, pk=None):
        """The Deep Zoom descriptor of the reference, aligned onto this image."""
        return stored_file(image_for(request, pk).reference_pyramid_path, "application/xml")

    @extend_schema(responses={(200, "image/jpeg"): bytes})
    def reference_tile(self, request, pk=None, level=None, col=None, row=None):
        image = image_for(request, pk)
        if not image.reference_pyramid_path:
            raise Http404("The reference is not aligned (yet).")
        base = image.reference_pyramid_path[: -len(".dzi")]
        return stored_file(f"{base}_files/{level}/{col}_{row}.jpg", "image/jpeg")

    @extend_schema(responses={(200, "image/png"): bytes})
    def difference(self, request, pk=None):
        """The aligned difference to the reference (8-bit grey PNG, display size)."""
        return stored_file(image_for(request, pk).difference_path, "image/png")


class JobViewSet(viewsets.ReadOnlyModelViewSet):
    """Background jobs you can see: status, progress, timings, errors; POST .../cancel/."""

    serializer_class = s.JobSerializer
    filterset_class = JobFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Job.objects.none()
        return selectors.jobs_visible_to(self.request.user).select_related("project", "created_by")

    @extend_schema(responses=s.QueueHealthSerializer)
    @action(detail=False, pagination_class=None, filterset_class=None)
    def health(self, request):
        """Whether jobs can run now: the broker (Redis) answers, the live workers and their
        queues, the queued jobs per queue, and the problems in words."""
        from inspection.services.queue_health import queue_health

        return Response(queue_health().to_dict())

    @extend_schema(request=None, responses=s.JobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = job_services.job_cancel(user=request.user, job=self.get_object())
        return Response(s.JobSerializer(job, context={"request": request}).data)


class ModelVersionViewSet(
    NumericIds, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """One anomaly model version: read it, make it the active one, delete it (labels stay)."""

    serializer_class = s.ModelVersionSerializer
    queryset = ModelVersion.objects.select_related("project", "created_by")

    def get_object(self):
        version = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        require_role(self.request.user, version.project, Role.ANNOTATOR)
        return version

    def perform_destroy(self, instance):
        inspection_services.model_version_delete(user=self.request.user, model_version=instance)

    @extend_schema(request=None, responses=s.ModelVersionSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        version = inspection_services.model_version_activate(
            user=request.user, model_version=self.get_object()
        )
        return Response(s.ModelVersionSerializer(version).data)


class UserViewSet(NumericIds, viewsets.GenericViewSet):
    """Accounts (site admins): list, create (answers a one-time set-password link), deactivate
    or activate, give or take the site-admin role, a new set-password link. ``names`` is the
    member lookup for project admins. Rules: inspection/services/accounts.py."""

    serializer_class = s.UserSerializer
    pagination_class = None

    def get_queryset(self):
        return get_user_model().objects.none()  # every answer comes from the service

    def _one(self, pk):
        users = accounts.users_overview(by=self.request.user, pk=int(pk))
        if not users:
            raise Http404("No such user.")
        return users[0]

    def list(self, request):
        return Response(s.UserSerializer(accounts.users_overview(by=request.user), many=True).data)

    def retrieve(self, request, pk=None):
        return Response(s.UserSerializer(self._one(pk)).data)

    @extend_schema(request=s.UserSerializer, responses={201: s.UserCreatedSerializer})
    def create(self, request):
        data = s.UserSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user, path = accounts.user_create(by=request.user, **data.validated_data)
        body = s.UserSerializer(self._one(user.pk)).data
        body["set_password_link"] = request.build_absolute_uri(path)
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.UserUpdateSerializer, responses=s.UserSerializer)
    def partial_update(self, request, pk=None):
        target = self._one(pk)
        data = s.UserUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        accounts.user_update(by=request.user, user=target, **data.validated_data)
        return Response(s.UserSerializer(self._one(pk)).data)

    @extend_schema(request=None, responses=s.PasswordLinkSerializer)
    @action(detail=True, methods=["post"], url_path="password-link")
    def password_link(self, request, pk=None):
        path = accounts.user_password_link(by=request.user, user=self._one(pk))
        return Response({"set_password_link": request.build_absolute_uri(path)})

    @extend_schema(
        parameters=[OpenApiParameter("search", str, description="part of the user name")],
        responses=s.UserNamesSerializer,
    )
    @action(detail=False, methods=["get"])
    def names(self, request):
        """Active user names containing ``search`` (20 at most), for adding project members."""
        found = accounts.users_search(by=request.user, query=request.query_params.get("search"))
        return Response({"usernames": found})


class TokenView(ObtainAuthToken):
    """DRF's token endpoint ({username, password} -> {token}), with failed attempts counted and
    refused with 429 once too many (inspection/throttling.py)."""

    def post(self, request, *args, **kwargs):
        from inspection import throttling

        if not hasattr(request.data, "get"):  # a JSON list or number, not {username, password}
            raise serializers.ValidationError(
                {"non_field_errors": ["Send an object with username and password."]}
            )
        username = str(request.data.get("username", ""))[:150]
        wait = throttling.retry_after(request, username)
        if wait:
            return Response(
                {"error": f"Too many failed attempts; try again in {wait} s."},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(wait)},
            )
        try:
            response = super().post(request, *args, **kwargs)
        except serializers.ValidationError:
            throttling.failed(request, username)
            raise
        throttling.succeeded(request, username)
        return response


class MeView(APIView):
    """Who am I (handy for scripts checking their token)."""

    @extend_schema(responses=dict)
    def get(self, request):
        return Response(
            {"username": request.user.username, "site_admin": is_site_admin(request.user)}
        )


class StationViewSet(NumericIds, viewsets.ModelViewSet):
    """Line stations (docs/stations.md): settings (project admins), the live state the station
    page polls, the results as JSON pages or CSV for a time range (for a PLC gateway or an MES),
    and the latest frame. Members of the project read; the station process writes."""

    filterset_class = StationFilter
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Station.objects.none()
        return Station.objects.filter(
            project__in=selectors.projects_visible_to(self.request.user)
        ).select_related("project")

    def get_serializer_class(self):
        if self.action == "partial_update":
            return s.StationUpdateSerializer
        return s.StationSerializer

    def get_object(self):
        station = get_object_or_404(Station.objects.select_related("project"), pk=self.kwargs["pk"])
        require_role(self.request.user, station.project, Role.ANNOTATOR)
        return station

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        project = data.pop("project")
        require_role(self.request.user, project, Role.ANNOTATOR)  # a 404 for non-members
        serializer.instance = station_services.station_create(
            user=self.request.user,
            project=project,
            name=data.pop("name"),
            source=data.pop("source"),
            **data,
        )

    def perform_update(self, serializer):
        serializer.instance = station_services.station_update(
            user=self.request.user, station=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        station_services.station_delete(user=self.request.user, station=instance)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "minutes",
                int,
                description="per-minute counts over the last N minutes (0-1440, default 60; "
                "0: none, for the every-second poll)",
            )
        ],
        responses=dict,
    )
    @action(detail=True, pagination_class=None, filterset_class=None)
    def live(self, request, pk=None):
        raw = request.query_params.get("minutes", "60")
        if not raw.isdigit() or int(raw) > 1440:
            raise serializers.ValidationError({"minutes": "A whole number from 0 to 1440."})
        return Response(station_services.station_live(self.get_object(), minutes=int(raw)))

    @extend_schema(
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATETIME, description="included"),
            OpenApiParameter("end", OpenApiTypes.DATETIME, description="not included"),
            OpenApiParameter(
                "verdict", str, many=True, enum=["ok", "ng", "unsure", "failed"], explode=True
            ),
        ],
        responses=s.StationResultSerializer(many=True),
    )
    @action(detail=True, filterset_class=None)
    def results(self, request, pk=None):
        station = self.get_object()
        return list_response(
            self,
            station.results.all(),
            s.StationResultSerializer,
            filterset_class=StationResultFilter,
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATETIME, description="included"),
            OpenApiParameter("end", OpenApiTypes.DATETIME, description="not included"),
        ],
        responses={(200, "text/csv"): str},
    )
    def results_csv(self, request, pk=None):
        station = self.get_object()
        bounds = StationResultFilter(request.query_params, queryset=station.results.all())
        if not bounds.is_valid():
            raise serializers.ValidationError(bounds.errors)
        data = bounds.form.cleaned_data
        lines = station_services.station_results_csv(
            station, start=data.get("start"), end=data.get("end")
        )
        response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{station.name}-results.csv"'
        return response

    @extend_schema(responses={(200, "image/jpeg"): bytes})
    def latest_frame(self, request, pk=None):
        return stored_file(self.get_object().latest_frame, "image/jpeg", immutable=False)
