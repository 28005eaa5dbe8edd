"""API of the review queue: suggestions and labels waiting for a decision."""

import django_filters
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import review
from annotations.api import AnnotationFilter, AnnotationSerializer
from annotations.models import Annotation, Review, Suggestion
from inspection.api.lookups import image_for
from inspection.models import Project, Role
from inspection.permissions import require_role


class SuggestionSerializer(serializers.ModelSerializer):
    decided_by = serializers.CharField(source="decided_by.username", default=None, read_only=True)
    image_name = serializers.CharField(source="image.original_name", read_only=True)
    image_width = serializers.IntegerField(source="image.width", read_only=True)
    image_height = serializers.IntegerField(source="image.height", read_only=True)
    model = serializers.SerializerMethodField()

    class Meta:
        model = Suggestion
        fields = [
            "id",
            "image",
            "image_name",
            "image_width",
            "image_height",
            "run",
            "model_version",
            "model",
            "category",
            "kind",
            "geometry",
            "score",
            "mean_score",
            "area",
            "status",
            "reject_reason",
            "decided_by",
            "decided_at",
            "created_at",
        ]
        read_only_fields = fields

    def get_model(self, obj) -> str | None:
        mv = obj.model_version
        return f"{mv.architecture} v{mv.number}" if mv else None


class ReviewSerializer(serializers.ModelSerializer):
    decided_by = serializers.CharField(source="decided_by.username", default=None, read_only=True)
    category_name = serializers.CharField(source="category.name", default=None, read_only=True)

    class Meta:
        model = Review
        fields = [
            "id",
            "image",
            "suggestion",
            "annotation",
            "action",
            "reason",
            "comment",
            "category",
            "category_name",
            "geometry_before",
            "geometry_after",
            "decided_by",
            "decided_at",
        ]
        read_only_fields = fields


class AcceptSerializer(serializers.Serializer):
    category = serializers.IntegerField()
    geometry = serializers.JSONField(required=False, help_text="The edited shape, when edited.")


class RejectSerializer(serializers.Serializer):
    reason = serializers.ChoiceField(
        choices=Review.REJECT_REASONS, required=False, allow_blank=True, default=""
    )
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class CommentSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class SuggestionFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Suggestion.Status.choices)
    run = django_filters.NumberFilter(field_name="run_id")
    model_version = django_filters.NumberFilter(field_name="model_version_id")
    image = django_filters.NumberFilter(field_name="image_id")
    category = django_filters.NumberFilter(field_name="category_id")
    score_min = django_filters.NumberFilter(field_name="score", lookup_expr="gte")
    score_max = django_filters.NumberFilter(field_name="score", lookup_expr="lte")

    class Meta:
        model = Suggestion
        fields = ["status", "run", "model_version", "image", "category", "score_min", "score_max"]


class ProjectSuggestionsView(generics.ListAPIView):
    """Suggestions of a project, highest score first (filters: status, run, image, category, score range)."""

    serializer_class = SuggestionSerializer
    filterset_class = SuggestionFilter

    def get_queryset(self):
        project = get_object_or_404(Project, pk=self.kwargs["pk"])
        require_role(self.request.user, project, Role.ANNOTATOR)
        return (
            Suggestion.objects.filter(image__project=project)
            .select_related("image", "model_version", "decided_by")
            .order_by("-score", "id")
        )


class ProjectPendingLabelsView(generics.ListAPIView):
    """Labels drawn by annotators that wait for review (not your own), oldest first."""

    serializer_class = AnnotationSerializer
    filterset_class = AnnotationFilter

    def get_queryset(self):
        project = get_object_or_404(Project, pk=self.kwargs["pk"])
        require_role(self.request.user, project, Role.ANNOTATOR)
        return (
            Annotation.objects.filter(
                image__project=project, review_status=Annotation.ReviewStatus.PENDING
            )
            .exclude(source=Annotation.Source.GROUND_TRUTH)
            .exclude(author=self.request.user)
            .select_related("category", "author", "updated_by")
            .order_by("created_at", "id")
        )


def _suggestion(request, pk) -> Suggestion:
    suggestion = get_object_or_404(Suggestion.objects.select_related("image__project"), pk=pk)
    require_role(request.user, suggestion.image.project, Role.ANNOTATOR)
    return suggestion


def _annotation(request, pk) -> Annotation:
    annotation = get_object_or_404(Annotation.objects.select_related("image__project"), pk=pk)
    require_role(request.user, annotation.image.project, Role.ANNOTATOR)
    return annotation


class SuggestionAcceptView(APIView):
    @extend_schema(request=AcceptSerializer, responses={201: AnnotationSerializer})
    def post(self, request, pk):
        suggestion = _suggestion(request, pk)
        data = AcceptSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        annotation = review.suggestion_accept(
            user=request.user,
            suggestion=suggestion,
            category_id=data.validated_data["category"],
            geometry=data.validated_data.get("geometry"),
        )
        return Response(AnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)


class SuggestionRejectView(APIView):
    @extend_schema(request=RejectSerializer, responses=SuggestionSerializer)
    def post(self, request, pk):
        suggestion = _suggestion(request, pk)
        data = RejectSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rejected = review.suggestion_reject(
            user=request.user, suggestion=suggestion, **data.validated_data
        )
        return Response(SuggestionSerializer(rejected).data)


class AnnotationApproveView(APIView):
    @extend_schema(request=CommentSerializer, responses=AnnotationSerializer)
    def post(self, request, pk):
        data = CommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        approved = review.annotation_approve(
            user=request.user,
            annotation=_annotation(request, pk),
            comment=data.validated_data["comment"],
        )
        return Response(AnnotationSerializer(approved).data)


class AnnotationReturnView(APIView):
    @extend_schema(request=CommentSerializer, responses=AnnotationSerializer)
    def post(self, request, pk):
        data = CommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        returned = review.annotation_return(
            user=request.user,
            annotation=_annotation(request, pk),
            comment=data.validated_data["comment"],
        )
        return Response(AnnotationSerializer(returned).data)


class ImageReviewsView(APIView):
    """Every decision on an image, newest first."""

    @extend_schema(responses=ReviewSerializer(many=True))
    def get(self, request, pk):
        image = image_for(request, pk)
        return Response(
            ReviewSerializer(image.reviews.select_related("decided_by", "category"), many=True).data
        )


class ImageSuggestionsView(APIView):
    """The image's suggestions (all statuses), for the workspace overlay."""

    @extend_schema(responses=SuggestionSerializer(many=True))
    def get(self, request, pk):
        image = image_for(request, pk)
        qs = image.suggestions.select_related("image", "model_version", "decided_by")
        return Response(SuggestionSerializer(qs, many=True).data)
