"""``GET /api/models/{id}/threshold-effect/``: what thresholds do on the project's reviewed
images (annotations.services.threshold_effect). Here rather than beside the other model routes
(inspection.api) because it reads labels: inspection never imports annotations."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from annotations.services.threshold_effect import threshold_effect
from inspection.api.base import NumericIds
from inspection.models import ModelVersion, Role
from inspection.permissions import require_role


class ModelThresholdEffectViewSet(NumericIds, viewsets.GenericViewSet):
    queryset = ModelVersion.objects.select_related("project")

    @extend_schema(responses=dict)
    @action(detail=True, url_path="threshold-effect", url_name="threshold-effect")
    def threshold_effect(self, request, pk=None):
        """An anomaly model version's false suggestions per good image and recall of the labels
        on the project's reviewed images, per threshold (0.30 to 0.95 by 0.05 and the project's
        own where it is at most 1), from the version's stored heatmaps of the 300 most recently
        reviewed images (``images_used``, ``capped``). Project members read; 404 for others."""
        version = get_object_or_404(self.get_queryset(), pk=pk, kind=ModelVersion.Kind.ANOMALY)
        require_role(request.user, version.project, Role.ANNOTATOR)
        return Response(threshold_effect(version))
