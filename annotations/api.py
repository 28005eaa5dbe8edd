"""Annotation API: labels per image and per project, verdicts, comments. Writes call services."""

import django_filters
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import services
from annotations.models import Annotation, ImageComment
from inspection.api.lookups import image_for
from inspection.models import Image, Project, Role
from inspection.permissions import require_role


class AnnotationSerializer(serializers.ModelSerializer):
    category_name = serializers.CharField(source="category.name", read_only=True)
    color = serializers.CharField(source="category.color", read_only=True)
    author = serializers.CharField(source="author.username", default=None, read_only=True)
    updated_by = serializers.CharField(source="updated_by.username", default=None, read_only=True)

    class Meta:
        model = Annotation
        fields = [
            "id",
            "image",
            "category",
            "category_name",
            "color",
            "kind",
            "geometry",
            "source",
            "review_status",
            "author",
            "updated_by",
            "created_at",
            "updated_at",
            "version",
        ]
        read_only_fields = fields


class AnnotationWriteSerializer(serializers.Serializer):
    category = serializers.IntegerField()
    geometry = serializers.JSONField()
    client_id = serializers.CharField(
        required=False, allow_blank=True, max_length=64, help_text="Makes retries idempotent."
    )


class AnnotationPatchSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    category = serializers.IntegerField(required=False)
    geometry = serializers.JSONField(required=False)


class CommentSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", default=None, read_only=True)

    class Meta:
        model = ImageComment
        fields = ["id", "text", "author", "created_at"]
        read_only_fields = ["id", "author", "created_at"]


class VerdictSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=Image.Verdict.choices, allow_blank=True)


def _annotations():
    return Annotation.objects.select_related("category", "author", "updated_by")


class ImageAnnotationsView(APIView):
    """GET every label of an image; POST one ({category, geometry}) or a list of them."""

    @extend_schema(responses=AnnotationSerializer(many=True))
    def get(self, request, pk):
        image = image_for(request, pk)
        return Response(AnnotationSerializer(_annotations().filter(image=image), many=True).data)

    @extend_schema(request=AnnotationWriteSerializer, responses={201: AnnotationSerializer})
    def post(self, request, pk):
        image = image_for(request, pk)
        if isinstance(request.data, list):
            created = services.annotations_bulk_create(
                user=request.user, image=image, items=request.data
            )
            return Response(
                AnnotationSerializer(created, many=True).data, status=status.HTTP_201_CREATED
            )
        data = AnnotationWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        annotation = services.annotation_create(
            user=request.user,
            image=image,
            category_id=data.validated_data["category"],
            geometry=data.validated_data["geometry"],
            client_id=data.validated_data.get("client_id", ""),
        )
        return Response(AnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)


class AnnotationDetailView(APIView):
    """GET, PATCH ({version, category?, geometry?}) or DELETE (?version=N) one label."""

    def _get(self, request, pk) -> Annotation:
        annotation = get_object_or_404(_annotations().select_related("image__project"), pk=pk)
        require_role(request.user, annotation.image.project, Role.ANNOTATOR)
        return annotation

    @extend_schema(responses=AnnotationSerializer)
    def get(self, request, pk):
        return Response(AnnotationSerializer(self._get(request, pk)).data)

    @extend_schema(request=AnnotationPatchSerializer, responses=AnnotationSerializer)
    def patch(self, request, pk):
        annotation = self._get(request, pk)
        data = AnnotationPatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        updated = services.annotation_update(
            user=request.user,
            annotation=annotation,
            version=v["version"],
            category_id=v.get("category"),
            geometry=v.get("geometry"),
        )
        return Response(AnnotationSerializer(updated).data)

    @extend_schema(responses={204: None})
    def delete(self, request, pk):
        annotation = self._get(request, pk)
        version = request.query_params.get("version") or (request.data or {}).get("version")
        if version is not None and not str(version).isdigit():
            return Response(
                {"error": "version must be a number."}, status=status.HTTP_400_BAD_REQUEST
            )
        services.annotation_delete(user=request.user, annotation=annotation, version=version)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AnnotationFilter(django_filters.FilterSet):
    image = django_filters.NumberFilter(field_name="image_id")
    category = django_filters.NumberFilter(field_name="category_id")
    author = django_filters.CharFilter(field_name="author__username")

    class Meta:
        model = Annotation
        fields = ["image", "category", "source", "review_status", "author", "kind"]


class ProjectAnnotationsView(generics.ListAPIView):
    """Every label of a project, paged (filters: image, category, source, review_status, author, kind)."""

    serializer_class = AnnotationSerializer
    filterset_class = AnnotationFilter

    def get_queryset(self):
        project = get_object_or_404(Project, pk=self.kwargs["pk"])
        require_role(self.request.user, project, Role.ANNOTATOR)
        return _annotations().filter(image__project=project).order_by("id")


class ImageVerdictView(APIView):
    @extend_schema(request=VerdictSerializer, responses=dict)
    def post(self, request, pk):
        image = image_for(request, pk)
        data = VerdictSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        image = services.image_set_verdict(
            user=request.user, image=image, verdict=data.validated_data["verdict"]
        )
        return Response(
            {
                "verdict": image.verdict,
                "verdict_by": request.user.username if image.verdict else None,
                "verdict_at": image.verdict_at,
            }
        )


class ImageCommentsView(APIView):
    @extend_schema(responses=CommentSerializer(many=True))
    def get(self, request, pk):
        image = image_for(request, pk)
        return Response(CommentSerializer(image.comments.select_related("author"), many=True).data)

    @extend_schema(request=CommentSerializer, responses={201: CommentSerializer})
    def post(self, request, pk):
        image = image_for(request, pk)
        text = request.data.get("text", "") if isinstance(request.data, dict) else None
        comment = services.image_comment_add(user=request.user, image=image, text=text)
        return Response(CommentSerializer(comment).data, status=status.HTTP_201_CREATED)
