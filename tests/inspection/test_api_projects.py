"""Projects, categories and members through the API, and the permission matrix."""

import pytest

from inspection.models import Membership, Project

pytestmark = pytest.mark.django_db


def test_create_project_makes_the_creator_its_admin(make_user, client_for):
    alice = make_user("alice")
    r = client_for(alice).post(
        "/api/projects/", {"name": "Caps", "description": "bottle caps"}, format="json"
    )
    assert r.status_code == 201, r.content
    assert r.json()["my_role"] == "admin"
    assert Membership.objects.get(project__name="Caps", user=alice).role == "admin"
    r = client_for(alice).post("/api/projects/", {"name": "caps"}, format="json")
    assert r.status_code == 400
    assert "already have a project named" in r.json()["error"]


def test_a_project_name_taken_by_others_does_not_leak(team, client_for, tmp_path):
    """Names are unique among the projects one can see: refusing 'Bottles' to an outsider
    would tell them that a project of that name exists (docs/permissions.md)."""
    outsider = client_for(team["outsider"])
    r = outsider.post("/api/projects/", {"name": "Bottles"}, format="json")
    assert r.status_code == 201, r.content
    assert [p["name"] for p in outsider.get("/api/projects/").json()["results"]] == ["Bottles"]
    assert Project.objects.filter(name="Bottles").count() == 2
    # within what one sees, a name is still unique: create and rename refuse it
    r = client_for(team["admin"]).post("/api/projects/", {"name": "BOTTLES"}, format="json")
    assert r.status_code == 400 and "already have a project named" in r.json()["error"]
    caps = client_for(team["admin"]).post("/api/projects/", {"name": "Caps"}, format="json")
    r = client_for(team["admin"]).patch(
        f"/api/projects/{caps.json()['id']}/", {"name": "bottles"}, format="json"
    )
    assert r.status_code == 400 and "already have a project named" in r.json()["error"]
    # a site admin sees both; the import command refuses to guess which one is meant
    from django.core.management import CommandError, call_command

    source = tmp_path / "labels.json"
    source.write_text("{}")
    with pytest.raises(CommandError, match="2 projects named 'Bottles'"):
        call_command(
            "import_dataset",
            str(source),
            "--format",
            "coco",
            "--project",
            "Bottles",
            "--user",
            "root",
        )


def test_a_project_with_labels_can_be_deleted(team, client_for, upload):
    """Its labels protect their categories; deleting the project deletes both (it was a 500)."""
    from annotations.models import Annotation, DefectCategory
    from annotations.services.categories import category_create
    from tests.conftest import image_bytes

    admin = client_for(team["admin"])
    pk = team["project"].pk
    r = admin.post(
        f"/api/projects/{pk}/images/",
        {"files": [upload("a.png", image_bytes())]},
        format="multipart",
    )
    image = r.json()["files"][0]["image_id"]
    cat = category_create(user=team["admin"], project=team["project"], name="scratch")
    geometry = {"type": "box", "x": 1, "y": 1, "w": 5, "h": 5}
    r = admin.post(
        f"/api/images/{image}/annotations/",
        {"category": cat.pk, "geometry": geometry},
        format="json",
    )
    assert r.status_code == 201
    assert client_for(team["reviewer"]).delete(f"/api/projects/{pk}/").status_code == 403
    assert admin.delete(f"/api/projects/{pk}/").status_code == 204
    assert not Project.objects.filter(pk=pk).exists()
    assert not Annotation.objects.exists() and not DefectCategory.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "/api/projects/abc/",
        "/api/images/abc/",
        "/api/models/abc/",
        "/api/jobs/abc/",
        "/api/annotations/abc/",
        "/api/suggestions/abc/accept/",
    ],
)
def test_a_non_numeric_id_is_a_404(team, client_for, url):
    r = client_for(team["admin"]).generic("GET" if "accept" not in url else "POST", url)
    assert r.status_code == 404 and r.json()["error"]


def test_paging_beyond_what_the_database_can_count_is_not_a_500(team, client_for):
    client = client_for(team["admin"])
    r = client.get("/api/projects/?limit=99999999999999999999999")
    assert r.status_code == 200 and [p["name"] for p in r.json()["results"]] == ["Bottles"]
    r = client.get("/api/projects/?offset=99999999999999999999999")
    assert r.status_code == 200 and r.json()["results"] == [] and r.json()["count"] == 1
    pk = team["project"].pk
    r = client.get(f"/api/projects/{pk}/images/?offset=99999999999999999999999&limit=5")
    assert r.status_code == 200 and r.json()["results"] == []


