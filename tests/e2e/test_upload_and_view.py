"""A person logs in, uploads two images, watches the pyramid job finish, and opens the deep-zoom view."""

import os
from pathlib import Path

import pytest

from inspection.models import Image, Job
from tests.conftest import PASSWORD, image_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def shot(page, name: str) -> None:
    """Save a screenshot when LOUPE_SCREENSHOTS names a folder (docs/ uses them)."""
    folder = os.environ.get("LOUPE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def test_login_upload_and_deep_zoom(page, live_server, celery_worker, make_user, tmp_path):
    from inspection.services.projects import project_create

    user = make_user("quality")
    project = project_create(user=user, name="Caps")
    big = tmp_path / "cap-6000x4000.jpg"
    big.write_bytes(image_bytes("JPEG", size=(6000, 4000), seed=3, quality=80))
    small = tmp_path / "cap-small.png"
    small.write_bytes(image_bytes("PNG", size=(800, 600), seed=4))

    page.goto("/")
    assert "/login/" in page.url
    page.fill("input[name=username]", "quality")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.get_by_role("link", name="Caps").click()
    page.set_input_files("#file-input", [str(big), str(small)])
    for name in (big.name, small.name):
        row = page.locator(f'li.upload-row[data-name="{name}"]')
        row.and_(page.locator('[data-state="ready"]')).wait_for(timeout=90_000)
        assert row.locator("progress.upload").evaluate("e => e.value") == 100
        assert row.locator("progress.job").evaluate("e => e.value") == 100
        assert row.locator(".job-status").inner_text() == "ready"
    assert Image.objects.filter(project=project, pyramid_status="ready").count() == 2
    shot(page, "upload")
    jobs = Job.objects.filter(project=project, kind="pyramid")
    assert jobs.count() == 2 and all(j.status == "succeeded" and j.created_by == user for j in jobs)

    page.reload()
    shot(page, "grid")
    page.locator(".tile", has_text=big.name).click()
    page.locator("#viewer[data-tile-loaded]").wait_for(timeout=30_000)
    assert "6000×4000" in page.locator(".ws-bar").inner_text()
    assert page.locator("#viewer canvas").count() >= 1
    # zoom in to full detail: OpenSeadragon asks for tiles of the deepest level
    levels = []
    page.on(
        "request",
        lambda req: "/dzi/image_files/" in req.url and levels.append(int(req.url.split("/")[-2])),
    )
    # getFullyLoaded() is still true from the previous zoom until the viewer's next frame asks
    # for the new level's tiles: wait for the first full-resolution request before asking it
    with page.expect_request(lambda req: "/dzi/image_files/13/" in req.url, timeout=30_000):
        page.evaluate(
            "() => { const v = window.loupeWorkspace.viewer; v.viewport.zoomTo(v.viewport.imageToViewportZoom(1.0), null, true); }"
        )
    page.wait_for_function(
        "() => window.loupeWorkspace.viewer.world.getItemAt(0).getFullyLoaded()", timeout=30_000
    )
    assert max(levels) == 13  # 6000 px wide -> level 13 is full resolution
    shot(page, "viewer")

    # the jobs page shows both jobs, finished, with who started them
    page.goto("/jobs/")
    page.locator('#jobs-body tr[data-status="succeeded"]').first.wait_for()
    shot(page, "jobs")
    rows = page.locator("#jobs-body tr")
    assert rows.count() == 2
    assert "quality" in rows.first.inner_text() and "100%" in rows.first.inner_text()


def test_rebuild_missing_pyramids_from_the_images_page(
    page, live_server, celery_worker, make_user, tmp_path
):
    """Images whose pyramid job was cancelled: the page offers a rebuild, the person clicks it,
    watches the job finish, and the thumbnails appear."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from inspection.services.images import IncomingFile, images_upload
    from inspection.services.jobs import job_cancel
    from inspection.services.projects import project_create

    user = make_user("rebuilder")
    project = project_create(user=user, name="Gears")
    files = []
    for i in range(2):
        path = tmp_path / f"gear{i}.png"
        path.write_bytes(image_bytes("PNG", size=(400, 300), seed=60 + i))
        files.append(IncomingFile(path.name, path))
    with transaction.atomic():  # cancelled before any worker can take it
        report = images_upload(user=user, project=project, files=files)
        job_cancel(user=user, job=Job.objects.get(pk=report.job_id))
    # ... a while ago (just-uploaded images may still be waiting for their job to start)
    Image.objects.filter(project=project).update(created_at=timezone.now() - timedelta(hours=1))

    page.goto("/")
    page.fill("input[name=username]", "rebuilder")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"/projects/{project.pk}/")
    assert page.locator(".tile img").count() == 0
    assert "2 images have no zoomable view" in page.locator("#rebuild").inner_text()
    page.click("#rebuild-button")
    page.get_by_text("succeeded: 2 pyramid(s) built").wait_for(timeout=60_000)
    page.get_by_role("link", name="Show them").click()
    page.locator(".tile img").nth(1).wait_for()
    assert page.locator("#rebuild").count() == 0
    assert Image.objects.filter(project=project, pyramid_status="ready").count() == 2
