"""Server-rendered pages of the core: projects, jobs, models. Reads use selectors; writes call
services. Pages that show or change labels (the image grid, the workspace, review, runs,
datasets, project settings with categories) are in annotations.views."""

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from inspection import selectors
from inspection.models import InspectionRun, Job, ModelVersion, Project, Role, Station
from inspection.permissions import has_role, require_role
from inspection.plots import curve_svg_points, dot_whisker
from inspection.services import jobs as job_services
from inspection.services import projects as project_services
from inspection.services.inspections import (
    ARCHITECTURES,
    active_model,
    aligned_pairs,
    anomaly_setup,
    change_calibration_images,
    comparison_rank,
    images_outside_trained_size,
    latest_comparison,
    training_geometry_hint,
    training_images,
)
from inspection.services.projects import INSPECTION_DEFAULTS, inspection_settings

# The models page's choice of orientations per image for detector runs (inspection setting
# ``detector_views``).
DETECTOR_VIEW_CHOICES = [
    (1, "as it is"),
    (2, "and mirrored (2× the time)"),
    (4, "in every flip (4×; parts without an up)"),
    (8, "in every flip and quarter turn (8×; parts without an up)"),
]


def form_errors(exc: ValidationError) -> str:
    """A ValidationError as one line for a page's message."""
    if hasattr(exc, "error_dict"):
        return " ".join(f"{m}" for msgs in exc.message_dict.values() for m in msgs)
    return " ".join(exc.messages)


class LoginView(auth_views.LoginView):
    """Django's login page, with failed attempts counted and refused (429) once too many."""

    def post(self, request, *args, **kwargs):
        from inspection import throttling

        username = str(request.POST.get("username", ""))[:150]
        wait = throttling.retry_after(request, username)
        if wait:
            context = self.get_context_data(form=self.get_form(), throttled=wait // 60 + 1)
            return self.render_to_response(context, status=429, headers={"Retry-After": wait})
        response = super().post(request, *args, **kwargs)
        if request.user.is_authenticated:
            throttling.succeeded(request, username)
        else:
            throttling.failed(request, username)
        return response


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
    from inspection.services.queue_health import queue_health

    return render(
        request,
        "jobs.html",
        {"projects": selectors.projects_visible_to(request.user), "health": queue_health()},
    )


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
            "versions": _with_class_rows(
                ModelVersion.objects.filter(project=project).select_related("created_by", "job")
            ),
            "detector_count": ModelVersion.objects.filter(
                project=project, kind=ModelVersion.Kind.DETECTOR
            ).count(),
            "runs": InspectionRun.objects.filter(project=project).select_related(
                "model_version", "created_by", "job"
            )[:50],
            "architectures": ARCHITECTURES,
            "normal_count": training_images(project).count(),
            "geometry": training_geometry_hint(project),
            "inspection": inspection_settings(project),
            "inspection_defaults": INSPECTION_DEFAULTS,
            "detector_views": DETECTOR_VIEW_CHOICES,
            "size_mismatch": images_outside_trained_size(active_model(project)),
            "calibration": _calibration_data(project),
            "comparison": _comparison(project),
            "change": {
                "pairs": aligned_pairs(project).count(),
                "calibration_pairs": change_calibration_images(project).count(),
                "active": active_model(project, ModelVersion.Kind.CHANGE),
            },
        },
    )


def _comparison(project: Project) -> dict | None:
    """The newest model comparison: its job, and its table's rows with their versions (as they
    are now: active, deleted) and the plot's dots and whiskers."""
    job = latest_comparison(project)
    if job is None:
        return None
    rows = (job.result or {}).get("rows") or []
    versions = ModelVersion.objects.in_bulk([r["model_version"] for r in rows])
    out = []
    for r in rows:
        f = r.get("figures") or {}
        intervals = f.get("intervals") or {}
        out.append(
            {
                **r,
                "f": f,
                "ci": intervals,
                "version": versions.get(r["model_version"]),
                "setup": _row_setup(r, versions.get(r["model_version"])),
                "auroc_dot": dot_whisker(f.get("image_auroc"), intervals.get("image_auroc")),
                "recall_dot": dot_whisker(
                    f.get("recall_at_threshold"), intervals.get("recall_at_threshold")
                ),
            }
        )
    return {"job": job, "rows": out, "result": job.result or {}, "by_kind": _by_kind(out)}


