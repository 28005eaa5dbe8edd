"""The image grid's selection in a real browser: tick images, set their split, mark them
normal (one with a defect label is refused, and the page says why), delete one; then rename and
delete the project from its settings page."""

import pytest

from annotations.services.categories import category_create
from annotations.services.labels import annotation_create
from inspection.models import Image, Project
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.projects import project_create
from tests.conftest import image_bytes
from tests.e2e.test_workspace import login, shot

pytestmark = pytest.mark.e2e


@pytest.fixture
def grid(transactional_db, make_user, tmp_path):
    lead = make_user("lead")
    project = project_create(user=lead, name="Brackets")
    scratch = category_create(user=lead, project=project, name="scratch")
    images = []
    for i in range(3):
        path = tmp_path / f"bracket-{i}.png"
        path.write_bytes(image_bytes(size=(300, 200), seed=i))
        outcome = image_store_one(
            project=project, user=lead, incoming=IncomingFile(path.name, path)
        )
        image = Image.objects.get(pk=outcome.image_id)
        image_build_derivatives(image=image)
        images.append(image)
    annotation_create(
        user=lead,
        image=images[0],
        category_id=scratch.pk,
        geometry={"type": "box", "x": 10, "y": 10, "w": 20, "h": 20},
    )
    return {"project": project, "images": images}


def tick(page, image):
    page.check(f'#image-grid .pick[value="{image.pk}"]')


def test_select_set_split_mark_normal_delete_then_rename_and_delete(page, live_server, grid):
    first, second, third = grid["images"]
    login(page, "lead")
    page.goto(f"/projects/{grid['project'].pk}/")
    assert page.locator("#bulkbar").is_hidden()
    tick(page, first)
    tick(page, second)
    assert page.inner_text("#bulk-count") == "2 selected"
    shot(page, "first-day-grid-selection")
    page.select_option("#bulk-split", "val")
    page.click('[data-bulk="split"]')
    page.locator(
        "#bulk-result .flash.success", has_text="2 images moved to split 'val'."
    ).wait_for()
    assert page.locator(".tile", has_text="· val").count() == 2
    assert page.locator("#bulkbar").is_hidden()  # the reload cleared the selection

    for image in grid["images"]:
        tick(page, image)
    page.click('[data-bulk="normal"]')
    flash = page.locator("#bulk-result .flash.error")
    flash.wait_for()
    assert "2 images marked normal; 1 refused: This image has defect labels" in flash.inner_text()
    assert page.locator(".tile", has_text="· normal").count() == 2
    assert not Image.objects.get(pk=first.pk).is_normal

    tick(page, third)
    page.once("dialog", lambda d: d.accept())
    page.click('[data-bulk="delete"]')
    page.locator("#bulk-result .flash.success", has_text="1 image deleted.").wait_for()
    assert page.locator("#image-grid .tile").count() == 2
    assert not Image.objects.filter(pk=third.pk).exists()

    # the project itself: rename, then delete by typing its name
    page.goto(f"/projects/{grid['project'].pk}/settings/")
    page.fill("#project-rename input[name=name]", "Brackets line 2")
    page.click("#project-rename button[type=submit]")
    page.locator("h1", has_text="Brackets line 2").wait_for()
    page.fill("#project-delete input[name=confirm_name]", "Brackets")  # the old name: refused
    page.click("#project-delete button[type=submit]")
    page.locator(".flash.error", has_text="Type the project's name").wait_for()
    page.fill("#project-delete input[name=confirm_name]", "Brackets line 2")
    page.click("#project-delete button[type=submit]")
    page.locator(".flash", has_text="Project 'Brackets line 2' deleted").wait_for()
    assert not Project.objects.exists() and not Image.objects.exists()
