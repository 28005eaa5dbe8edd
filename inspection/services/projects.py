"""Projects and memberships."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from inspection.models import Membership, Project, Role
from inspection.permissions import forget_cached_roles, is_site_admin, require_role


def _name_taken(user, name: str, exclude: int | None = None) -> bool:
    """Whether ``user`` already sees a project called ``name`` (case-insensitive). Names are
    unique among the projects a user can see, not site-wide: a refusal for a project the user
    cannot see would tell them it exists."""
    from inspection.selectors import projects_visible_to

    taken = projects_visible_to(user).filter(name__iexact=name)
    if exclude is not None:
        taken = taken.exclude(pk=exclude)
    return taken.exists()


def project_create(*, user, name: str, description: str = "") -> Project:
    """Create a project; its creator becomes its admin."""
    if not (is_site_admin(user) or settings.LOUPE_ANY_USER_CAN_CREATE_PROJECTS):
        raise PermissionDenied("Only site admins may create projects.")
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A project needs a name."})
    if _name_taken(user, name):
        raise ValidationError({"name": f"You already have a project named '{name}'."})
    with transaction.atomic():
        project = Project.objects.create(name=name, description=description, created_by=user)
        Membership.objects.create(project=project, user=user, role=Role.ADMIN)
    forget_cached_roles(user)
    return project


# How an inspection turns heatmaps into suggestions. Scores are calibrated: 0.5 is the pixel
# threshold learnt from the normal images; areas are in the original image's pixels. The
# specular mask ignores bright, colourless pixels (HSV value above v_min, saturation below
# s_max, on 0-255 scales) before scoring: reflections on glossy parts.
INSPECTION_DEFAULTS = {
    "threshold": 0.5,
    "min_area": 64,
    "max_regions": 20,
    "specular_mask": False,
    "specular_v_min": 240,
    "specular_s_max": 30,
    # with regions of interest (services.regions): whether the area outside every region is
    # inspected with the project's model ("inspect") or never suggested ("ignore")
    "outside_regions": "inspect",
    # a detector's runs: each image predicted in this many orientations (1, the mirror too,
    # all flips, all eight), the boxes fused (workers.detection.predict_views): DeepPCB's mAP50
    # +0.05 to +0.08 with 4, for 4 times the time (docs/benchmarks-detection.md)
    "detector_views": 1,
}
DETECTOR_VIEWS = (1, 2, 4, 8)
_INSPECTION_RANGES = {
    "threshold": (0.05, 10.0),
    "min_area": (0, 10_000_000),
    "max_regions": (1, 500),
    # the mask is value > v_min and saturation < s_max: 255 or 0 would mask nothing
    "specular_v_min": (0, 254),
    "specular_s_max": (1, 255),
}


def with_inspection_defaults(values: dict | None) -> dict:
    """Stored inspection settings (a project's, or a run's ``params``), defaults filled in."""
    return {**INSPECTION_DEFAULTS, **(values or {})}


def inspection_settings(project: Project) -> dict:
    """The project's inspection settings, defaults filled in."""
    return with_inspection_defaults(project.inspection)


def is_number(value) -> bool:
    """An int or float from JSON, not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _checked_inspection(values) -> dict:
    if not isinstance(values, dict):
        raise ValidationError({"inspection": 'An object of settings, e.g. {"threshold": 0.6}.'})
    unknown = set(values) - set(INSPECTION_DEFAULTS)
    if unknown:
        known = ", ".join(INSPECTION_DEFAULTS)
        raise ValidationError(
            {"inspection": f"Unknown setting(s): {', '.join(sorted(unknown))} (known: {known})."}
        )
    for key, value in values.items():
        if key == "specular_mask":
            if not isinstance(value, bool):
                raise ValidationError({"inspection": "specular_mask is true or false."})
            continue
        if key == "outside_regions":
            if value not in ("inspect", "ignore"):
                raise ValidationError({"inspection": "outside_regions is inspect or ignore."})
            continue
        if key == "detector_views":
            if type(value) is not int or value not in DETECTOR_VIEWS:
                raise ValidationError(
                    {
                        "inspection": "detector_views is 1, 2, 4 or 8: the orientations a "
                        "detector predicts each image in (1: as it is; 2: and mirrored; 4: "
                        "every flip; 8: every flip turned a quarter too)."
                    }
                )
            continue
        lo, hi = _INSPECTION_RANGES[key]
        whole = key == "max_regions"
        if not is_number(value) or not lo <= value <= hi or (whole and value != int(value)):
            kind = "a whole number" if whole else "a number"
            raise ValidationError({"inspection": f"{key} must be {kind} from {lo} to {hi}."})
    if "max_regions" in values:
        values = {**values, "max_regions": int(values["max_regions"])}
    return values


UNCHANGED = object()  # project_update: a setting not given (None turns retraining off)
RETRAIN_MAX = 1_000_000


def project_update(
    *,
    user,
    project: Project,
    name: str | None = None,
    description: str | None = None,
    auto_inspect: bool | None = None,
    inspection: dict | None = None,
    retrain_after_labels: int | None | object = UNCHANGED,
    reference_rule: str | None = None,
) -> Project:
    """Rename or describe a project, switch inspection of new uploads, change how
    inspections make suggestions (``inspection``: some of INSPECTION_DEFAULTS' keys), or set
    after how many new approved labels the detector is trained again (None: never; project
    admins), or how uploads are paired with references by file name (``reference_rule``,
    services.references). Settings apply to runs and uploads started afterwards."""
    require_role(user, project, Role.ADMIN)
    fields = []
    if reference_rule is not None:
        from inspection.services.references import parse_name_rule

        parse_name_rule(reference_rule)  # refuses a malformed rule
        project.reference_rule = reference_rule.strip()
        fields.append("reference_rule")
    if retrain_after_labels is not UNCHANGED:
        n = retrain_after_labels
        if n is not None and not (
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= RETRAIN_MAX
        ):
            raise ValidationError(
                {
                    "retrain_after_labels": f"A whole number of labels from 1 to {RETRAIN_MAX}, "
                    "or empty to never retrain automatically."
                }
            )
        project.retrain_after_labels = n
        fields.append("retrain_after_labels")
    if name is not None:
        name = name.strip()
        if not name:
            raise ValidationError({"name": "A project needs a name."})
        if _name_taken(user, name, exclude=project.pk):
            raise ValidationError({"name": f"You already have a project named '{name}'."})
        project.name = name
        fields.append("name")
    if description is not None:
        project.description = description
        fields.append("description")
    if auto_inspect is not None:
        project.auto_inspect = auto_inspect
        fields.append("auto_inspect")
    checked = _checked_inspection(inspection) if inspection is not None else None
    with transaction.atomic():
        # two admins saving at once: each merges into what the other stored, and only the
        # fields given are written
        if checked is not None:
            stored = Project.objects.select_for_update().get(pk=project.pk).inspection
            project.inspection = {**(stored or {}), **checked}
            fields.append("inspection")
        if fields:
            project.save(update_fields=fields)
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
        # images first: their labels go with them, so the categories the labels protect
        # (a label never loses its category) can go with the project (it was a 500)
        project.images.all().delete()
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
        raise ValidationError(
            {
                "username": f"No user named '{username}'. Site admins create accounts on the Users page."
            }
        )
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
