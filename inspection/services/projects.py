"""Projects and memberships."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from inspection.models import Membership, Project, Role
from inspection.permissions import forget_cached_roles, is_site_admin, require_role


def project_create(*, user, name: str, description: str = "") -> Project:
    """Create a project; its creator becomes its admin."""
    if not (is_site_admin(user) or settings.LOUPE_ANY_USER_CAN_CREATE_PROJECTS):
        raise PermissionDenied("Only site admins may create projects.")
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A project needs a name."})
    if Project.objects.filter(name__iexact=name).exists():
        raise ValidationError({"name": f"A project named '{name}' already exists."})
    with transaction.atomic():
        project = Project.objects.create(name=name, description=description, created_by=user)
        Membership.objects.create(project=project, user=user, role=Role.ADMIN)
    forget_cached_roles(user)
    return project


def project_update(
    *,
    user,
    project: Project,
    name: str | None = None,
    description: str | None = None,
    auto_inspect: bool | None = None,
) -> Project:
    """Rename or describe a project, or switch inspection of new uploads (project admins)."""
    require_role(user, project, Role.ADMIN)
    if name is not None:
        name = name.strip()
        if not name:
            raise ValidationError({"name": "A project needs a name."})
        if Project.objects.filter(name__iexact=name).exclude(pk=project.pk).exists():
            raise ValidationError({"name": f"A project named '{name}' already exists."})
        project.name = name
    if description is not None:
        project.description = description
    if auto_inspect is not None:
        project.auto_inspect = auto_inspect
    project.save()
    return project


def project_delete(*, user, project: Project) -> None:
    """Delete a project with everything in it (project admins)."""
    require_role(user, project, Role.ADMIN)
    from django.db import transaction

    from inspection.services.images import image_files_delete
    from inspection.storage import delete_tree

    images = list(project.images.all())
    pk = project.pk
    with transaction.atomic():
        project.delete()

        def _remove_files() -> None:
            for image in images:
                image_files_delete(image=image)
            delete_tree(f"projects/{pk}")  # models, exports, imports, heatmaps

        transaction.on_commit(_remove_files)


def member_set(*, user, project: Project, username: str, role: str) -> Membership:
    """Add a member or change their role (project admins)."""
    require_role(user, project, Role.ADMIN)
    if role not in Role.values:
        raise ValidationError(
            {"role": f"Unknown role '{role}'; use one of {', '.join(Role.values)}."}
        )
    target = get_user_model().objects.filter(username=username).first()
    if target is None:
        raise ValidationError({"username": f"No user named '{username}'."})
    membership, created = Membership.objects.get_or_create(
        project=project, user=target, defaults={"role": role}
    )
    if not created and membership.role != role:
        _ensure_admin_left(project, membership, new_role=role)
        membership.role = role
        membership.save(update_fields=["role"])
    forget_cached_roles(target)
    return membership


def member_remove(*, user, project: Project, username: str) -> None:
    """Remove a member (project admins). The last admin cannot be removed."""
    require_role(user, project, Role.ADMIN)
    membership = Membership.objects.filter(project=project, user__username=username).first()
    if membership is None:
        raise ValidationError({"username": f"'{username}' is not a member of this project."})
    _ensure_admin_left(project, membership, new_role=None)
    try:
        membership.delete()
    except IntegrityError as exc:  # pragma: no cover - defensive
        raise ValidationError(str(exc)) from exc


def _ensure_admin_left(project: Project, membership: Membership, *, new_role: str | None) -> None:
    if membership.role == Role.ADMIN and new_role != Role.ADMIN:
        others = project.memberships.filter(role=Role.ADMIN).exclude(pk=membership.pk).exists()
        if not others:
            raise ValidationError({"role": "A project must keep at least one admin."})