def _by_kind(rows: list[dict]) -> list[dict]:
    """The leaderboard per defect kind (label category): a line per kind, a cell per scored
    row (None where that row has no figures for it: a failed model, a comparison made before
    the figures per kind were kept); ``best`` on the cells that lead their kind by the
    leaderboard's rule (ties all lead; none with a single cell)."""
    scored = [r for r in rows if r.get("figures")]  # as the template's header picks them
    kinds: dict[str, int] = {}
    for r in scored:
        for kind, f in (r["f"].get("by_type") or {}).items():
            kinds[kind] = max(kinds.get(kind, 0), f.get("images") or 0)
    out = []
    for kind, images in sorted(kinds.items()):
        cells = [(r["f"].get("by_type") or {}).get(kind) for r in scored]
        ranks = [comparison_rank(c) for c in cells if c]
        top = max(ranks) if len(ranks) > 1 else None  # the leaderboard's rule, per kind
        cells = [c and {**c, "best": comparison_rank(c) == top} for c in cells]
        out.append({"kind": kind, "images": images, "cells": cells})
    return out


def _row_setup(row: dict, version: ModelVersion | None) -> str:
    """A comparison row's settings in words; rows from before they were kept there: its
    version's, or nothing once the version is deleted too (not a guess)."""
    if "params" in row:
        return anomaly_setup(row["params"])
    return anomaly_setup(version.params) if version is not None else ""


def _calibration_data(project: Project) -> dict | None:
    """What the threshold card draws (static/loupe/thresholds.js): the active anomaly model's
    held-out normal images' peaks as calibrated scores, the expected share of normal images
    with a suggestion per threshold (both from the worker's calibration), the project's
    threshold, where its reviewed suggestions are, and where to fetch what each threshold does on
    the reviewed images (``effect_url``). None without an active anomaly model;
    ``missing`` for a model trained before the calibration kept its normal images' peaks."""
    version = active_model(project)
    if version is None:
        return None
    cal = (version.metrics or {}).get("calibration") or {}
    # a model with its line detector suggests from the two maps' sum, calibrated on its own
    cal = cal.get("with_lines") or cal
    out = {"version": version.number, "architecture": version.architecture}
    if not cal.get("normal_peaks"):
        return {**out, "missing": True}
    return {
        **out,
        "model_version": version.pk,
        "peaks": cal["normal_peaks"],
        "expected_share": cal["expected_share"],
        "on_training_images": bool(cal.get("on_training_images")),
        "unlike_normals": cal.get("unlike_normals", 0),
        "suggest_rate": cal.get("suggest_rate"),
        "flag_rate": cal.get("flag_rate"),
        # the share of normal images expected to reach the verdict's threshold (models
        # calibrated before it was recorded have none)
        "verdict_share": cal.get("verdict_share"),
        "threshold": inspection_settings(project)["threshold"],
        "suggestions_url": reverse("api-project-suggestions", args=[project.pk]),
        # false suggestions per good image and recall per threshold on the reviewed images,
        # fetched by the card after the page (it decodes up to 300 stored heatmaps)
        "effect_url": reverse("api-model-effect-threshold-effect", args=[version.pk]),
    }


def _with_class_rows(versions) -> list[ModelVersion]:
    """Detector versions get ``class_rows``: per category AP50, AP, AP_small and the PR curve's
    points on their val split (figures of the last evaluation; older versions have AP50 only);
    anomaly versions their ``setup`` in words."""
    out = list(versions)
    for v in out:
        if v.kind == ModelVersion.Kind.ANOMALY:
            v.setup = anomaly_setup(v.params)
        m = v.metrics or {}
        ap, pr = m.get("per_class_ap") or {}, m.get("per_class_pr") or {}
        small = m.get("per_class_ap_small") or {}
        v.class_rows = [
            {
                "name": name,
                "ap50": ap50,
                "ap": ap.get(name),
                "ap_small": small.get(name),
                "svg": curve_svg_points(
                    [{"recall": r, "precision": p} for r, p in pr.get(name, [])],
                    width=120,
                    height=60,
                    pad=6,
                ),
            }
            for name, ap50 in (m.get("per_class_ap50") or {}).items()
        ]
    return out


