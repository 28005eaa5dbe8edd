"""The datasets page: frozen versions with counts; freeze, export and import go through the API."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render

from annotations.datasets import EXPORT_FORMATS
from annotations.models import DatasetVersion
from inspection.models import Job, Project, Role
from inspection.permissions import has_role, require_role


@login_required
def datasets_page(request, pk):
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project, Role.REVIEWER)
    versions = list(
        DatasetVersion.objects.filter(project=project).select_related("created_by").defer("content")
    )
    exports: dict[int, list[Job]] = {}
    for job in Job.objects.filter(project=project, kind="export", status=Job.Status.SUCCEEDED):
        exports.setdefault(job.payload.get("version"), []).append(job)
    for version in versions:
        version.exports = exports.get(version.id, [])[:10]
    return render(
        request,
        "datasets.html",
        {
            "project": project,
            "role": role,
            "is_admin": has_role(request.user, project, Role.ADMIN),
            "versions": versions,
            "formats": EXPORT_FORMATS.items(),
        },
    )
