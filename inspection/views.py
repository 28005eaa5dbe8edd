"""Server-rendered pages. Reads use selectors and FilterSets; writes call services."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render

from annotations import services as category_services
from annotations.models import DefectCategory
from inspection import selectors
from inspection.filters import ImageFilter
from inspection.models import Image, Job, Project, Role
from inspection.permissions import has_role, require_role
from inspection.services import jobs as job_services
from inspection.services import projects as project_services
from inspection.services.images import images_without_pyramid


def _errors(exc: ValidationError) -> str:
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
            messages.error(request, _errors(exc) if isinstance(exc, ValidationError) else str(exc))
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
def project_images(request, pk):
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project)
    base = Image.objects.filter(project=project).order_by("id")
    filterset = ImageFilter(request.GET, queryset=base)
    filterset.form.fields["category"].widget.attrs["list"] = "categories"
    page = Paginator(filterset.qs, 48).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "project_images.html",
        {
            "project": project,
            "role": role,
            "can_upload": has_role(request.user, project, Role.REVIEWER),
            "filterset": filterset,
            "page": page,
            "query": query.urlencode(),
            "categories": DefectCategory.objects.filter(project=project),
            "total": base.count(),
            "without_pyramid": len(images_without_pyramid(project)),
        },
    )


@login_required
def project_settings(request, pk):
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project)
    if request.method == "POST":
        require_role(request.user, project, Role.ADMIN)
        action = request.POST.get("action")
        try:
            if action == "add-category":
                category_services.category_create(
                    user=request.user,
                    project=project,
                    name=request.POST.get("name", ""),
                    color=request.POST.get("color", ""),
                    shortcut=request.POST.get("shortcut") or None,
                )
            elif action == "delete-category":
                category = get_object_or_404(
                    DefectCategory, pk=request.POST.get("category"), project=project
                )
                category_services.category_delete(user=request.user, category=category)
            elif action == "set-member":
                project_services.member_set(
                    user=request.user,
                    project=project,
                    username=request.POST.get("username", "").strip(),
                    role=request.POST.get("role", ""),
                )
            elif action == "remove-member":
                project_services.member_remove(
                    user=request.user, project=project, username=request.POST.get("username", "")
                )
            else:
                raise ValidationError("Unknown action.")
        except ValidationError as exc:
            messages.error(request, _errors(exc))
        else:
            messages.success(request, "Saved.")
        return redirect("project-settings", pk=project.pk)
    return render(
        request,
        "project_settings.html",
        {
            "project": project,
            "role": role,
            "is_admin": role == Role.ADMIN,
            "categories": DefectCategory.objects.filter(project=project),
            "members": project.memberships.select_related("user"),
            "roles": Role.choices,
        },
    )


@login_required
def image_page(request, pk):
    """The labeling workspace: deep zoom, shapes, heatmap overlay, verdict, comments."""
    from django.urls import reverse

    image = get_object_or_404(Image.objects.select_related("project"), pk=pk)
    role = require_role(request.user, image.project)
    query = request.GET.copy()
    query.pop("page", None)
    neighbors = selectors.image_neighbors(image=image, params=query)
    heatmap = image.heatmaps.first()
    data = {
        "image": {
            "id": image.pk,
            "name": image.original_name,
            "width": image.width,
            "height": image.height,
            "dzi": reverse("api-image-dzi", args=[image.pk]) if image.pyramid_path else None,
            "heatmap": reverse("api-image-heatmap", args=[image.pk]) if heatmap else None,
            "heatmapLabel": heatmap.label if heatmap else "",
            "verdict": image.verdict,
        },
        "categories": [
            {"id": c.pk, "name": c.name, "color": c.color, "shortcut": c.shortcut}
            for c in DefectCategory.objects.filter(project=image.project)
        ],
        "user": {"username": request.user.username, "role": role},
        "neighbors": neighbors,
        "query": query.urlencode(),
        "pollSeconds": settings.LOUPE_WORKSPACE_POLL_SECONDS,
        "urls": {
            "annotations": reverse("api-image-annotations", args=[image.pk]),
            "annotation": reverse("api-annotation", args=[0]).replace("/0/", "/{id}/"),
            "verdict": reverse("api-image-verdict", args=[image.pk]),
            "comments": reverse("api-image-comments", args=[image.pk]),
            "suggestions": reverse("api-image-suggestions", args=[image.pk]),
            "reviews": reverse("api-image-reviews", args=[image.pk]),
            "page": reverse("image-page", args=[0]).replace("/0/", "/{id}/"),
            "dzi": reverse("api-image-dzi", args=[0]).replace("/0/", "/{id}/"),
        },
    }
    return render(
        request,
        "workspace.html",
        {
            "image": image,
            "project": image.project,
            "data": data,
            "neighbors": neighbors,
            "query": data["query"],
        },
    )


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
            "kind_label": job_services.JOB_LABELS.get(job.kind, job.kind),
        },
    )


@login_required
def review_page(request, pk):
    """The review queue: suggestions by score, then labels waiting for approval; keyboard-first."""
    from django.urls import reverse

    from annotations.models import Review

    project = get_object_or_404(Project, pk=pk)
    require_role(request.user, project, Role.REVIEWER)
    filters = {
        k: v
        for k, v in request.GET.items()
        if k in ("run", "image", "category", "score_min", "score_max")
    }
    data = {
        "project": project.pk,
        "me": request.user.username,
        "filters": filters,
        "categories": [
            {"id": c.pk, "name": c.name, "color": c.color, "shortcut": c.shortcut}
            for c in DefectCategory.objects.filter(project=project)
        ],
        "reasons": [{"key": k, "label": label} for k, label in Review.REJECT_REASONS],
        "urls": {
            "suggestions": reverse("api-project-suggestions", args=[project.pk]),
            "labels": reverse("api-pending-labels", args=[project.pk]),
            "accept": reverse("api-suggestion-accept", args=[0]).replace("/0/", "/{id}/"),
            "reject": reverse("api-suggestion-reject", args=[0]).replace("/0/", "/{id}/"),
            "approve": reverse("api-annotation-approve", args=[0]).replace("/0/", "/{id}/"),
            "return": reverse("api-annotation-return", args=[0]).replace("/0/", "/{id}/"),
            "dzi": reverse("api-image-dzi", args=[0]).replace("/0/", "/{id}/"),
            "heatmap": reverse("api-image-heatmap", args=[0]).replace("/0/", "/{id}/"),
            "image": reverse("api-image-detail", args=[0]).replace("/0/", "/{id}/"),
            "page": reverse("image-page", args=[0]).replace("/0/", "/{id}/"),
        },
    }
    return render(request, "review.html", {"project": project, "data": data, "filters": filters})


@login_required
def models_page(request, pk):
    """Anomaly models of a project (train, activate) and its inspection runs."""
    from inspection.models import InspectionRun, ModelVersion
    from inspection.services.inspections import (
        ARCHITECTURES,
        training_geometry_hint,
        training_images,
    )
    from inspection.services.projects import INSPECTION_DEFAULTS, inspection_settings

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


@login_required
def run_page(request, pk):
    """An inspection run's figures, with the precision/recall curve."""
    from annotations.figures import curve_svg_points, run_figures
    from inspection.models import InspectionRun

    run = get_object_or_404(
        InspectionRun.objects.select_related("project", "model_version", "job"), pk=pk
    )
    require_role(request.user, run.project)
    default = (run.params or {}).get("threshold", 0.5)  # the score the run suggested from
    try:
        threshold = float(request.GET.get("threshold", default))
    except ValueError:
        threshold = default
    figures = run_figures(run, threshold=threshold)
    failed = [(image_id, r["error"]) for image_id, r in (run.results or {}).items() if "error" in r]
    return render(
        request,
        "run.html",
        {
            "run": run,
            "project": run.project,
            "f": figures,
            "curve": curve_svg_points(figures.curve),
            "failed": failed,
        },
    )
