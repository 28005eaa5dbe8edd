"""FilterSets shared by the HTML pages and the API: the image grid (by labels), labels, suggestions."""

import django_filters
from django.db.models import Exists, F, FloatField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Abs, Coalesce, Least

from annotations.models import Annotation, Suggestion
from inspection.filters import IdFilter
from inspection.models import Image, ImageHeatmap, ModelVersion

# How far a model's output is from its decision: 0 is a coin toss, 0.5 is sure. 0.5 is the
# calibrated threshold of an anomaly model (suggestion and image scores) and the middle of a
# detector's confidence; a detector's confidence in the category it proposes counts too.
# Shared by the review queue's "most uncertain first" and the image grid's "label next".
SUGGESTION_DOUBT = Least(
    Abs(F("score") - 0.5),
    Coalesce(Abs(F("category_score") - 0.5), Value(1.0)),
)
NO_MODEL_OUTPUT = 9.0  # ranks images no model has looked at after every one it has


class ImageFilter(django_filters.FilterSet):
    """state: normal | unlabeled | labeled | reviewed | returned (labels sent back to the user
    asking); split; category (id); name contains."""

    STATES = (
        ("normal", "Normal (defect-free)"),
        ("unlabeled", "Unlabeled"),
        ("labeled", "Labeled"),
        ("reviewed", "Reviewed"),
        ("returned", "With labels sent back to me"),
    )
    state = django_filters.ChoiceFilter(choices=STATES, method="filter_state", label="State")
    split = django_filters.ChoiceFilter(
        choices=[(v, v) for v in ("train", "val", "test")], label="Split"
    )
    category = IdFilter(method="filter_category", label="Category")
    name = django_filters.CharFilter(
        field_name="original_name", lookup_expr="icontains", label="Name"
    )
    group = django_filters.CharFilter(field_name="source_group", label="Source folder")
    order = django_filters.ChoiceFilter(
        choices=[("upload", "Upload order"), ("uncertainty", "Most uncertain first")],
        method="filter_order",
        label="Order",
        empty_label=None,
    )

    class Meta:
        model = Image
        fields = ["state", "split", "category", "name", "group", "order"]

    def filter_order(self, queryset, name, value):
        """``uncertainty`` ("label next"): the images whose labels would teach the models most
        first, i.e. those whose most doubtful output is nearest the decision: a pending
        suggestion's score or proposed category's confidence, or the latest heatmap's image
        score. Images no model has looked at come last, in upload order."""
        if value != "uncertainty":
            return queryset.order_by("id")
        return uncertainty_ranked(queryset)

    @staticmethod
    def _labels():
        return Annotation.objects.filter(image=OuterRef("pk")).exclude(
            source=Annotation.Source.GROUND_TRUTH
        )

    def filter_state(self, queryset, name, value):
        if value == "normal":
            return queryset.filter(is_normal=True)
        if value == "reviewed":
            return queryset.filter(status=Image.Status.REVIEWED)
        if value == "returned":  # an annotator's to-do: what reviewers sent back to them
            user = getattr(self.request, "user", None)
            return queryset.filter(
                Exists(
                    Annotation.objects.filter(
                        image=OuterRef("pk"),
                        review_status=Annotation.ReviewStatus.RETURNED,
                        author_id=getattr(user, "id", None),
                    )
                )
            )
        has_labels = Exists(self._labels())
        if value == "labeled":
            return queryset.filter(has_labels)
        if value == "unlabeled":
            return queryset.filter(~has_labels, is_normal=False)
        return queryset

    def filter_category(self, queryset, name, value):
        return queryset.filter(
            Exists(Annotation.objects.filter(image=OuterRef("pk"), category_id=value))
        )


class AnnotationFilter(django_filters.FilterSet):
    image = IdFilter(field_name="image_id")
    category = IdFilter(field_name="category_id")
    author = django_filters.CharFilter(field_name="author__username")

    class Meta:
        model = Annotation
        fields = ["image", "category", "source", "review_status", "author", "kind"]


class SuggestionFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Suggestion.Status.choices)
    order = django_filters.ChoiceFilter(
        choices=[
            ("score", "Highest score first"),
            ("uncertainty", "Most uncertain first"),
            ("image", "Image by image"),
        ],
        method="filter_order",
        label="Order",
    )
    # a queue item stands for its echoes too (the other kind's suggestions at its place)
    source = django_filters.ChoiceFilter(
        choices=ModelVersion.Kind.choices,
        method="filter_with_echoes",
        label="Source (anomaly model, detector or change detector)",
    )
    run = IdFilter(method="filter_with_echoes")
    model_version = IdFilter(method="filter_with_echoes")
    image = IdFilter(field_name="image_id")
    category = IdFilter(field_name="category_id")
    region = IdFilter(field_name="region_id")
    score_min = django_filters.NumberFilter(field_name="score", lookup_expr="gte")
    score_max = django_filters.NumberFilter(field_name="score", lookup_expr="lte")

    class Meta:
        model = Suggestion
        fields = [
            "status",
            "order",
            "source",
            "run",
            "model_version",
            "image",
            "category",
            "region",
            "score_min",
            "score_max",
        ]

    ECHO_FIELDS = {
        "source": "model_version__kind",
        "run": "run_id",
        "model_version": "model_version_id",
    }

    def filter_with_echoes(self, queryset, name, value):
        """Suggestions of that source / run / model version, or with an echo of it."""
        field = self.ECHO_FIELDS[name]
        echo = Suggestion.objects.filter(same_as=OuterRef("pk"), **{field: value})
        return queryset.filter(Q(**{field: value}) | Exists(echo))

    def filter_order(self, queryset, name, value):
        """``uncertainty``: scores nearest the decision (SUGGESTION_DOUBT): what a reviewer's
        decision teaches most."""
        if value == "uncertainty":
            return queryset.annotate(doubt=SUGGESTION_DOUBT).order_by("doubt", "-score", "id")
        if value == "image":
            return queryset.order_by("image_id", "-score", "id")
        return queryset.order_by("-score", "id")


def uncertainty_ranked(images):
    """``images`` annotated with ``doubt`` (SUGGESTION_DOUBT of their most doubtful pending
    suggestion or the latest heatmap's |score - 0.5|; NO_MODEL_OUTPUT where there is neither)
    and ordered most uncertain first, then by id."""
    suggestion = (
        Suggestion.objects.filter(image=OuterRef("pk"), status=Suggestion.Status.PENDING)
        .annotate(doubt=SUGGESTION_DOUBT)
        .order_by("doubt")
        .values("doubt")[:1]
    )
    heatmap = (
        ImageHeatmap.objects.filter(image=OuterRef("pk"), score__isnull=False)
        .order_by("-created_at", "-id")
        .annotate(doubt=Abs(F("score") - 0.5))
        .values("doubt")[:1]
    )
    none = Value(NO_MODEL_OUTPUT)
    doubt = Least(
        Coalesce(Subquery(suggestion, output_field=FloatField()), none),
        Coalesce(Subquery(heatmap, output_field=FloatField()), none),
    )
    return images.annotate(doubt=doubt).order_by("doubt", "id")