def _delta(a, b):
    """b - a where both are figures (a -1 AP means "no label of that category": no figure)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and a >= 0 and b >= 0:
        return round(b - a, 4)
    return None


@login_required
def models_compare(request, pk):
    """Two detector versions side by side (``?a=<number>&b=<number>``): lineage, settings,
    validation figures overall and per category with b - a, training time and curves."""
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project)
    detectors = ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.DETECTOR)
    numbers = sorted(detectors.values_list("number", flat=True))

    def pick(key: str, default):
        raw = request.GET.get(key, default)
        try:
            return detectors.select_related("created_by").get(number=int(raw))
        except (TypeError, ValueError, ModelVersion.DoesNotExist):
            raise Http404(f"No detector v{raw} in this project.") from None

    if len(numbers) < 2:
        return render(
            request,
            "models_compare.html",
            {"project": project, "role": role, "too_few": True, "numbers": numbers},
        )
    a = pick("a", numbers[-2])
    b = pick("b", numbers[-1])
    ma, mb = a.metrics or {}, b.metrics or {}
    overall = [
        {
            "name": label,
            "a": ma.get(key),
            "b": mb.get(key),
            "delta": _delta(ma.get(key), mb.get(key)),
        }
        for key, label in (("map50", "mAP50"), ("map", "mAP"), ("ap_small", "AP small"))
    ]
    pa, pb = ma.get("per_class_ap50") or {}, mb.get("per_class_ap50") or {}
    per_category = [
        {
            "name": name,
            "a": pa.get(name),
            "b": pb.get(name),
            "delta": _delta(pa.get(name), pb.get(name)),
        }
        for name in sorted(set(pa) | set(pb), key=str.lower)
    ]

    def shown(value):
        return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value

    def setting(params: dict, key: str):
        if key == "networks" and params.get("reference") == "two-stage":
            return params.get(key, 1)  # two-stage versions trained before it was a choice
        return params.get(key, "none" if key == "reference" else None)  # the same

    settings = [
        (label, shown(setting(a.params, key)), shown(setting(b.params, key)))
        for key, label in (
            ("dataset_number", "Dataset version"),
            ("reference", "Compared with the reference"),
            ("networks", "Networks averaged"),
            ("backbone", "Backbone"),
            ("input_size", "Input size (px)"),
            ("slice", "Slices at full resolution"),
            ("overlap", "Slice overlap"),
            ("epochs", "Epochs"),
            ("batch_size", "Batch size"),
            ("iterations_per_epoch", "Iterations per epoch, at most"),
        )
    ]
    return render(
        request,
        "models_compare.html",
        {
            "project": project,
            "role": role,
            "a": a,
            "b": b,
            "numbers": numbers,
            "settings": settings,
            "overall": overall,
            "per_category": per_category,
            "same_val": a.params.get("dataset_version") == b.params.get("dataset_version"),
            "train": [
                ("Train images", len(a.image_ids), len(b.image_ids)),
                ("Training time (s)", ma.get("seconds"), mb.get("seconds")),
                ("Epochs trained", ma.get("epochs"), mb.get("epochs")),
            ],
        },
    )


def stations_page(request, pk):
    """A project's line stations: their state at a glance; project admins add one."""
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project)
    stations = list(Station.objects.filter(project=project))
    from inspection.services.stations import station_running

    for station in stations:
        station.is_running = station_running(station)
    return render(
        request,
        "stations.html",
        {
            "project": project,
            "role": role,
            "is_admin": role == Role.ADMIN,
            "stations": stations,
            "has_model": active_model(project) is not None,
        },
    )


def station_page(request, pk):
    """One station, live: the latest frame with its verdict, counts, yield over time, latency,
    the last NG frames (to the workspace), events, CSV export; admins change its settings."""
    station = get_object_or_404(Station.objects.select_related("project"), pk=pk)
    role = require_role(request.user, station.project)
    return render(
        request,
        "station.html",
        {"station": station, "project": station.project, "is_admin": role == Role.ADMIN},
    )


@login_required
def regions_page(request, pk):
    """A project's regions of interest on its reference image: each inspected by a model and
    threshold of its own, or excluded. Its script reads and writes them through the API; only
    project admins may change them (the others see them read-only)."""
    project = get_object_or_404(Project, pk=pk)
    role = require_role(request.user, project)
    return render(
        request,
        "regions.html",
        {
            "project": project,
            "role": role,
            "can_edit": role == Role.ADMIN,
            "can_review": has_role(request.user, project, Role.REVIEWER),
            "architectures": list(ARCHITECTURES),
        },
    )
