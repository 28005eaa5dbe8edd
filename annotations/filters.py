"""FilterSets shared by the HTML pages and the API: the image grid (by labels), labels, suggestions."""

import django_filters
from django.db.models import (
    Case,
    Exists,
    F,
    FloatField,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Abs, Coalesce, Least

from annotations.models import Annotation, Suggestion
from inspection.filters import IdFilter
from inspection.models import Image, ImageHeatmap, ModelVersion

ANOMALY, DETECTOR = ModelVersion.Kind.ANOMALY, ModelVersion.Kind.DETECTOR


def _ran_on_image(kind: str) -> Q:
    """A model of ``kind`` looked at the row's image: one of its suggestions is there (any
    status), or, for an anomaly model, one of its runs' heatmaps; for a detector, it looked at
    the image whatever it found (``Image.detector_checked_at``: a detection run, or the active
    detector classifying an inspection's regions), or an anomaly region there took a
    detector's category."""
    theirs = Suggestion.objects.filter(image=OuterRef("image_id"))
    if kind == ANOMALY:
        return Q(Exists(theirs.filter(model_version__kind=kind))) | Q(
            Exists(
                ImageHeatmap.objects.filter(
                    image=OuterRef("image_id"), run__model_version__kind=kind
                )
            )
        )
    return Q(image__detector_checked_at__isnull=False) | Q(
        Exists(theirs.filter(Q(model_version__kind=kind) | Q(category_score__isnull=False)))
    )


def _echoed_by(kind: str) -> Q:
    """A suggestion of ``kind`` is at the row's place: the row is its echo or it is the row's
    (``same_as``, SAME_PLACE_COVER)."""
    theirs = Suggestion.objects.filter(model_version__kind=kind)
    return Q(Exists(theirs.filter(pk=OuterRef("same_as_id")))) | Q(
        Exists(theirs.filter(same_as=OuterRef("pk")))
    )


# The anomaly model and the detector disagree about a suggestion: an anomaly region no detector
# box gave a category (and none is at its place) on an image a detector looked at, or a detector
# box with no anomaly suggestion at its place on an image an anomaly model looked at.
MODELS_DISAGREE = (
    Q(model_version__kind=ANOMALY, category_score__isnull=True)
    & ~_echoed_by(DETECTOR)
    & _ran_on_image(DETECTOR)
) | (Q(model_version__kind=DETECTOR) & ~_echoed_by(ANOMALY) & _ran_on_image(ANOMALY))

# How far a model's output is from its decision: 0 is a coin toss, 0.5 is sure. 0.5 is the
# calibrated threshold of an anomaly model (suggestion and image scores) and the middle of a
# detector's confidence; the nearest of these terms counts:
# - |score - 0.5|;
# - |category_score - 0.5|: the detector's confidence in the category it proposes;
# - category_margin / 2: the detector torn between two categories at the box (margin m between
#   the top two scores p1 - p2; as a choice between those two, p1 / (p1 + p2) is 0.5 + m / 2
#   when they sum to 1; a negative margin, another category ahead, counts as 0);
# - (1 - score) / 2 where the two models disagree (MODELS_DISAGREE): their mean vote, the
#   suggestion's score and 0 from the model that saw nothing there, is score / 2, this far from
#   0.5: a sure model contradicted by the other is a coin toss.
# Shared by the review queue's "most uncertain first" and the image grid's "label next".
SUGGESTION_DOUBT = Least(
    Abs(F("score") - 0.5),
    Coalesce(Abs(F("category_score") - 0.5), Value(1.0)),
    Case(  # (GREATEST and LEAST skip a null in PostgreSQL: no margin must not count as 0)
        When(category_margin__isnull=True, then=Value(1.0)),
        When(category_margin__lt=0, then=Value(0.0)),
        default=F("category_margin") / 2,
        output_field=FloatField(),
    ),
    Case(
        When(MODELS_DISAGREE, then=Abs(F("score") / 2 - 0.5)),
        default=Value(1.0),
        output_field=FloatField(),
    ),
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
        suggestion's (SUGGESTION_DOUBT, as the review queue's) or the latest heatmap's image
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
        """``uncertainty``: scores nearest the decision, a detector torn between two categories,
        the anomaly model and the detector disagreeing (SUGGESTION_DOUBT): what a reviewer's
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
