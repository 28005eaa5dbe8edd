"""Accounts in a real browser: a site admin creates a user and copies her one-time link; she
chooses a password through it; the project admin finds her by typing part of her name and adds
her; she signs in and labels a defect."""

import pytest
from django.contrib.auth import get_user_model

from annotations.models import Annotation
from annotations.services.categories import category_create
from inspection.models import Image, Membership
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.projects import project_create
from tests.e2e.test_workspace import login, open_workspace, part_photo, shot, wait_saved, zoom_to

pytestmark = pytest.mark.e2e

ANNA_PASSWORD = "anna-labels-all-day"


@pytest.fixture
def site(transactional_db, make_user, tmp_path):
    root = make_user("root", is_staff=True, is_superuser=True)
    lead = make_user("lead")
    project = project_create(user=lead, name="Housings")
    category_create(user=lead, project=project, name="scratch", color="#ff3b30")
    path = tmp_path / "housing.jpg"
    path.write_bytes(part_photo(6000, 4000, seed=3))
    outcome = image_store_one(project=project, user=lead, incoming=IncomingFile(path.name, path))
    image = Image.objects.get(pk=outcome.image_id)
    image_build_derivatives(image=image)
    return {"root": root, "lead": lead, "project": project, "image": image}


def test_a_new_user_is_invited_added_and_labels(page, browser, live_server, site):
    # the site admin creates anna from the Users page and copies her link
    login(page, "root")
    page.click("text=Users")
    page.fill("#user-create input[name=username]", "anna")
    page.fill("#user-create input[name=email]", "anna@example.com")
    page.click("#user-create button[type=submit]")
    page.locator("#password-link").wait_for()
    link = page.input_value("#password-link-url")
    assert "/account/set-password/" in link
    shot(page, "first-day-users")
    row = page.locator('tr[data-user="anna"]')
    assert "no password set yet" in row.inner_text()

    # anna opens it in her own browser and chooses a password: she is signed in
    anna_ctx = browser.new_context(base_url=live_server.url)
    anna = anna_ctx.new_page()
    anna.goto(link)
    shot(anna, "first-day-set-password")
    anna.fill("input[name=new_password1]", ANNA_PASSWORD)
    anna.fill("input[name=new_password2]", ANNA_PASSWORD)
    anna.click("button[type=submit]")
    anna.locator("text=Password set. Welcome, anna.").wait_for()
    assert get_user_model().objects.get(username="anna").has_usable_password()
    anna.goto(link)  # the link worked once
    anna.locator("#link-invalid").wait_for()

    # the project admin types part of her name; the field suggests her
    page.click("form.who button")  # log out
    login(page, "lead")
    page.goto(f"/projects/{site['project'].pk}/settings/")
    page.fill("#member-username", "an")
    page.locator('datalist#username-options[data-loaded="an"]').wait_for(state="attached")
    options = page.eval_on_selector_all(
        "datalist#username-options option", "els => els.map(e => e.value)"
    )
    assert options == ["anna"]
    shot(page, "first-day-team")
    page.fill("#member-username", options[0])
    page.select_option("select[name=role]", "annotator")
    page.click("text=Add or change")
    page.locator("td", has_text="anna").first.wait_for()
    assert Membership.objects.get(user__username="anna").role == "annotator"

    # anna reloads: the project is there; she draws a box on the image
    anna.goto("/")
    anna.click("text=Housings")
    open_workspace(anna, site["image"].pk)
    vb = anna.locator("#viewer").bounding_box()
    cx, cy = vb["x"] + vb["width"] / 2, vb["y"] + vb["height"] / 2
    zoom_to(anna, 3100, 2003, 4)
    anna.keyboard.press("b")
    anna.mouse.move(cx - 120, cy - 60)
    anna.mouse.down()
    anna.mouse.move(cx, cy, steps=4)
    anna.mouse.move(cx + 120, cy + 60, steps=4)
    anna.mouse.up()
    wait_saved(anna, shapes=1)
    label = Annotation.objects.get(image=site["image"])
    assert label.author.username == "anna" and label.category.name == "scratch"
    anna_ctx.close()
