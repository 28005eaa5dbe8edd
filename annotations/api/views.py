"""API of the labeling side: categories, the image grid (with uploads into it), labels, verdicts,
comments, suggestions and their review, and run figures. Writes call one service each."""

from django.db.models import Exists, OuterRef
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from annotations import selectors
from annotations.figures import detection_figures, run_figures, run_threshold
from annotations.filters import AnnotationFilter, ImageFilter, SuggestionFilter
from annotations.models import Annotation, DefectCategory, Suggestion
from annotations.services import categories, comments, detectors, image_bulk, labels, review
from inspection.api.base import NumericIds, list_response
from inspection.api.lookups import image_for, project_for
from inspection.api.serializers import RunDetailSerializer, UploadSerializer
from inspection.api.uploads import upload_response
from inspection.listcache import cached_page
from inspection.models import Image, ImageHeatmap, InspectionRun, ModelVersion, Role
from inspection.permissions import require_role

from . import serializers as s


def _annotations():
    return Annotation.objects.select_related("category", "author", "updated_by")


class CategoryViewSet(NumericIds, viewsets.ModelViewSet):
    """Defect categories of a project (project admins change them)."""

    serializer_class = s.CategorySerializer
    pagination_class = None
    http_method_names = ["get", "post", "patch", "delete"]

    def get_project(self):
        return project_for(self.request, self.kwargs["project_pk"])

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return DefectCategory.objects.none()
        return DefectCategory.objects.filter(project=self.get_project())

    def perform_create(self, serializer):
        serializer.instance = categories.category_create(
            user=self.request.user, project=self.get_project(), **serializer.validated_data
        )

    def perform_update(self, serializer):
        serializer.instance = categories.category_update(
            user=self.request.user, category=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        categories.category_delete(user=self.request.user, category=instance)


# what a queue item's "also found by" shows
def suggestion_rows(queryset):
    """``queryset`` of suggestions with what ``SuggestionSerializer`` shows of their image, model
    version, category and decider, in the same query, and nothing more of them."""
    own = [f.name for f in Suggestion._meta.concrete_fields]
    return queryset.select_related(
        "image", "model_version", "decided_by", "category", "region"
    ).only(*own, *s.SuggestionSerializer.RELATED_COLUMNS)


def with_echoes(suggestions: list[Suggestion]) -> list[Suggestion]:
    """Each suggestion's echoes (``same_as`` it: the same place from the other kind of model) in
    one query for the page, as ``echo_list`` (the serializer's ``also``). A prefetch did the same
    with a queryset made per suggestion (docs/benchmarks.md, "API under load")."""
    by_main: dict[int, list[Suggestion]] = {}
    ids = [x.pk for x in suggestions if x.same_as_id is None]
    if ids:
        echoes = suggestion_rows(Suggestion.objects.filter(same_as_id__in=ids)).order_by("id")
        for echo in echoes:
            by_main.setdefault(echo.same_as_id, []).append(echo)
    for x in suggestions:
        x.echo_list = by_main.get(x.pk, [])
    return suggestions


class ProjectLabelsViewSet(NumericIds, viewsets.GenericViewSet):
    """A project's images (the grid, filtered by labels; uploads), labels and suggestions."""

    serializer_class = s.GridImageSerializer
    filterset_class = None  # set per action (lists filter, and the schema shows the filters)

    def get_queryset(self):
        # every route is an action on one project that builds its own list; this only tells the
        # schema which model each action's filters are about
        models = {
            "annotations": Annotation,
            "pending_labels": Annotation,
            "suggestions": Suggestion,
        }
        return models.get(self.action, Image).objects.none()

    @extend_schema(methods=["GET"], responses=s.GridImageSerializer(many=True))
    @extend_schema(
        methods=["POST"], request={"multipart/form-data": UploadSerializer}, responses={201: dict}
    )
    @action(
        detail=True,
        methods=["get", "post"],
        parser_classes=[MultiPartParser, FormParser],
        filterset_class=ImageFilter,
    )
    def images(self, request, pk=None):
        """GET: the project's images (filters: state, split, category, name, group; order=upload
        or uncertainty, the "label next" ranking).
        POST: upload files or zips (reviewers and admins)."""
        project = project_for(request, pk)
        if request.method == "POST":
            return upload_response(request, project)
        images = (
            Image.objects.filter(project=project)
            .select_related("uploaded_by")
            # whether there is one, not every run's heatmap row (the grid links the latest)
            .annotate(has_heatmap=Exists(ImageHeatmap.objects.filter(image=OuterRef("pk"))))
            .order_by("id")
        )
        return list_response(
            self, images, s.GridImageSerializer, filterset_class=ImageFilter, cache_for=project.pk
        )

    @extend_schema(request=s.ImageBulkSerializer, responses=s.ImageBulkResultSerializer)
    @action(detail=True, methods=["post"], url_path="images/bulk")
    def images_bulk(self, request, pk=None):
        """One action on many images (the grid's selection): mark normal or not, set the split,
        inspect, detect, delete. Images a rule refuses are listed with the reason; the others
        are done."""
        project = project_for(request, pk)
        data = s.ImageBulkSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(
            image_bulk.images_bulk_apply(
                user=request.user,
                project=project,
                image_ids=data.validated_data["image_ids"],
                action=data.validated_data["action"],
                split=data.validated_data.get("split"),
            )
        )

    @extend_schema(responses=s.AnnotationSerializer(many=True))
    @action(detail=True, filterset_class=AnnotationFilter)
    def annotations(self, request, pk=None):
        """Every label of a project, paged (filters: image, category, source, review_status,
        author, kind)."""
        project = project_for(request, pk)
        qs = _annotations().filter(image__project=project).order_by("id")
        return list_response(
            self, qs, s.AnnotationSerializer, filterset_class=AnnotationFilter, cache_for=project.pk
        )

    @extend_schema(responses=s.SuggestionSerializer(many=True))
    @action(detail=True, filterset_class=SuggestionFilter)
    def suggestions(self, request, pk=None):
        """Suggestions of a project, highest score first (filters: status, run, image, category,
        score range)."""
        project = project_for(request, pk)
        qs = (
            # an echo (same place, other kind of model) is shown with its main, not alone
            suggestion_rows(
                Suggestion.objects.filter(image__project=project, same_as__isnull=True)
            ).order_by("-score", "id")
        )
        return list_response(
            self,
            qs,
            s.SuggestionSerializer,
            filterset_class=SuggestionFilter,
            prepare=with_echoes,
            cache_for=project.pk,
        )

    @extend_schema(responses=dict)
    @action(detail=True, url_path="detector-retrain", url_name="detector-retrain")
    def detector_retrain(self, request, pk=None):
        """The retrain trigger's state: ``retrain_after_labels`` (None: off; set it with a PATCH
        of the project), and, with an active detector, the approved labels added since its
        dataset version (``new_labels``), its number and that version's."""
        project = project_for(request, pk)
        state = detectors.detector_new_labels(project)
        out = {"retrain_after_labels": project.retrain_after_labels, "detector": None}
        if state is not None:
            out.update(
                detector=state["detector"].number,
                dataset=state["dataset"].number if state["dataset"] else None,
                new_labels=state["new_labels"],
            )
        return Response(out)

    @extend_schema(responses=s.AnnotationSerializer(many=True))
    @action(
        detail=True,
        url_path="pending-labels",
        url_name="pending-labels",
        filterset_class=AnnotationFilter,
    )
    def pending_labels(self, request, pk=None):
        """Labels drawn by annotators that wait for review (not your own), oldest first."""
        project = project_for(request, pk)
        qs = (
            Annotation.objects.filter(
                image__project=project, review_status=Annotation.ReviewStatus.PENDING
            )
            .exclude(source=Annotation.Source.GROUND_TRUTH)
            .exclude(author=request.user)
            .select_related("category", "author", "updated_by")
            .order_by("created_at", "id")
        )
        return list_response(self, qs, s.AnnotationSerializer, filterset_class=AnnotationFilter)


class ImageLabelsViewSet(NumericIds, viewsets.GenericViewSet):
    """One image's labels, verdict, normal flag, comments, decisions and suggestions; its
    neighbours in the grid."""

    queryset = Image.objects.none()
    serializer_class = s.AnnotationSerializer
    pagination_class = None  # one image's lists are short and returned whole (so says the schema)

    @extend_schema(methods=["GET"], responses=s.AnnotationSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=s.AnnotationWriteSerializer,
        responses={201: s.AnnotationSerializer},
    )
    @action(detail=True, methods=["get", "post"])
    def annotations(self, request, pk=None):
        """GET every label of an image; POST one ({category, geometry}) or a list of them."""
        image = image_for(request, pk)
        if request.method == "GET":
            return cached_page(
                request,
                image.project_id,
                lambda: Response(
                    s.AnnotationSerializer(_annotations().filter(image=image), many=True).data
                ),
            )
        if isinstance(request.data, list):
            created = labels.annotations_bulk_create(
                user=request.user, image=image, items=request.data
            )
            return Response(
                s.AnnotationSerializer(created, many=True).data, status=status.HTTP_201_CREATED
            )
        data = s.AnnotationWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        annotation = labels.annotation_create(
            user=request.user,
            image=image,
            category_id=data.validated_data["category"],
            geometry=data.validated_data["geometry"],
            client_id=data.validated_data.get("client_id", ""),
        )
        return Response(s.AnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.VerdictSerializer, responses=dict)
    @action(detail=True, methods=["post"])
    def verdict(self, request, pk=None):
        image = image_for(request, pk)
        data = s.VerdictSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        image = review.image_set_verdict(
            user=request.user, image=image, verdict=data.validated_data["verdict"]
        )
        return Response(
            {
                "verdict": image.verdict,
                "verdict_by": request.user.username if image.verdict else None,
                "verdict_at": image.verdict_at,
            }
        )

    @extend_schema(request=s.NormalSerializer, responses=s.GridImageSerializer)
    @action(detail=True, methods=["post"])
    def normal(self, request, pk=None):
        """Mark the image defect-free (it trains the anomaly model) or not (reviewers and admins;
        refused for an image with defect labels)."""
        image = image_for(request, pk)
        data = s.NormalSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        image = review.image_set_normal(
            user=request.user, image=image, normal=data.validated_data["is_normal"]
        )
        return Response(s.GridImageSerializer(image, context=self.get_serializer_context()).data)

    @extend_schema(methods=["GET"], responses=s.CommentSerializer(many=True))
    @extend_schema(
        methods=["POST"], request=s.CommentSerializer, responses={201: s.CommentSerializer}
    )
    @action(detail=True, methods=["get", "post"])
    def comments(self, request, pk=None):
        image = image_for(request, pk)
        if request.method == "GET":
            return cached_page(
                request,
                image.project_id,
                lambda: Response(
                    s.CommentSerializer(image.comments.select_related("author"), many=True).data
                ),
            )
        text = request.data.get("text", "") if isinstance(request.data, dict) else None
        comment = comments.image_comment_add(user=request.user, image=image, text=text)
        return Response(s.CommentSerializer(comment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=s.ReviewSerializer(many=True))
    @action(detail=True)
    def reviews(self, request, pk=None):
        """Every decision on an image, newest first."""
        image = image_for(request, pk)
        qs = image.reviews.select_related("decided_by", "category")
        return cached_page(
            request, image.project_id, lambda: Response(s.ReviewSerializer(qs, many=True).data)
        )

    @extend_schema(responses=s.SuggestionSerializer(many=True))
    @action(detail=True)
    def suggestions(self, request, pk=None):
        """The image's suggestions (all statuses), for the workspace overlay."""
        image = image_for(request, pk)
        qs = suggestion_rows(image.suggestions.filter(same_as__isnull=True))
        return cached_page(
            request,
            image.project_id,
            lambda: Response(s.SuggestionSerializer(with_echoes(list(qs)), many=True).data),
        )

    @extend_schema(responses=dict)
    @action(detail=True)
    def neighbors(self, request, pk=None):
        """Previous and next image in the project's list under the same filters as the grid."""
        image = image_for(request, pk)
        return cached_page(
            request,
            image.project_id,
            lambda: Response(
                selectors.image_neighbors(image=image, params=request.query_params, request=request)
            ),
        )


class AnnotationViewSet(
    NumericIds, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """One label: GET, PATCH ({version, category?, geometry?}), DELETE (?version=N); a reviewer
    approves it or sends it back."""

    serializer_class = s.AnnotationSerializer
    conflict_serializer_class = s.AnnotationSerializer
    queryset = _annotations().select_related("image__project")
    http_method_names = ["get", "patch", "delete", "post"]

    def get_object(self) -> Annotation:
        annotation = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        require_role(self.request.user, annotation.image.project, Role.ANNOTATOR)
        return annotation

    @extend_schema(request=s.AnnotationPatchSerializer, responses=s.AnnotationSerializer)
    def partial_update(self, request, pk=None):
        annotation = self.get_object()
        data = s.AnnotationPatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        updated = labels.annotation_update(
            user=request.user,
            annotation=annotation,
            version=v["version"],
            category_id=v.get("category"),
            geometry=v.get("geometry"),
        )
        return Response(s.AnnotationSerializer(updated).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "version",
                {"type": "integer", "minimum": 1},
                required=True,
                description="The version you deleted (a 409 when someone changed it since).",
            )
        ],
        responses={204: None},
    )
    def destroy(self, request, pk=None):
        annotation = self.get_object()
        version = request.query_params.get("version") or (request.data or {}).get("version")
        if version is not None and not str(version).isdigit():
            raise serializers.ValidationError("version must be a number.")
        labels.annotation_delete(user=request.user, annotation=annotation, version=version)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.DecisionCommentSerializer, responses=s.AnnotationSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        data = s.DecisionCommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        approved = review.annotation_approve(
            user=request.user, annotation=self.get_object(), comment=data.validated_data["comment"]
        )
        return Response(s.AnnotationSerializer(approved).data)

    @extend_schema(request=s.DecisionCommentSerializer, responses=s.AnnotationSerializer)
    @action(detail=True, methods=["post"], url_path="return", url_name="return")
    def return_(self, request, pk=None):
        data = s.DecisionCommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        returned = review.annotation_return(
            user=request.user, annotation=self.get_object(), comment=data.validated_data["comment"]
        )
        return Response(s.AnnotationSerializer(returned).data)


class SuggestionViewSet(NumericIds, viewsets.GenericViewSet):
    """A reviewer accepts (optionally with an edited shape) or rejects one suggestion."""

    serializer_class = s.SuggestionSerializer
    queryset = Suggestion.objects.select_related("image__project")

    def get_object(self) -> Suggestion:
        suggestion = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        require_role(self.request.user, suggestion.image.project, Role.ANNOTATOR)
        return suggestion

    @extend_schema(request=s.AcceptSerializer, responses={201: s.AnnotationSerializer})
    @action(detail=True, methods=["post"])
    def accept(self, request, pk=None):
        suggestion = self.get_object()
        data = s.AcceptSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        annotation = review.suggestion_accept(
            user=request.user,
            suggestion=suggestion,
            category_id=data.validated_data["category"],
            geometry=data.validated_data.get("geometry"),
        )
        return Response(s.AnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.RejectSerializer, responses=s.SuggestionSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        suggestion = self.get_object()
        data = s.RejectSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rejected = review.suggestion_reject(
            user=request.user, suggestion=suggestion, **data.validated_data
        )
        return Response(s.SuggestionSerializer(rejected).data)


class RunViewSet(NumericIds, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """One inspection run with its figures: decisions, and recall and false alarms against
    ground truth; a detection run's also per category against its reviewed images
    (``per_category``). ``?threshold=`` moves the score they count from (default: the run's
    own)."""

    serializer_class = RunDetailSerializer
    queryset = InspectionRun.objects.select_related("project", "model_version")

    @extend_schema(responses=dict)
    def retrieve(self, request, pk=None):
        run = get_object_or_404(self.get_queryset(), pk=pk)
        require_role(request.user, run.project, Role.ANNOTATOR)
        try:
            threshold = float(request.query_params.get("threshold", run_threshold(run)))
        except ValueError:
            raise serializers.ValidationError("threshold must be a number.") from None
        body = RunDetailSerializer(run).data
        body["figures"] = run_figures(run, threshold=threshold).to_dict()
        if run.model_version is not None and run.model_version.kind == ModelVersion.Kind.DETECTOR:
            body["per_category"] = detection_figures(run, threshold=threshold).to_dict()
        return Response(body)
