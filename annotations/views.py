"""Server-rendered pages of the labeling side: the image grid, project settings (team and defect
categories), the labeling workspace, the review queue, run figures and dataset versions. Reads
use selectors and FilterSets; writes call services."""

from csp.decorators import csp_update
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from annotations import selectors
from annotations.figures import detection_figures, run_figures, run_threshold
from annotations.filters import ImageFilter, SuggestionFilter
from annotations.models import DatasetVersion, DefectCategory, Review
from annotations.services import categories as category_services
from annotations.services.dataset_export import JOB_KIND as EXPORT_KIND
from annotations.services.dataset_export import export_formats
from annotations.services.dataset_import import import_formats
from inspection.models import Image, InspectionRun, Job, ModelVersion, Project, Role
from inspection.permissions import has_role, require_role
from inspection.plots import curve_svg_points
from inspection.services import projects as project_services
from inspection.services.images import images_without_pyramid
from inspection.services.inspections import active_model
from inspection.services.regions import regions_of, registration_onto
from inspection.views import form_errors

# Annotorious draws with PixiJS, which compiles its shaders with `new Function`: the two pages
# that draw need 'unsafe-eval' (inline scripts stay refused; settings.CONTENT_SECURITY_POLICY).
DRAWING_PAGE_CSP = {"script-src": ["'unsafe-eval'"]}


def _categories(project: Project) -> list[dict]:
    return [
        {"id": c.pk, "name": c.name, "color": c.color, "shortcut": c.shortcut}
        for c in DefectCategory.objects.filter(project=project)
    ]


def _url_template(name: str) -> str:
    """A route of one object with ``{id}`` where its id goes (filled in by the page's script)."""
    return reverse(name, args=[0]).replace("/0/", "/{id}/")


@login_required
def project_images(request, pk):
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project)
    base = Image.objects.filter(project=project).order_by("id")
    filterset = ImageFilter(request.GET, queryset=base, request=request)
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
            "has_anomaly_model": active_model(project, ModelVersion.Kind.ANOMALY) is not None,
            "has_detector": active_model(project, ModelVersion.Kind.DETECTOR) is not None,
            "has_references": project.images.filter(is_reference=True).exists(),
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
            elif action == "edit-category":
                category = get_object_or_404(
                    DefectCategory, pk=request.POST.get("category"), project=project
                )
                category_services.category_update(
                    user=request.user,
                    category=category,
                    name=request.POST.get("name"),
                    color=request.POST.get("color"),
                    shortcut=request.POST.get("shortcut"),
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
            elif action == "rename":
                project_services.project_update(
                    user=request.user,
                    project=project,
                    name=request.POST.get("name", ""),
                    description=request.POST.get("description", ""),
                    reference_rule=request.POST.get("reference_rule"),
                )
            elif action == "delete-project":
                # typing the name is the confirmation: a slip of the mouse deletes nothing
                if request.POST.get("confirm_name", "").strip() != project.name:
                    raise ValidationError(
                        f"Type the project's name, '{project.name}', to delete it."
                    )
                name = project.name
                project_services.project_delete(user=request.user, project=project)
                messages.success(request, f"Project '{name}' deleted, with its images and labels.")
                return redirect("home")
            else:
                raise ValidationError("Unknown action.")
        except ValidationError as exc:
            messages.error(request, form_errors(exc))
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
            # a new category's colour: the next of the palette, not the same red every time
            "next_color": category_services.next_color(project),
            "workspace_keys": ", ".join(sorted(category_services.WORKSPACE_KEYS)),
            "members": project.memberships.select_related("user"),
            "roles": Role.choices,
        },
    )


LABEL_NEXT = {"state": "unlabeled", "order": "uncertainty"}


@login_required
def label_next(request, pk):
    """ "Label next": the workspace of the unlabelled image the models are least sure about, its
    previous/next links going on down the same ranking (the grid's filters state=unlabeled,
    order=uncertainty)."""
    project = get_object_or_404(Project, pk=pk)
    require_role(request.user, project)
    images = ImageFilter(LABEL_NEXT, queryset=Image.objects.filter(project=project)).qs
    first = images.values_list("id", flat=True).first()
    if first is None:
        messages.info(request, "Every image is labelled or marked normal: nothing to label next.")
        return redirect("project", pk=project.pk)
    query = QueryDict(mutable=True)
    query.update(LABEL_NEXT)
    return redirect(f"{reverse('image-page', args=[first])}?{query.urlencode()}")


