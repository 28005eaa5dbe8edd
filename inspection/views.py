"""Server-rendered pages of the core: projects, jobs, models. Reads use selectors; writes call
services. Pages that show or change labels (the image grid, the workspace, review, runs,
datasets, project settings with categories) are in annotations.views."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render

from inspection import selectors
from inspection.models import InspectionRun, Job, ModelVersion, Project, Role
from inspection.permissions import has_role, require_role
from inspection.services import jobs as job_services
from inspection.services import projects as project_services
from inspection.services.inspections import (
    ARCHITECTURES,
    training_geometry_hint,
    training_images,
)
from inspection.services.projects import INSPECTION_DEFAULTS, inspection_settings


def form_errors(exc: ValidationError) -> str:
    """A ValidationError as one line for a page's message."""
    if hasattr(exc, "error_dict"):
        return " ".join(f"{m}" for msgs in exc.message_dict.values() for m in msgs)
    return " ".join(exc.messages)


@login_required
def home(request):
    if request.method == "POST":
        try:
            project = project_services.project_create(
                user=request.user,
                name=request.POST.get("name", ""),
                description=request.POST.get("description", ""),
            )
        except (ValidationError, PermissionDenied) as exc:
            messages.error(
                request, form_errors(exc) if isinstance(exc, ValidationError) else str(exc)
            )
        else:
            messages.success(request, f"Project '{project.name}' created.")
            return redirect("project-settings", pk=project.pk)
    projects = (
        selectors.projects_visible_to(request.user)
        .annotate(
            image_count=Count("images", distinct=True),
            normal_count=Count("images", filter=Q(images__is_normal=True), distinct=True),
        )
        .order_by("name")
    )
    return render(request, "home.html", {"projects": projects})


@login_required
def jobs_page(request):
    return render(request, "jobs.html", {"projects": selectors.projects_visible_to(request.user)})


@login_required
def job_page(request, pk):
    job = get_object_or_404(Job.objects.select_related("project", "created_by"), pk=pk)
    if not job_services.job_visible_to(request.user, job):
        raise Http404("No such job.")
    show_traceback = (
        request.user.is_staff
        or request.user.is_superuser
        or (job.project_id and has_role(request.user, job.project, Role.ADMIN))
    )
    return render(
        request,
        "job.html",
        {
            "job": job,
            "show_traceback": show_traceback,
            "kind_label": job_services.job_label(job.kind),
        },
    )


@login_required
def models_page(request, pk):
    """A project's model versions, anomaly models and detectors (train, activate), and its
    inspection and detection runs. Detector training picks a dataset version, which this page's
    script reads from the API (this app never imports the labeling side)."""
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project)
    return render(
        request,
        "models.html",
        {
            "project": project,
            "role": role,
            "is_admin": role == Role.ADMIN,
            "can_inspect": has_role(request.user, project, Role.REVIEWER),
            "versions": ModelVersion.objects.filter(project=project).select_related(
                "created_by", "job"
            ),
            "runs": InspectionRun.objects.filter(project=project).select_related(
                "model_version", "created_by", "job"
            )[:50],
            "architectures": ARCHITECTURES,
            "normal_count": training_images(project).count(),
            "geometry": training_geometry_hint(project),
            "inspection": inspection_settings(project),
            "inspection_defaults": INSPECTION_DEFAULTS,
        },
    )
