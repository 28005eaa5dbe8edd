"""Reads that several places share."""

from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet

from inspection.models import Job, Project
from inspection.permissions import is_site_admin


def projects_visible_to(user) -> QuerySet[Project]:
    if is_site_admin(user):
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()


def jobs_visible_to(user) -> QuerySet[Job]:
    if is_site_admin(user):
        return Job.objects.all()
    # a project's jobs are for its members only (a removed member loses them with the project)
    return Job.objects.filter(
        Q(project__memberships__user=user) | Q(project__isnull=True, created_by=user)
    ).distinct()


def import_path_allowed(user, raw: str) -> Path:
    """A server folder a site admin may import from: it must lie under LOUPE_IMPORT_ROOTS."""
    if not is_site_admin(user):
        raise PermissionDenied(
            "Only site admins may import from a folder on the server; upload a zip instead."
        )
    path = Path(raw).expanduser().resolve()
    roots = [r.resolve() for r in settings.LOUPE_IMPORT_ROOTS]
    if not any(path == r or r in path.parents for r in roots):
        raise ValidationError(
            {"path": "This folder is not under an allowed import root (LOUPE_IMPORT_ROOTS)."}
        )
    if not path.is_dir():
        raise ValidationError({"path": f"No folder at {path}."})
    return path
