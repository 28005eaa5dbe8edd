"""Server-rendered pages: what a person sees, and that outsiders see nothing."""

import pytest

from annotations.models import DefectCategory
from inspection.models import Job, Membership, Project

pytestmark = pytest.mark.django_db


def test_login_required(client):
    r = client.get("/")
    assert r.status_code == 302 and r.url.startswith("/login/")


def test_create_project_and_set_it_up_from_the_browser(make_user, client):
    make_user("ann")
    boss = make_user("boss")
    client.force_login(boss)
    r = client.post("/", {"name": "Castings", "description": "aluminium"}, follow=True)
    assert "Project &#x27;Castings&#x27; created." in r.content.decode()
    project = Project.objects.get(name="Castings")
    url = f"/projects/{project.pk}/settings/"
    r = client.post(
        url,
        {"action": "add-category", "name": "porosity", "color": "#112233", "shortcut": "k"},
        follow=True,
    )
    assert "porosity" in r.content.decode()
    r = client.post(
        url, {"action": "add-category", "name": "porosity", "color": "#112233"}, follow=True
    )
    assert "already has a category" in r.content.decode()
    r = client.post(
        url, {"action": "set-member", "username": "ann", "role": "annotator"}, follow=True
    )
    assert Membership.objects.get(project=project, user__username="ann").role == "annotator"
    cat = DefectCategory.objects.get(project=project)
    assert (cat.color, cat.shortcut) == ("#112233", "k")
    # the next category's colour is proposed from the palette, not the same red every time
    from annotations.services.categories import PALETTE

    page = client.get(url).content.decode()
    assert f'name="color" type="color" value="{PALETTE[1]}"' in page
    # categories can be edited: name, colour, key
    r = client.post(
        url,
        {
            "action": "edit-category",
            "category": cat.pk,
            "name": "gas porosity",
            "color": "#445566",
            "shortcut": "y",
        },
        follow=True,
    )
    assert "Saved." in r.content.decode()
    cat.refresh_from_db()
    assert (cat.name, cat.color, cat.shortcut) == ("gas porosity", "#445566", "y")
    r = client.post(
        url,
        {"action": "edit-category", "category": cat.pk, "name": "", "color": "#445566"},
        follow=True,
    )
    cat.refresh_from_db()
    assert cat.name == "gas porosity"  # refused with the reason, nothing changed
    home = client.get("/").content.decode()
    assert "Castings" in home and "aluminium" in home


def test_pages_hide_projects_from_outsiders_and_forms_from_annotators(team, client):
    project = team["project"]
    client.force_login(team["outsider"])
    for url in (
        f"/projects/{project.pk}/",
        f"/projects/{project.pk}/settings/",
        f"/projects/{project.pk}/regions/",
    ):
        assert client.get(url).status_code == 404
    assert "Bottles" not in client.get("/").content.decode()
    client.force_login(team["annotator"])
    page = client.get(f"/projects/{project.pk}/settings/").content.decode()
    assert "Add category" not in page and "Import an MVTec AD folder" not in page
    r = client.post(f"/projects/{project.pk}/settings/", {"action": "add-category", "name": "x"})
    assert r.status_code == 403
    grid = client.get(f"/projects/{project.pk}/").content.decode()
    assert 'id="upload"' not in grid  # annotators do not upload
    regions = client.get(f"/projects/{project.pk}/regions/").content.decode()
    assert 'id="region-draw"' not in regions and 'data-review-url=""' in regions
    client.force_login(team["admin"])
    regions = client.get(f"/projects/{project.pk}/regions/").content.decode()
    assert (
        'id="region-draw"' in regions
        and f'data-review-url="/projects/{project.pk}/review/"' in regions
    )


def test_job_page_shows_traceback_to_admins_only(team, client):
    job = Job.objects.create(
        kind="pyramid",
        queue="cpu",
        project=team["project"],
        status="failed",
        error="The file vanished.",
        traceback="Traceback XYZ",
    )
    client.force_login(team["annotator"])
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "The file vanished." in page and "Traceback XYZ" not in page
    client.force_login(team["admin"])
    assert "Traceback XYZ" in client.get(f"/jobs/{job.pk}/").content.decode()
    client.force_login(team["outsider"])
    assert client.get(f"/jobs/{job.pk}/").status_code == 404


