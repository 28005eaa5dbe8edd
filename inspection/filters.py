"""FilterSets of the core shared by the HTML pages and the API (the image grid's, which filters
by labels, is annotations.filters.ImageFilter)."""

import django_filters
from django.db.models import Q

from inspection.models import Job


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
