"""Accounts: site admins create, deactivate and re-invite users; every user keeps their own
password and API token. The one owner of these rules (pages and API call it).

A new user gets no password from the admin: the admin hands over a one-time *set-password
link* (Django's password-reset token: it stops working once a password is set, after a login,
or after ``PASSWORD_RESET_TIMEOUT``, 3 days by default). Nothing is e-mailed, so it works on a
factory network without a mail server; the link is shown to the admin once. The same link
resets a forgotten password. API tokens are DRF's ``authtoken``: one per user, shown once when
created; creating another revokes the old one.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from rest_framework.authtoken.models import Token

from inspection.models import Membership, Role
from inspection.permissions import is_site_admin

SEARCH_LIMIT = 20


def _require_site_admin(user) -> None:
    if not is_site_admin(user):
        raise PermissionDenied("Only site admins manage user accounts.")


def set_password_path(user) -> str:
    """The one-time link (path) with which ``user`` sets a password."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse(
        "password-set", kwargs={"uidb64": uid, "token": default_token_generator.make_token(user)}
    )


def user_create(*, by, username: str, email: str = "", site_admin: bool = False):
    """Create an active user without a usable password; returns (user, set-password path)."""
    _require_site_admin(by)
    username = (username or "").strip()
    email = (email or "").strip()
    errors = {}
    if not username:
        errors["username"] = "A user name is needed."
    elif len(username) > 150:
        errors["username"] = "A user name has at most 150 characters."
    else:
        try:
            UnicodeUsernameValidator()(username)
        except ValidationError:
            errors["username"] = (
                "A user name may hold letters, digits and @ . + - _ only (no spaces)."
            )
    User = get_user_model()
    if "username" not in errors and User.objects.filter(username__iexact=username).exists():
        errors["username"] = f"A user named '{username}' exists already."
    if email:
        try:
            validate_email(email)
        except ValidationError:
            errors["email"] = f"'{email[:100]}' is not an e-mail address."
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        user = User(username=username, email=email, is_staff=bool(site_admin))
        user.set_unusable_password()
        user.save()
    return user, set_password_path(user)


def user_password_link(*, by, user) -> str:
    """A new set-password link for ``user`` (a forgotten password, a lost invitation). The
    current password keeps working until the new one is set."""
    _require_site_admin(by)
    if not user.is_active:
        raise ValidationError({"user": f"'{user.username}' is deactivated; activate them first."})
    return set_password_path(user)


def user_update(*, by, user, is_active: bool | None = None, site_admin: bool | None = None):
    """Deactivate or activate an account, give or take the site-admin role. A deactivated user
    cannot sign in, and their sessions and API token stop working; their labels, reviews and
    memberships stay. Nobody deactivates themselves or drops their own role (so the acting
    admin always remains), and superusers are changed in the Django admin only."""
    _require_site_admin(by)
    if user.pk == by.pk and (is_active is False or site_admin is False):
        raise ValidationError(
            {"user": "You cannot deactivate yourself or drop your own admin role."}
        )
    if user.is_superuser and (is_active is False or site_admin is False):
        raise ValidationError(
            {"user": f"'{user.username}' is a superuser; change that in the Django admin."}
        )
    fields = []
    if is_active is not None and user.is_active != is_active:
        user.is_active = is_active
        fields.append("is_active")
    if site_admin is not None and user.is_staff != site_admin:
        user.is_staff = site_admin
        fields.append("is_staff")
    if fields:
        user.save(update_fields=fields)
    if is_active is False:
        Token.objects.filter(user=user).delete()
    return user


def users_overview(*, by, pk: int | None = None):
    """Every account (or the one ``pk``) with ``project_roles`` [(project name, role)] and
    ``site_admin``, for the users page and API."""
    _require_site_admin(by)
    users = get_user_model().objects.order_by("username")
    if pk is not None:
        users = users.filter(pk=pk)
    users = list(users)
    roles: dict[int, list[tuple[str, str]]] = {}
    members = Membership.objects.filter(user__in=users).select_related("project")
    for m in members.order_by("project__name"):
        roles.setdefault(m.user_id, []).append((m.project.name, m.role))
    for u in users:
        u.project_roles = roles.get(u.pk, [])
        u.site_admin = is_site_admin(u)
    return users


def users_search(*, by, query: str) -> list[str]:
    """Active user names containing ``query`` (at most 20), for adding members: site admins and
    admins of some project only (they are the ones who add people)."""
    if not is_site_admin(by) and not Membership.objects.filter(user=by, role=Role.ADMIN).exists():
        raise PermissionDenied("Only project admins look up users.")
    query = (query or "").strip()[:150]
    qs = get_user_model().objects.filter(is_active=True)
    if query:
        qs = qs.filter(username__icontains=query)
    return list(qs.order_by("username").values_list("username", flat=True)[:SEARCH_LIMIT])


def token_create(*, user) -> str:
    """A new API token for ``user`` (the old one, if any, stops working); returns its key."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user).key


def token_revoke(*, user) -> bool:
    """Revoke ``user``'s API token; False when there was none."""
    deleted, _ = Token.objects.filter(user=user).delete()
    return bool(deleted)


def token_of(user):
    """The user's token row (for its creation date), or None."""
    return Token.objects.filter(user=user).first()
