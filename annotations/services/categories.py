"""Defect categories of a project: create, rename, delete, and get-or-create for importers."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import ProtectedError

from annotations.models import DefectCategory
from inspection.models import Project, Role
from inspection.permissions import require_role

PALETTE = [
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#fabebe",
    "#008080",
    "#e6beff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
]


#: Letters the workspace keeps for itself (static/loupe/workspace/keys.js: tools, overlays,
#: verdicts, next/previous): a category on one of them could never be chosen by its key there.
#: tests/annotations/test_category_keys.py checks this against keys.js.
WORKSPACE_KEYS = {
    "b": "box tool",
    "d": "difference overlay",
    "f": "flicker to the reference",
    "g": "polygon tool",
    "h": "heatmap",
    "i": "regions of interest",
    "n": "next image",
    "o": "verdict OK",
    "p": "previous image",
    "r": "verdict needs review",
    "s": "suggestions",
    "v": "select tool",
}


def _validate(category: DefectCategory) -> None:
    try:
        category.full_clean(exclude=["project"])
    except ValidationError as exc:
        raise ValidationError(exc.message_dict) from None
    clash = DefectCategory.objects.filter(project=category.project).exclude(pk=category.pk)
    if clash.filter(name__iexact=category.name).exists():
        raise ValidationError(
            {"name": f"The project already has a category named '{category.name}'."}
        )
    if category.shortcut in WORKSPACE_KEYS:
        raise ValidationError(
            {
                "shortcut": f"Key '{category.shortcut}' is the workspace's own "
                f"({WORKSPACE_KEYS[category.shortcut]}): choose a digit or another letter "
                f"(not {', '.join(sorted(WORKSPACE_KEYS))})."
            }
        )
    if category.shortcut and clash.filter(shortcut=category.shortcut).exists():
        raise ValidationError(
            {"shortcut": f"Key '{category.shortcut}' is taken by another category."}
        )


def next_free_shortcut(project: Project) -> str:
    taken = set(DefectCategory.objects.filter(project=project).values_list("shortcut", flat=True))
    return next((k for k in "123456789" if k not in taken), "")


def category_create(
    *, user, project: Project, name: str, color: str = "", shortcut: str | None = None
) -> DefectCategory:
    """Add a defect category (project admins). Colour and key default to the next free ones."""
    if user is not None:
        require_role(user, project, Role.ADMIN)
    category = DefectCategory(
        project=project,
        name=(name or "").strip(),
        color=color or next_color(project),
        shortcut=next_free_shortcut(project) if shortcut is None else shortcut.strip().lower(),
    )
    _validate(category)
    category.save()
    return category


def next_color(project: Project) -> str:
    """The palette's colour for the project's next category (they cycle)."""
    return PALETTE[DefectCategory.objects.filter(project=project).count() % len(PALETTE)]


def category_update(
    *,
    user,
    category: DefectCategory,
    name: str | None = None,
    color: str | None = None,
    shortcut: str | None = None,
) -> DefectCategory:
    """Rename, recolour or re-key a category (project admins)."""
    require_role(user, category.project, Role.ADMIN)
    if name is not None:
        category.name = name.strip()
    if color is not None:
        category.color = color
    if shortcut is not None:
        category.shortcut = shortcut.strip().lower()
    _validate(category)
    category.save()
    return category


def category_delete(*, user, category: DefectCategory) -> None:
    """Delete a category that no annotation uses (project admins)."""
    require_role(user, category.project, Role.ADMIN)
    try:
        category.delete()
    except ProtectedError:
        n = category.annotations.count()
        raise ValidationError(
            f"'{category.name}' is used by {n} annotation(s); relabel or delete them first."
        ) from None


def categories_by_name(project: Project) -> dict[str, DefectCategory]:
    """The project's categories by lower-cased name: names are matched ignoring case (and are
    unique that way: ``_validate``)."""
    return {c.name.lower(): c for c in DefectCategory.objects.filter(project=project)}


def category_get_or_create(*, project: Project, name: str) -> DefectCategory:
    """The category called ``name`` (any case), created when missing. For importers."""
    found = DefectCategory.objects.filter(project=project, name__iexact=name).first()
    return found or category_create(user=None, project=project, name=name)


def category_of(project: Project, category_id) -> DefectCategory:
    """The project's category with this id, or a ValidationError on the ``category`` field."""
    category = (
        DefectCategory.objects.filter(project=project, pk=category_id).first()
        if category_id
        else None
    )
    if category is None:
        raise ValidationError({"category": f"Unknown category {category_id!r} for this project."})
    return category
