"""API for anomaly model versions and inspection runs."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.figures import run_figures
from inspection.models import InspectionRun, ModelVersion, Role
from inspection.permissions import require_role
from inspection.services import inspections as services

from .lookups import project_for
from .serializers import JobSerializer


class ModelVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", default=None, read_only=True)
    job = serializers.UUIDField(source="job_id", read_only=True)
    image_count = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "project",
            "number",
            "kind",
            "architecture",
            "params",
            "image_count",
            "metrics",
            "status",
            "is_active",
            "job",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_image_count(self, obj) -> int:
        return len(obj.image_ids)


class TrainSerializer(serializers.Serializer):
    architecture = serializers.ChoiceField(choices=services.ARCHITECTURES, default="padim")
    params = serializers.DictField(required=False, default=dict)
    activate = serializers.BooleanField(default=True)


class RunSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", default=None, read_only=True)
    job = serializers.UUIDField(source="job_id", read_only=True)
    image_count = serializers.SerializerMethodField()

    class Meta:
        model = InspectionRun
        fields = [
            "id",
            "project",
            "model_version",
            "scope",
            "image_count",
            "params",
            "job",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_image_count(self, obj) -> int:
        return len(obj.image_ids)


class RunDetailSerializer(RunSerializer):
    """A run with its per-image outcomes (the list leaves them out: one entry per image)."""

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "results"]
        read_only_fields = fields


class RunStartSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=InspectionRun.Scope.choices, default=InspectionRun.Scope.NEW
    )
    image_ids = serializers.ListField(child=serializers.IntegerField(), required=False)
    model_version = serializers.IntegerField(required=False)


class ProjectModelsView(generics.ListAPIView):
    """GET the project's anomaly model versions; POST to train a new one (202 with the job)."""

    serializer_class = ModelVersionSerializer
    pagination_class = None

    def get_queryset(self):
        return ModelVersion.objects.filter(
            project=project_for(self.request, self.kwargs["pk"])
        ).select_related("created_by")

    @extend_schema(request=TrainSerializer, responses={202: ModelVersionSerializer})
    def post(self, request, pk):
        project = project_for(request, pk)
        data = TrainSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.model_version_train(
            user=request.user, project=project, **data.validated_data
        )
        return Response(ModelVersionSerializer(version).data, status=status.HTTP_202_ACCEPTED)


class ModelVersionView(APIView):
    def _get(self, request, pk) -> ModelVersion:
        version = get_object_or_404(ModelVersion.objects.select_related("project"), pk=pk)
        require_role(request.user, version.project, Role.ANNOTATOR)
        return version

    @extend_schema(responses=ModelVersionSerializer)
    def get(self, request, pk):
        return Response(ModelVersionSerializer(self._get(request, pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, pk):
        services.model_version_delete(user=request.user, model_version=self._get(request, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionActivateView(ModelVersionView):
    @extend_schema(request=None, responses=ModelVersionSerializer)
    def post(self, request, pk):
        version = services.model_version_activate(
            user=request.user, model_version=self._get(request, pk)
        )
        return Response(ModelVersionSerializer(version).data)


class ProjectRunsView(generics.ListAPIView):
    """GET the project's inspection runs; POST to start one (202 with the run and its job)."""

    serializer_class = RunSerializer

    def get_queryset(self):
        return InspectionRun.objects.filter(
            project=project_for(self.request, self.kwargs["pk"])
        ).select_related("created_by")

    @extend_schema(request=RunStartSerializer, responses={202: RunSerializer})
    def post(self, request, pk):
        project = project_for(request, pk)
        data = RunStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = None
        if data.validated_data.get("model_version"):
            version = get_object_or_404(
                ModelVersion, pk=data.validated_data["model_version"], project=project
            )
        run = services.inspection_run_start(
            user=request.user,
            project=project,
            scope=data.validated_data["scope"],
            image_ids=data.validated_data.get("image_ids"),
            model_version=version,
        )
        body = RunSerializer(run).data
        body["job_detail"] = JobSerializer(run.job, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class RunView(APIView):
    """One run with its figures (decisions; recall and false alarms against ground truth)."""

    @extend_schema(responses=dict)
    def get(self, request, pk):
        run = get_object_or_404(InspectionRun.objects.select_related("project"), pk=pk)
        require_role(request.user, run.project, Role.ANNOTATOR)
        try:
            default = (run.params or {}).get("threshold", 0.5)  # the score it suggested from
            threshold = float(request.query_params.get("threshold", default))
        except ValueError:
            return Response(
                {"error": "threshold must be a number."}, status=status.HTTP_400_BAD_REQUEST
            )
        body = RunDetailSerializer(run).data
        body["figures"] = run_figures(run, threshold=threshold).to_dict()
        return Response(body)
