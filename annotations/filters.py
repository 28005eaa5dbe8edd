"""FilterSets shared by the HTML pages and the API: the image grid (by labels), labels, suggestions."""

import django_filters
from django.db.models import Exists, F, OuterRef, Value
from django.db.models.functions import Abs, Coalesce, Least

from annotations.models import Annotation, Suggestion
from inspection.models import Image, ModelVersion


class ImageFilter(django_filters.FilterSet):
    """state: normal | unlabeled | labeled | reviewed; split; category (id); name contains."""

    STATES = (
        ("normal", "Normal (defect-free)"),
        ("unlabeled", "Unlabeled"),
        ("labeled", "Labeled"),
        ("reviewed", "Reviewed"),
    )
    state = django_filters.ChoiceFilter(choices=STATES, method="filter_state", label="State")
    split = django_filters.ChoiceFilter(
        choices=[(v, v) for v in ("train", "val", "test")], label="Split"
    )
    category = django_filters.NumberFilter(method="filter_category", label="Category")
    name = django_filters.CharFilter(
        field_name="original_name", lookup_expr="icontains", label="Name"
    )
    group = django_filters.CharFilter(field_name="source_group", label="Source folder")

    class Meta:
        model = Image
        fields = ["state", "split", "category", "name", "group"]

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
    image = django_filters.NumberFilter(field_name="image_id")
    category = django_filters.NumberFilter(field_name="category_id")
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
    source = django_filters.ChoiceFilter(
        field_name="model_version__kind",
        choices=ModelVersion.Kind.choices,
        label="Source (anomaly model or detector)",
    )
    run = django_filters.NumberFilter(field_name="run_id")
    model_version = django_filters.NumberFilter(field_name="model_version_id")
    image = django_filters.NumberFilter(field_name="image_id")
    category = django_filters.NumberFilter(field_name="category_id")
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
            "score_min",
            "score_max",
        ]

    def filter_order(self, queryset, name, value):
        """``uncertainty``: scores nearest the decision (0.5 is the calibrated threshold of an
        anomaly model and the middle of a detector's confidence), counting the detector's
        confidence in a proposed category too: what a reviewer's decision teaches most."""
        if value == "uncertainty":
            doubt = Least(
                Abs(F("score") - 0.5),
                Coalesce(Abs(F("category_score") - 0.5), Value(1.0)),
            )
            return queryset.annotate(doubt=doubt).order_by("doubt", "-score", "id")
        if value == "image":
            return queryset.order_by("image_id", "-score", "id")
        return queryset.order_by("-score", "id")
