"""FilterSets of the core shared by the HTML pages and the API (the image grid's, which filters
by labels, is annotations.filters.ImageFilter)."""

import django_filters
from django import forms
from django.db.models import Q
from drf_spectacular.utils import extend_schema_field

from inspection.models import Job, Station, StationResult

BIGINT_MAX = 2**63 - 1


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": BIGINT_MAX})
class IdFilter(django_filters.NumberFilter):
    """A database id: a whole number from 1 to PostgreSQL's bigint maximum. A float or a
    300-digit number is a 400 with the reason, not a database error (a 500)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(*args, **kwargs)


class JobFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Job.Status.choices)
    kind = django_filters.CharFilter()
    project = IdFilter(field_name="project_id")
    active = django_filters.BooleanFilter(method="filter_active", label="Queued or running")

    class Meta:
        model = Job
        fields = ["status", "kind", "project", "active"]

    def filter_active(self, queryset, name, value):
        active = Q(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
        return queryset.filter(active) if value else queryset.exclude(active)


class StationFilter(django_filters.FilterSet):
    project = IdFilter(field_name="project_id")

    class Meta:
        model = Station
        fields = ["project"]


class StationResultFilter(django_filters.FilterSet):
    """A station's results: a time range (ISO 8601, start included, end not) and verdicts."""

    start = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="gte")
    end = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="lt")
    verdict = django_filters.MultipleChoiceFilter(choices=StationResult.Verdict.choices)

    class Meta:
        model = StationResult
        fields = ["start", "end", "verdict"]
