"""Who may do what in a project. Services call ``require_role``; views never decide on their own.

Roles rank annotator < reviewer < admin. Site admins (staff or superusers) act as project admins
everywhere. A user with no role in a project is told the project does not exist (404), so
project names and contents never leak; a member whose role is too low gets 403.
"""

from django.core.exceptions import PermissionDenied
from django.http import Http404

from .models import ROLE_RANK, Membership, Project, Role


def is_site_admin(user) -> bool:
    return bool(user and user.is_authenticated and (user.is_superuser or user.is_staff))


def role_of(user, project: Project) -> str | None:
    """The user's effective role in ``project``, or None for a non-member."""
    if not user or not user.is_authenticated:
        return None
    if is_site_admin(user):
        return Role.ADMIN
    cache = getattr(user, "_loupe_roles", None)
    if cache is None:
        cache = user._loupe_roles = {}
    if project.pk not in cache:
        cache[project.pk] = (
            Membership.objects.filter(project=project, user=user)
            .values_list("role", flat=True)
            .first()
        )
    return cache[project.pk]


def has_role(user, project: Project, minimum: str) -> bool:
    role = role_of(user, project)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[minimum]


def require_role(user, project: Project, minimum: str = Role.ANNOTATOR) -> str:
    """Raise Http404 for non-members and PermissionDenied when the role is too low."""
    role = role_of(user, project)
    if role is None:
        raise Http404("No such project.")
    if ROLE_RANK[role] < ROLE_RANK[minimum]:
        raise PermissionDenied(
            f"This needs the {Role(minimum).label.lower()} role in project '{project.name}'; "
            f"you are {Role(role).label.lower()}."
        )
    return role


def forget_cached_roles(user) -> None:
    if hasattr(user, "_loupe_roles"):
        del user._loupe_roles
