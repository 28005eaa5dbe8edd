"""FilterSets shared by the HTML pages and the API."""

import django_filters
from django.db.models import Exists, OuterRef, Q

from inspection.models import Image, Job


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
        from annotations.models import Annotation

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
        from annotations.models import Annotation

        return queryset.filter(
            Exists(Annotation.objects.filter(image=OuterRef("pk"), category_id=value))
        )


class JobFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Job.Status.choices)
    kind = django_filters.CharFilter()
    project = django_filters.NumberFilter(field_name="project_id")
    active = django_filters.BooleanFilter(method="filter_active", label="Queued or running")

    class Meta:
        model = Job
        fields = ["status", "kind", "project", "active"]

    def filter_active(self, queryset, name, value):
        active = Q(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
        return queryset.filter(active) if value else queryset.exclude(active)