@pytest.mark.parametrize(
    "query, field",
    [
        ("offset=abc", "offset"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("offset=²", "offset"),
    ],
)
def test_paging_that_is_not_a_whole_number_is_a_400(team, client_for, query, field):
    """Schemathesis: `?offset=abc` was read as 0 and gave the first page (a typo passed for a
    page); it says what is wrong instead."""
    r = client_for(team["admin"]).get(f"/api/projects/?{query}")
    assert r.status_code == 400 and field in r.json()["detail"], r.content


def test_actions_answer_only_their_own_methods(team, client_for):
    """DELETE on /activate/ must not delete the model version (it once did)."""
    from inspection.models import ModelVersion

    version = ModelVersion.objects.create(
        project=team["project"], number=1, architecture="padim", status="ready"
    )
    client = client_for(team["admin"])
    for method in ("delete", "put", "patch", "get"):
        r = getattr(client, method)(f"/api/models/{version.pk}/activate/")
        assert r.status_code == 405, (method, r.status_code)
    assert ModelVersion.objects.filter(pk=version.pk).exists()


def test_project_list_shows_only_my_projects(team, client_for):
    Project.objects.create(name="Secret")
    names = [
        p["name"] for p in client_for(team["annotator"]).get("/api/projects/").json()["results"]
    ]
    assert names == ["Bottles"]
    names = [
        p["name"] for p in client_for(team["site_admin"]).get("/api/projects/").json()["results"]
    ]
    assert names == ["Bottles", "Secret"]
    assert client_for(team["outsider"]).get("/api/projects/").json()["results"] == []


def test_unauthenticated_requests_are_refused_as_json(team, client_for):
    r = client_for(None).get("/api/projects/")
    assert r.status_code in (401, 403)
    assert "credentials" in r.json()["error"].lower()


def test_categories_with_colour_and_key(team, client_for):
    admin, project = team["admin"], team["project"]
    url = f"/api/projects/{project.pk}/categories/"
    r = client_for(admin).post(
        url, {"name": "scratch", "color": "#ff0000", "shortcut": "x"}, format="json"
    )
    assert r.status_code == 201, r.content
    r = client_for(admin).post(url, {"name": "dent"}, format="json")
    assert r.json()["shortcut"] == "1" and r.json()["color"].startswith("#")
    r = client_for(admin).post(url, {"name": "Scratch"}, format="json")
    assert r.status_code == 400 and "already has a category" in r.json()["error"]
    r = client_for(admin).post(url, {"name": "chip", "shortcut": "x"}, format="json")
    assert r.status_code == 400 and "taken" in r.json()["error"]
    # a key the workspace uses itself would never reach the category there
    r = client_for(admin).post(url, {"name": "chip", "shortcut": "f"}, format="json")
    assert r.status_code == 400 and "flicker to the reference" in r.json()["error"]
    r = client_for(admin).post(url, {"name": "bad", "color": "red"}, format="json")
    assert r.status_code == 400 and "colour" in r.json()["error"].lower()
    got = client_for(team["annotator"]).get(url).json()
    assert [c["name"] for c in got] == ["dent", "scratch"]
    cid = got[1]["id"]
    r = client_for(admin).patch(f"{url}{cid}/", {"color": "#00ff00"}, format="json")
    assert r.status_code == 200 and r.json()["color"] == "#00ff00"
    assert client_for(admin).delete(f"{url}{cid}/").status_code == 204


def test_members_roles_and_last_admin(team, client_for):
    admin, project = team["admin"], team["project"]
    url = f"/api/projects/{project.pk}/members/"
    r = client_for(admin).post(url, {"username": "otto", "role": "reviewer"}, format="json")
    assert r.status_code == 201
    r = client_for(admin).post(url, {"username": "otto", "role": "annotator"}, format="json")
    assert r.json()["role"] == "annotator"
    r = client_for(admin).post(url, {"username": "nobody", "role": "annotator"}, format="json")
    assert r.status_code == 400 and "No user named" in r.json()["error"]
    r = client_for(admin).post(url, {"username": "otto", "role": "boss"}, format="json")
    assert r.status_code == 400
    members = {m["username"]: m["role"] for m in client_for(team["annotator"]).get(url).json()}
    assert members == {
        "padmin": "admin",
        "rita": "reviewer",
        "ann": "annotator",
        "otto": "annotator",
    }
    r = client_for(admin).delete(f"{url}padmin/")
    assert r.status_code == 400 and "at least one admin" in r.json()["error"]
    assert client_for(admin).delete(f"{url}otto/").status_code == 204


# (who, method, url, body) -> expected status: the permission matrix.
def _matrix(project_id, image_id):
    p = f"/api/projects/{project_id}"
    return [
        (
            "get",
            f"{p}/",
            None,
            {"outsider": 404, "annotator": 200, "reviewer": 200, "admin": 200, "site_admin": 200},
        ),
        (
            "get",
            f"{p}/images/",
            None,
            {"outsider": 404, "annotator": 200, "reviewer": 200, "admin": 200, "site_admin": 200},
        ),
        (
            "get",
            f"/api/images/{image_id}/",
            None,
            {"outsider": 404, "annotator": 200, "reviewer": 200, "admin": 200, "site_admin": 200},
        ),
        (
            "get",
            f"/api/images/{image_id}/original/",
            None,
            {"outsider": 404, "annotator": 200, "reviewer": 200, "admin": 200, "site_admin": 200},
        ),
        (
            "patch",
            f"{p}/",
            {"description": "x"},
            {"outsider": 404, "annotator": 403, "reviewer": 403, "admin": 200, "site_admin": 200},
        ),
        (
            "post",
            f"{p}/categories/",
            {"name": "c-{who}"},
            {"outsider": 404, "annotator": 403, "reviewer": 403, "admin": 201, "site_admin": 201},
        ),
        (
            "post",
            f"{p}/members/",
            {"username": "root", "role": "annotator"},
            {"outsider": 404, "annotator": 403, "reviewer": 403},
        ),
        (
            "patch",
            f"/api/images/{image_id}/",
            {"split": "val"},
            {"outsider": 404, "annotator": 403, "reviewer": 200, "admin": 200},
        ),
        (
            "post",
            f"/api/images/{image_id}/normal/",
            {"is_normal": True},
            {"outsider": 404, "annotator": 403, "reviewer": 200, "admin": 200},
        ),
        (
            "post",
            f"{p}/datasets/import/",
            {"format": "mvtec", "path": "/tmp"},
            {"outsider": 404, "annotator": 403, "reviewer": 403, "admin": 403},
        ),
        (
            "delete",
            f"/api/images/{image_id}/",
            None,
            {"outsider": 404, "annotator": 403, "reviewer": 403},
        ),
        ("delete", f"{p}/", None, {"outsider": 404, "annotator": 403, "reviewer": 403}),
    ]


def test_permission_matrix(team, client_for, upload):
    from tests.conftest import image_bytes

    project = team["project"]
    r = client_for(team["admin"]).post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload("a.png", image_bytes())]},
        format="multipart",
    )
    image_id = r.json()["files"][0]["image_id"]
    for method, url, body, expected in _matrix(project.pk, image_id):
        for who, status in expected.items():
            data = {
                k: (v.format(who=who) if isinstance(v, str) else v) for k, v in (body or {}).items()
            }
            r = getattr(client_for(team[who]), method)(url, data, format="json")
            assert r.status_code == status, (
                f"{who} {method} {url}: {r.status_code} {r.content[:200]}"
            )
            if status in (403, 404):
                body_json = r.json()
                assert set(body_json) <= {"error", "detail"} and body_json["error"]
                assert (
                    "Bottles" not in str(body_json) or status == 403
                )  # a 404 never leaks the project