def _workspace_data(request, image: Image, role: str) -> dict:
    """What the workspace's script needs about ``image``: the page embeds it, and the page asks
    for it again (``image_page_data``) when N / P switch images without loading a page."""
    query = request.GET.copy()
    query.pop("page", None)
    heatmap = image.heatmaps.first()
    details = [
        f"{image.width}×{image.height}",
        f"{image.megapixels} MP",
        f"{image.format.upper()} {image.bit_depth}-bit",
    ]
    if image.is_normal:
        details.append("normal")
    return {
        "image": {
            "id": image.pk,
            "name": image.original_name,
            "width": image.width,
            "height": image.height,
            "details": " · ".join(details),
            "dzi": reverse("api-image-dzi", args=[image.pk]) if image.pyramid_path else None,
            "heatmap": reverse("api-image-heatmap", args=[image.pk]) if heatmap else None,
            "heatmapLabel": heatmap.label if heatmap else "",
            "verdict": image.verdict,
            "isReference": image.is_reference,
            "reference": _reference_data(image),
            "regions": _regions_data(image),
        },
        "categories": _categories(image.project),
        "user": {"username": request.user.username, "role": role},
        "neighbors": selectors.image_neighbors(image=image, params=query, request=request),
        "query": query.urlencode(),
        "pollSeconds": settings.LOUPE_WORKSPACE_POLL_SECONDS,
        "urls": {
            "annotations": reverse("api-image-annotations", args=[image.pk]),
            "annotation": _url_template("api-annotation-detail"),
            "verdict": reverse("api-image-verdict", args=[image.pk]),
            "comments": reverse("api-image-comments", args=[image.pk]),
            "suggestions": reverse("api-image-suggestions", args=[image.pk]),
            "reviews": reverse("api-image-reviews", args=[image.pk]),
            # annotators have no review queue (the bar offers them no link)
            "review": reverse("review", args=[image.project_id]) + f"?image={image.pk}"
            if role != Role.ANNOTATOR
            else None,
            "page": _url_template("image-page"),
            "pageData": _url_template("image-page-data"),
            "dzi": _url_template("api-image-dzi"),
            "setReference": reverse("api-image-reference", args=[image.pk]),
            "bulk": reverse("api-project-images-bulk", args=[image.project_id]),
            "job": _url_template("api-job-detail"),
        },
    }


def _reference_data(image: Image) -> dict | None:
    """The image's reference as the workspace shows it: aligned pyramid, difference, how the
    alignment went (``status`` pending / ok / failed with its reason and figures)."""
    ref = image.reference
    if ref is None:
        return None
    a = image.alignment or {}
    stamp = f"?v={a.get('stamp', '')}"
    return {
        "id": ref.pk,
        "name": ref.original_name,
        "dzi": reverse("api-image-reference-dzi", args=[image.pk]) + stamp
        if image.reference_pyramid_path
        else None,
        "difference": reverse("api-image-difference", args=[image.pk]) + stamp
        if image.difference_path
        else None,
        **{
            k: a[k]
            for k in ("status", "method", "residual_px", "inliers", "matches", "reason")
            if k in a
        },
    }


def _regions_data(image: Image) -> dict | None:
    """The project's regions of interest for the workspace to draw over ``image`` (None: the
    project has none): the polygons in the reference's pixels and how the image is registered
    onto that reference (inspection.services.regions.registration_onto, the rule inspection
    runs follow). The browser maps the polygons through ``matrix`` (reference pixels -> image
    pixels; none for the reference itself) and draws nothing for an image without one."""
    regions = list(regions_of(image.project).select_related("reference"))
    if not regions:
        return None
    reference = regions[0].reference
    placed = registration_onto(image, reference)
    return {
        "reference": {"id": reference.pk, "name": reference.original_name},
        "state": placed.state,
        "matrix": placed.matrix,
        "reason": placed.reason,
        "page": reverse("regions", args=[image.project_id]),
        "items": [
            {"id": r.pk, "name": r.name, "mode": r.mode, "polygon": r.polygon} for r in regions
        ],
    }


def _reference_choices(image: Image, limit: int = 500) -> list[dict]:
    """The project's reference images a person can compare ``image`` with (newest first)."""
    refs = (
        Image.objects.filter(project_id=image.project_id, is_reference=True)
        .exclude(pk=image.pk)
        .order_by("-id")
        .values("id", "original_name")[:limit]
    )
    return [{"id": r["id"], "name": r["original_name"]} for r in refs]