def test_image_grid_filters(team, client, client_for, upload):
    from tests.conftest import image_bytes

    client_for(team["admin"]).post(
        f"/projects/{team['project'].pk}/images/".replace("/projects", "/api/projects"),
        {"files": [upload("n.png", image_bytes(seed=1))], "is_normal": "true"},
        format="multipart",
    )
    client_for(team["admin"]).post(
        f"/api/projects/{team['project'].pk}/images/",
        {"files": [upload("t.png", image_bytes(seed=2))]},
        format="multipart",
    )
    client.force_login(team["annotator"])
    page = client.get(f"/projects/{team['project'].pk}/", {"state": "normal"}).content.decode()
    assert "n.png" in page and "t.png" not in page and "1 of 2 images" in page


def test_error_pages_keep_the_layout_and_say_why(team, client):
    """An annotator following "Review →" used to get a bare "403 Forbidden"."""
    client.force_login(team["annotator"])
    r = client.get(f"/projects/{team['project'].pk}/review/")
    assert r.status_code == 403
    page = r.content.decode()
    assert 'id="error-page"' in page and 'class="topbar"' in page  # the site's layout
    assert "Roles are per project" in page and ">ann</a>" in page  # who is logged in
    r = client.get("/projects/999999/models/")
    assert r.status_code == 404 and 'id="error-page"' in r.content.decode()
    # the API still answers JSON
    assert client.get("/api/projects/999999/").json()["error"]


def test_the_favicon_is_served(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 301 and r["Location"].endswith("loupe/favicon.svg")


def test_loupe_run_help_describes_its_options_without_touching_the_database(tmp_path):
    import os
    import subprocess

    from tests.conftest import ROOT

    db = tmp_path / "never.sqlite3"
    done = subprocess.run(
        ["./loupe", "run", "--help"],
        cwd=ROOT,
        env=dict(os.environ, DATABASE_URL=f"sqlite:///{db}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "address:port the web server listens on" in done.stdout
    assert "jobs the Celery worker runs at once" in done.stdout
    assert not db.exists()  # --help migrated the database before printing, once


def test_models_page_warns_when_photos_are_far_from_the_normals_size(team, client, client_for):
    """Issue #17: a 20 MP photo in a project of 900 px normals is inspected resized into the
    tiled model's range; the models page says so before anyone runs an inspection, and says
    nothing for a model that sees whole images or photos that fit."""
    from inspection.models import Image, ModelVersion

    project = team["project"]

    def image(name, w, h, normal=False):
        return Image.objects.create(
            project=project,
            file=f"x/{name}",
            original_name=name,
            width=w,
            height=h,
            format="jpeg",
            sha256=name.ljust(64, "0"),
            is_normal=normal,
            size_bytes=1000,
        )

    normals = [image(f"n{i}.jpg", 900, 600, normal=True) for i in range(3)]
    image("fits.jpg", 1600, 1000)
    version = ModelVersion.objects.create(
        project=project,
        number=1,
        architecture="padim",
        status="ready",
        is_active=True,
        params={"model": "padim", "scale": 1, "input_size": 256},
        image_ids=[n.pk for n in normals],
        metrics={"trained_long_sides": [900, 900], "accepted_long_sides": [450, 1800]},
    )
    client.force_login(team["reviewer"])
    url = f"/projects/{project.pk}/models/"
    assert 'id="size-mismatch"' not in client.get(url).content.decode()  # 1600 px fits

    image("big-1.jpg", 5472, 3648)
    image("big-2.jpg", 4000, 3000)
    html = client.get(url).content.decode()
    assert 'id="size-mismatch"' in html
    assert "2 images are far from the size the active model learnt from" in html
    assert "450–1800 px on their long side as they are, and these are 4000–5472 px" in html
    assert "the largest 6.1× smaller" in html

    # a whole-image model resizes every image to its input: nothing to warn about
    version.params = {"model": "padim", "input_size": 256}
    version.metrics = {}
    version.save()
    assert 'id="size-mismatch"' not in client.get(url).content.decode()