def test_annotator_cannot_upload_and_outsider_sees_nothing(team, client_for, upload):
    from tests.conftest import image_bytes

    url = f"/api/projects/{team['project'].pk}/images/"
    r = client_for(team["annotator"]).post(
        url, {"files": [upload("a.png", image_bytes())]}, format="multipart"
    )
    assert r.status_code == 403 and "reviewer role" in r.json()["error"]
    r = client_for(team["outsider"]).post(
        url, {"files": [upload("a.png", image_bytes())]}, format="multipart"
    )
    assert r.status_code == 404
    assert team["project"].images.count() == 0


def test_openapi_schema_and_docs(team, client):
    client.force_login(team["admin"])
    r = client.get("/api/schema/")
    assert r.status_code == 200 and b"/api/projects/{id}/" in r.content
    r = client.get("/api/docs/")
    assert r.status_code == 200 and b"swagger" in r.content.lower()


def test_the_schema_describes_every_route_without_guessing(tmp_path):
    """drf-spectacular warns when it must guess (an untyped id, two components of one name): the
    schema scripts are generated from must not have any such guess."""
    from django.core.management import call_command

    out = tmp_path / "schema.yml"
    call_command("spectacular", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in ("/api/images/{id}/normal/:", "/api/projects/{project_pk}/datasets/import/:"):
        assert path in text


def test_token_auth_for_scripts(team, client):
    r = client.post("/api/auth/token/", {"username": "padmin", "password": "correct-horse-battery"})
    token = r.json()["token"]
    r = client.get("/api/me/", HTTP_AUTHORIZATION=f"Token {token}")
    assert r.json()["username"] == "padmin"
    r = client.get("/api/projects/", HTTP_AUTHORIZATION="Token wrong")
    assert r.status_code == 401 and r.json()["error"]
    # a JSON list instead of {username, password} was a 500 (schemathesis)
    for body in ("[null, null]", "3", '"padmin"'):
        r = client.post("/api/auth/token/", body, content_type="application/json")
        assert r.status_code == 400 and "username and password" in r.json()["error"], body


def test_project_created_with_auto_inspect(make_user, client_for):
    r = client_for(make_user("alice")).post(
        "/api/projects/", {"name": "P1", "auto_inspect": True}, format="json"
    )
    assert r.status_code == 201 and r.json()["auto_inspect"] is True


def test_a_removed_member_loses_the_projects_jobs(team, client_for):
    from inspection.services.jobs import job_enqueue
    from inspection.services.projects import member_remove

    job = job_enqueue(kind="pyramid", user=team["annotator"], project=team["project"])
    assert client_for(team["annotator"]).get(f"/api/jobs/{job.pk}/").status_code == 200
    member_remove(user=team["admin"], project=team["project"], username="ann")
    assert client_for(team["annotator"]).get(f"/api/jobs/{job.pk}/").status_code == 404
    assert client_for(team["annotator"]).get("/api/jobs/").json()["results"] == []


def test_inspection_settings_are_checked_stored_and_shown_with_defaults(team, client_for):
    project, url = team["project"], f"/api/projects/{team['project'].pk}/"
    admin = client_for(team["admin"])
    body = admin.get(url).json()
    assert body["inspection"] == {
        "threshold": 0.5,
        "min_area": 64,
        "max_regions": 20,
        "specular_mask": False,
        "specular_v_min": 240,
        "specular_s_max": 30,
        "outside_regions": "inspect",
        "detector_views": 1,
    }
    r = admin.patch(url, {"inspection": {"threshold": 0.7, "specular_mask": True}}, "json")
    assert r.status_code == 200
    assert r.json()["inspection"]["threshold"] == 0.7 and r.json()["inspection"]["min_area"] == 64
    r = admin.patch(url, {"inspection": {"max_regions": 5.0}}, "json")  # the others stay
    want = {**body["inspection"], "threshold": 0.7, "specular_mask": True, "max_regions": 5}
    assert r.json()["inspection"] == want
    for bad, says in [
        ({"threshold": 0}, "threshold must be a number from 0.05 to 10.0"),
        ({"threshold": "high"}, "threshold must be a number"),
        ({"max_regions": 2.5}, "max_regions must be a whole number"),
        ({"specular_v_min": 255}, "specular_v_min must be a number from 0 to 254"),
        ({"specular_s_max": 0}, "specular_s_max must be a number from 1 to 255"),
        ({"specular_mask": 1}, "specular_mask is true or false"),
        ({"min_area": True}, "min_area must be a number"),
        ({"sensitivity": 3}, "Unknown setting(s): sensitivity"),
        ({"detector_views": 3}, "detector_views is 1, 2, 4 or 8"),
        ({"detector_views": 4.0}, "detector_views is 1, 2, 4 or 8"),
        ({"detector_views": True}, "detector_views is 1, 2, 4 or 8"),
        ([1, 2], "An object of settings"),
    ]:
        r = admin.patch(url, {"inspection": bad}, "json")
        assert r.status_code == 400 and says in r.json()["error"], (bad, r.json())
    project.refresh_from_db()
    assert project.inspection == {"threshold": 0.7, "specular_mask": True, "max_regions": 5}
    assert isinstance(project.inspection["max_regions"], int)  # shown as 5, not 5.0
    r = client_for(team["reviewer"]).patch(url, {"inspection": {"threshold": 0.9}}, "json")
    assert r.status_code == 403
    r = admin.post("/api/projects/", {"name": "P2", "inspection": {"threshold": -1}}, "json")
    assert r.status_code == 400 and not Project.objects.filter(name="P2").exists()