@login_required
@csp_update(DRAWING_PAGE_CSP)
def image_page(request, pk):
    """The labeling workspace: deep zoom, shapes, heatmap overlay, verdict, comments."""
    image = get_object_or_404(Image.objects.select_related("project", "reference"), pk=pk)
    role = require_role(request.user, image.project)
    data = _workspace_data(request, image, role)
    data["references"] = _reference_choices(image)
    return render(
        request,
        "workspace.html",
        {
            "image": image,
            "project": image.project,
            "data": data,
            "neighbors": data["neighbors"],
            "query": data["query"],
        },
    )


@login_required
def image_page_data(request, pk):
    """The workspace's data for image ``pk`` as JSON (the grid's filters in the query string, as
    on the page): N / P fetch it to switch images inside the open page (issue #17: no page load
    between images)."""
    image = get_object_or_404(Image.objects.select_related("project", "reference"), pk=pk)
    role = require_role(request.user, image.project)
    return JsonResponse(_workspace_data(request, image, role))


# the review queue's filters with a menu of their own on the page
REVIEW_MENUS = {"source", "model_version", "run", "category", "region", "score_min", "order"}


@login_required
@csp_update(DRAWING_PAGE_CSP)
def review_page(request, pk):
    """The review queue: suggestions by score, then labels waiting for approval; keyboard-first."""

    project = get_object_or_404(Project, pk=pk)
    require_role(request.user, project, Role.REVIEWER)
    filters = {
        k: v
        for k, v in request.GET.items()
        if k in SuggestionFilter.Meta.fields and k != "status" and v  # the queue is pending
    }
    data = {
        "project": project.pk,
        "me": request.user.username,
        "filters": filters,
        "categories": _categories(project),
        "reasons": [{"key": k, "label": label} for k, label in Review.REJECT_REASONS],
        "urls": {
            "suggestions": reverse("api-project-suggestions", args=[project.pk]),
            "labels": reverse("api-project-pending-labels", args=[project.pk]),
            "accept": _url_template("api-suggestion-accept"),
            "reject": _url_template("api-suggestion-reject"),
            "approve": _url_template("api-annotation-approve"),
            "return": _url_template("api-annotation-return"),
            "dzi": _url_template("api-image-dzi"),
            "heatmap": _url_template("api-image-heatmap"),
            "image": _url_template("api-image-detail"),
            "page": _url_template("image-page"),
        },
    }
    return render(
        request,
        "review.html",
        {
            "project": project,
            "data": data,
            "filters": filters,
            "choices": selectors.review_filter_choices(project=project),
            # filters the menus do not show (e.g. image, from an image's "Review" link) ride along
            "hidden_filters": {k: v for k, v in filters.items() if k not in REVIEW_MENUS},
        },
    )


@login_required
def run_page(request, pk):
    """An inspection run's figures, with the precision/recall curve."""
    run = get_object_or_404(
        InspectionRun.objects.select_related("project", "model_version", "job"), pk=pk
    )
    require_role(request.user, run.project)
    default = run_threshold(run)  # the score the run suggested from
    try:
        threshold = float(request.GET.get("threshold", default))
    except ValueError:
        threshold = default
    figures = run_figures(run, threshold=threshold)
    failed = [(image_id, r["error"]) for image_id, r in (run.results or {}).items() if "error" in r]
    # photos far off the normals' size were inspected resized into their range: say how much
    resized = [r["resized"] for r in (run.results or {}).values() if r.get("resized")]
    per_category = None
    if run.model_version is not None and run.model_version.kind == ModelVersion.Kind.DETECTOR:
        per_category = detection_figures(run, threshold=threshold)
        for row in per_category.categories:
            row.svg = curve_svg_points(row.curve, width=160, height=110, pad=14)
    return render(
        request,
        "run.html",
        {
            "run": run,
            "project": run.project,
            "f": figures,
            "curve": curve_svg_points(figures.curve),
            "d": per_category,
            "failed": failed,
            "resized": {
                "count": len(resized),
                "from": max((r["from"] for r in resized), default=0),
                "to": min((r["to"] for r in resized), default=0),
                "factor": max((r["from"] / r["to"] for r in resized), default=1),
            },
        },
    )


@login_required
def datasets_page(request, pk):
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project, Role.REVIEWER)
    versions = list(
        DatasetVersion.objects.filter(project=project).select_related("created_by").defer("content")
    )
    exports: dict[int, list[Job]] = {}
    for job in Job.objects.filter(project=project, kind=EXPORT_KIND, status=Job.Status.SUCCEEDED):
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
            "formats": export_formats().items(),
            "import_formats": import_formats().items(),
        },
    )
