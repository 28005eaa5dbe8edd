"""Accounts: site admins create users who set their own password through a one-time link,
deactivate and re-invite them; every user changes their password and keeps an API token;
project admins look users up to add them. Pages through the test client, the API with real
token authentication."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-long-new-password-42"


def signed_in(user) -> Client:
    c = Client()
    assert c.login(username=user.username, password=PASSWORD)
    return c


def link_path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def set_password(path: str, password: str = NEW_PASSWORD) -> Client:
    """Follow a set-password link as its receiver would, in a fresh browser."""
    c = Client()
    form = c.get(path, follow=True)
    assert form.status_code == 200 and b"Choose your password" in form.content
    done = c.post(
        form.redirect_chain[-1][0] if form.redirect_chain else path,
        {"new_password1": password, "new_password2": password},
        follow=True,
    )
    assert done.status_code == 200
    return c


def test_site_admin_creates_a_user_who_sets_a_password_and_signs_in(team):
    admin = signed_in(team["site_admin"])
    page = admin.post(
        "/users/", {"action": "create", "username": "anna", "email": "anna@example.com"}
    )
    assert page.status_code == 200
    html = page.content.decode()
    assert "User &#x27;anna&#x27; created." in html or "User 'anna' created." in html
    url = re.search(r'id="password-link-url"[^>]*value="([^"]+)"', html).group(1)
    anna = get_user_model().objects.get(username="anna")
    assert not anna.has_usable_password() and anna.is_active and not anna.is_staff

    # she cannot sign in before choosing a password; the link lets her choose one
    assert not Client().login(username="anna", password="")
    c = set_password(link_path(url))
    home = c.get("/")
    assert home.status_code == 200 and b"anna" in home.content  # signed in by the link
    assert Client().login(username="anna", password=NEW_PASSWORD)

    # the link works once
    again = Client().get(link_path(url), follow=True)
    assert b"This link no longer works" in again.content
    # and the users page now lists her with a password and no projects
    listing = admin.get("/users/").content.decode()
    assert (
        'data-user="anna"' in listing
        and "no password set yet" not in listing.split('data-user="anna"')[1].split("</tr>")[0]
    )


def test_only_site_admins_reach_the_users_page_and_api(team, client_for):
    for who in ("admin", "reviewer", "annotator", "outsider"):
        page = signed_in(team[who]).get("/users/")
        assert page.status_code == 403, who
        assert b"Only site admins manage user accounts" in page.content
        api = client_for(team[who])
        assert api.get("/api/users/").status_code == 403
        r = api.post("/api/users/", {"username": "mallory"}, format="json")
        assert r.status_code == 403 and "site admins" in r.json()["error"]
    assert not get_user_model().objects.filter(username="mallory").exists()
    assert Client().get("/users/").status_code == 302  # to the login page


@pytest.mark.parametrize(
    ("username", "email", "message"),
    [
        ("", "", "A user name is needed."),
        ("has space", "", "letters, digits and @ . + - _ only"),
        ("x" * 151, "", "at most 150 characters"),
        ("ANN", "", "A user named 'ANN' exists already."),  # 'ann' exists: names ignore case
        ("bob", "not-an-address", "is not an e-mail address"),
    ],
)
def test_bad_new_users_are_refused_with_a_reason(team, client_for, username, email, message):
    api = client_for(team["site_admin"])
    before = get_user_model().objects.count()
    r = api.post("/api/users/", {"username": username, "email": email}, format="json")
    assert r.status_code == 400
    assert message in str(r.json()), r.json()
    assert get_user_model().objects.count() == before


def test_api_creates_lists_deactivates_and_reinvites(team, client_for):
    api = client_for(team["site_admin"])
    r = api.post("/api/users/", {"username": "bert", "site_admin": False}, format="json")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["username"] == "bert" and body["has_password"] is False
    assert body["set_password_link"].startswith("http://testserver/account/set-password/")
    set_password(link_path(body["set_password_link"]))

    listed = {u["username"]: u for u in api.get("/api/users/").json()}
    assert listed["bert"]["has_password"] is True
    assert listed["rita"]["projects"] == [{"project": "Bottles", "role": "reviewer"}]
    assert listed["root"]["site_admin"] is True

    # bert's token works until he is deactivated; then neither it nor his password does
    token = APIClient()
    assert (
        token.post(
            "/api/auth/token/", {"username": "bert", "password": NEW_PASSWORD}, format="json"
        ).status_code
        == 200
    )
    key = token.post(
        "/api/auth/token/", {"username": "bert", "password": NEW_PASSWORD}, format="json"
    ).json()["token"]
    scripted = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    assert scripted.get("/api/me/").json()["username"] == "bert"
    r = api.patch(f"/api/users/{body['id']}/", {"is_active": False}, format="json")
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert scripted.get("/api/me/").status_code == 401
    assert not Client().login(username="bert", password=NEW_PASSWORD)
    r = api.post(f"/api/users/{body['id']}/password-link/")
    assert r.status_code == 400 and "deactivated" in r.json()["error"]

    # activated again: the old password works; a new link resets it
    api.patch(f"/api/users/{body['id']}/", {"is_active": True}, format="json")
    assert Client().login(username="bert", password=NEW_PASSWORD)
    link = api.post(f"/api/users/{body['id']}/password-link/").json()["set_password_link"]
    set_password(link_path(link), "another-password-77")
    assert not Client().login(username="bert", password=NEW_PASSWORD)
    assert Client().login(username="bert", password="another-password-77")

    assert api.patch("/api/users/999999/", {"is_active": False}, format="json").status_code == 404
    assert api.get("/api/users/99999999999999999999/").status_code == 404


def test_nobody_locks_out_themselves_or_a_superuser(team, client_for):
    root = team["site_admin"]  # a superuser
    helper = get_user_model().objects.create_user("helper", password=PASSWORD, is_staff=True)
    for who, target, change, reason in (
        (root, root, {"is_active": False}, "yourself"),
        (helper, helper, {"site_admin": False}, "yourself"),
        (helper, root, {"is_active": False}, "superuser"),
        (helper, root, {"site_admin": False}, "superuser"),
    ):
        r = client_for(who).patch(f"/api/users/{target.pk}/", change, format="json")
        assert r.status_code == 400 and reason in r.json()["error"], (who, change)
    assert get_user_model().objects.filter(pk__in=[root.pk, helper.pk], is_active=True).count() == 2
    # another admin's role is the acting admin's to change
    r = client_for(root).patch(f"/api/users/{helper.pk}/", {"site_admin": False}, format="json")
    assert r.status_code == 200 and r.json()["site_admin"] is False
    helper.refresh_from_db()
    assert client_for(helper).get("/api/users/").status_code == 403


def test_every_user_changes_their_password_and_keeps_one_api_token(team):
    ann = team["annotator"]
    c = signed_in(ann)
    page = c.get("/account/")
    assert page.status_code == 200 and b"You have no API token." in page.content
    wrong = c.post(
        "/account/",
        {
            "action": "password",
            "old_password": "nope",
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
    )
    assert b"Your old password was entered incorrectly" in wrong.content
    done = c.post(
        "/account/",
        {
            "action": "password",
            "old_password": PASSWORD,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
        follow=True,
    )
    assert b"Password changed." in done.content
    assert c.get("/account/").status_code == 200  # still signed in on this browser
    assert Client().login(username="ann", password=NEW_PASSWORD)

    created = c.post("/account/", {"action": "token-create"}).content.decode()
    key = re.search(r'id="token-key">([0-9a-f]{40})<', created).group(1)
    scripted = APIClient(HTTP_AUTHORIZATION=f"Token {key}")
    assert scripted.get("/api/me/").json()["username"] == "ann"
    # a new token revokes the old one; revoking leaves none
    second = c.post("/account/", {"action": "token-create"}).content.decode()
    key2 = re.search(r'id="token-key">([0-9a-f]{40})<', second).group(1)
    assert key2 != key and scripted.get("/api/me/").status_code == 401
    assert b"A token exists, created" in c.get("/account/").content
    c.post("/account/", {"action": "token-revoke"})
    assert APIClient(HTTP_AUTHORIZATION=f"Token {key2}").get("/api/me/").status_code == 401
    assert b"You have no API token." in c.get("/account/").content


def test_project_admins_look_users_up_to_add_them(team, client_for):
    get_user_model().objects.create_user("annabel", password=PASSWORD)
    get_user_model().objects.create_user("annika", password=PASSWORD, is_active=False)
    r = client_for(team["admin"]).get("/api/users/names/", {"search": "ANN"})
    assert r.status_code == 200 and r.json() == {"usernames": ["ann", "annabel"]}
    for who in ("reviewer", "annotator", "outsider"):
        r = client_for(team[who]).get("/api/users/names/", {"search": "ann"})
        assert r.status_code == 403, who
    # the settings page wires the lookup; adding a stranger says where accounts come from
    page = signed_in(team["admin"]).post(
        f"/projects/{team['project'].pk}/settings/",
        {"action": "set-member", "username": "nobody", "role": "annotator"},
        follow=True,
    )
    assert b"Site admins create accounts on the Users page." in page.content
    assert b'id="member-username"' in page.content


def test_the_topbar_links_account_and_users(team):
    html = signed_in(team["annotator"]).get("/").content.decode()
    assert 'href="/account/"' in html and 'href="/users/"' not in html
    html = signed_in(team["site_admin"]).get("/").content.decode()
    assert 'href="/users/"' in html
