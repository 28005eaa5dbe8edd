"""Pages of accounts: the users page (site admins), one's own account (password, API token)
and the one-time set-password page. The rules are in inspection/services/accounts.py."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse_lazy

from inspection.permissions import is_site_admin
from inspection.services import accounts
from inspection.views import form_errors


@login_required
def users_page(request):
    """Site admins: every account with its projects and roles; create, deactivate, activate,
    make or unmake site admin, and hand out a set-password link."""
    if not is_site_admin(request.user):
        raise PermissionDenied(
            "Only site admins manage user accounts. Ask one to add people; project admins add "
            "existing users to their project on its settings page."
        )
    link = None
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "create":
                user, path = accounts.user_create(
                    by=request.user,
                    username=request.POST.get("username", ""),
                    email=request.POST.get("email", ""),
                    site_admin=request.POST.get("site_admin") == "on",
                )
                link = {"user": user, "url": request.build_absolute_uri(path), "new": True}
                messages.success(request, f"User '{user.username}' created.")
            else:
                target = _user_or_404(request.POST.get("user"))
                if action == "link":
                    path = accounts.user_password_link(by=request.user, user=target)
                    link = {"user": target, "url": request.build_absolute_uri(path), "new": False}
                elif action in ("deactivate", "activate"):
                    accounts.user_update(
                        by=request.user, user=target, is_active=action == "activate"
                    )
                    messages.success(request, f"'{target.username}' {action}d.")
                elif action in ("make-admin", "drop-admin"):
                    accounts.user_update(
                        by=request.user, user=target, site_admin=action == "make-admin"
                    )
                    messages.success(
                        request,
                        f"'{target.username}' is "
                        + ("now a site admin." if action == "make-admin" else "no site admin now."),
                    )
                else:
                    messages.error(request, f"Unknown action '{action[:40]}'.")
        except ValidationError as exc:
            messages.error(request, form_errors(exc))
        if link is None:
            return redirect("users")
    return render(
        request,
        "users.html",
        {
            "users": accounts.users_overview(by=request.user),
            "link": link,
            "link_days": max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
        },
    )


def _user_or_404(raw):
    try:
        return get_user_model().objects.get(pk=int(raw))
    except (TypeError, ValueError, OverflowError, get_user_model().DoesNotExist):
        raise Http404("No such user.") from None


@login_required
def account_page(request):
    """One's own account: change the password, create or revoke the API token."""
    form = PasswordChangeForm(request.user)
    new_key = None
    if request.method == "POST":
        action = request.POST.get("action", "")
        if action == "password":
            form = PasswordChangeForm(request.user, request.POST)
            if form.is_valid():
                form.save()
                update_session_auth_hash(request, form.user)  # stay signed in here
                messages.success(request, "Password changed.")
                return redirect("account")
        elif action == "token-create":
            new_key = accounts.token_create(user=request.user)
        elif action == "token-revoke":
            if accounts.token_revoke(user=request.user):
                messages.success(request, "API token revoked: scripts using it get 401 now.")
            return redirect("account")
    return render(
        request,
        "account.html",
        {"form": form, "token": accounts.token_of(request.user), "new_key": new_key},
    )


class PasswordSetView(auth_views.PasswordResetConfirmView):
    """The one-time set-password link: a new user chooses a password (or a user who forgot it
    chooses a new one) and is signed in."""

    template_name = "registration/password_set.html"
    post_reset_login = True
    success_url = reverse_lazy("home")

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(self.request, f"Password set. Welcome, {form.user.username}.")
        return response
