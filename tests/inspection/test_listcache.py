"""Lists kept in memory until their project's data changes (inspection/listcache.py): the same
request again is answered from memory, and every way the data can change shows in the next
request: through the API, the ORM's bulk writes, another thread's transaction once it commits,
never a transaction that was rolled back. Permissions are checked on every request, and without
Redis the lists are built as before."""

from __future__ import annotations

import functools
import os
import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from annotations.models import Annotation, DefectCategory, Suggestion
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection import listcache
from inspection.models import Image, InspectionRun, ModelVersion
from tests.annotations.test_datasets import add_image, box, label
from tests.conftest import image_bytes

HIT = "X-Loupe-List-Cache"


def _grid(client, project, query="limit=50"):
    r = client.get(f"/api/projects/{project.pk}/images/?{query}")
    assert r.status_code == 200, r.content
    return r


def _get(client, url):
    r = client.get(url)
    assert r.status_code == 200, r.content
    return r


def _labels(client, image):
    r = client.get(f"/api/images/{image.pk}/annotations/")
    assert r.status_code == 200, r.content
    return r


def _queue(client, project):
    r = client.get(f"/api/projects/{project.pk}/suggestions/?status=pending&limit=50")
    assert r.status_code == 200, r.content
    return r


@pytest.fixture
def part(team, tmp_path):
    """A project image with a label and a pending suggestion of an active model."""
    project, admin = team["project"], team["admin"]
    image = add_image(project, admin, tmp_path, "part-1.png", size=(200, 100))
    label(image, "scratch", box(5, 5, 10, 10))
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(project=project, model_version=version, image_ids=[image.pk])
    suggestions_store(
        image=image,
        run=run,
        model_version=version,
        suggestions=[SuggestionIn(box=(60, 20, 30, 30), score=0.8)],
    )
    return image


@pytest.mark.django_db
def test_the_same_request_again_is_answered_from_memory(team, part, client_for):
    reviewer = client_for(team["reviewer"])
    project = team["project"]
    for get in (lambda: _grid(reviewer, project), lambda: _labels(reviewer, part),
                lambda: _queue(reviewer, project)):  # fmt: skip
        first = get()
        assert HIT not in first
        with CaptureQueriesContext(connection) as queries:
            again = get()
        assert again[HIT] == "hit"
        assert again.json() == first.json()
        assert again["Content-Type"] == first["Content-Type"]
        # the permission check's lookups only: no row of the list is read
        assert len(queries) <= 2, [q["sql"] for q in queries.captured_queries]
    # another page, another filter, another host: each built once
    assert HIT not in _grid(reviewer, project, "limit=10")
    assert HIT not in _grid(reviewer, project, "limit=50&split=train")
    r = reviewer.get(f"/api/projects/{project.pk}/images/?limit=50", HTTP_HOST="other.example")
    assert HIT not in r
    assert _grid(reviewer, project, "limit=10")[HIT] == "hit"


@pytest.mark.django_db
def test_permissions_are_checked_on_every_request(team, part, client_for):
    project = team["project"]
    _grid(client_for(team["reviewer"]), project)
    assert _grid(client_for(team["reviewer"]), project)[HIT] == "hit"
    assert (
        client_for(team["outsider"]).get(f"/api/projects/{project.pk}/images/").status_code == 404
    )
    anonymous = client_for(None).get(f"/api/projects/{project.pk}/images/?limit=50")
    assert anonymous.status_code in (401, 403)
    # the annotator may see the grid: built for them (a page is kept per user)
    assert HIT not in _grid(client_for(team["annotator"]), project)
    assert _grid(client_for(team["annotator"]), project)[HIT] == "hit"


@pytest.mark.django_db
def test_a_list_that_depends_on_who_asks_is_never_shared(team, part, client_for):
    """The grid's "with labels sent back to me" is the asking annotator's own list."""
    annotation = Annotation.objects.get(image=part)
    Annotation.objects.filter(pk=annotation.pk).update(
        author=team["annotator"], review_status=Annotation.ReviewStatus.RETURNED
    )
    query = "limit=50&state=returned"
    mine = _grid(client_for(team["annotator"]), team["project"], query)
    assert mine.json()["count"] == 1
    theirs = _grid(client_for(team["reviewer"]), team["project"], query)
    assert HIT not in theirs and theirs.json()["count"] == 0


def _rename_category(team, image):
    cat = DefectCategory.objects.get(project=team["project"], name="scratch")
    cat.name = "deep scratch"
    cat.save()


def _rename_user(team, image):
    user = team["admin"]
    user.username = "paula"
    user.save()


WRITES = {
    # what changes: (how, which list shows it, what the user sees there)
    "a label drawn in the API": (
        lambda team, image, c: c.post(
            f"/api/images/{image.pk}/annotations/",
            {
                "category": DefectCategory.objects.get(name="scratch").pk,
                "geometry": box(1, 1, 5, 5),
            },
            format="json",
        ),
        "labels",
        lambda data: len(data) == 2,
    ),
    "a label deleted in the API": (
        lambda team, image, c: c.delete(
            f"/api/annotations/{Annotation.objects.get(image=image).pk}/?version=1"
        ),
        "labels",
        lambda data: data == [],
    ),
    "a suggestion accepted": (
        lambda team, image, c: c.post(
            f"/api/suggestions/{Suggestion.objects.get(image=image).pk}/accept/",
            {"category": DefectCategory.objects.get(name="scratch").pk},
            format="json",
        ),
        "queue",
        lambda data: data["count"] == 0,
    ),
    "queryset.update()": (
        lambda team, image, c: Image.objects.filter(pk=image.pk).update(split="val"),
        "grid",
        lambda data: data["results"][0]["split"] == "val",
    ),
    "queryset.delete()": (
        lambda team, image, c: Annotation.objects.filter(image=image).delete(),
        "labels",
        lambda data: data == [],
    ),
    "bulk_create()": (
        lambda team, image, c: Annotation.objects.bulk_create(
            [
                Annotation(
                    image_id=image.pk,  # no image object: its project is looked up
                    category=DefectCategory.objects.get(name="scratch"),
                    kind="box",
                    geometry=box(40, 40, 5, 5),
                )
            ]
        ),
        "labels",
        lambda data: len(data) == 2,
    ),
    "bulk_update()": (
        lambda team, image, c: Suggestion.objects.bulk_update(
            [Suggestion(pk=s.pk, image_id=s.image_id, score=0.1) for s in image.suggestions.all()],
            ["score"],
        ),
        "queue",
        lambda data: data["results"][0]["score"] == pytest.approx(0.1),
    ),
    "a category renamed": (
        lambda team, image, c: _rename_category(team, image),
        "labels",
        lambda data: data[0]["category_name"] == "deep scratch",
    ),
    "a user renamed (every project)": (
        lambda team, image, c: _rename_user(team, image),
        "grid",
        lambda data: data["results"][0]["uploaded_by"] == "paula",
    ),
    "a model version changed": (
        lambda team, image, c: ModelVersion.objects.filter(project=team["project"]).update(
            architecture="patchcore"
        ),
        "queue",
        lambda data: data["results"][0]["model"] == "patchcore v1",
    ),
    "a comment added": (
        lambda team, image, c: c.post(
            f"/api/images/{image.pk}/comments/", {"text": "glare on the left"}, format="json"
        ),
        "comments",
        lambda data: [x["text"] for x in data] == ["glare on the left"],
    ),
    "a suggestion rejected (the overlay)": (
        lambda team, image, c: c.post(
            f"/api/suggestions/{Suggestion.objects.get(image=image).pk}/reject/", {}, format="json"
        ),
        "overlay",
        lambda data: data[0]["status"] == "rejected",
    ),
    "a suggestion rejected (the decisions)": (
        lambda team, image, c: c.post(
            f"/api/suggestions/{Suggestion.objects.get(image=image).pk}/reject/", {}, format="json"
        ),
        "reviews",
        lambda data: len(data) == 1,
    ),
    "an image uploaded (the neighbours)": (
        lambda team, image, c: c.post(
            f"/api/projects/{team['project'].pk}/images/",
            {"files": [SimpleUploadedFile("part-2.png", image_bytes("PNG", seed=7))]},
            format="multipart",
        ),
        "neighbors",
        lambda data: data["next"] is not None and data["count"] == 2,
    ),
    "an image deleted in the API": (
        lambda team, image, c: c.delete(f"/api/images/{image.pk}/"),
        "grid",
        lambda data: data["count"] == 0,
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("write", list(WRITES))
def test_every_write_shows_in_the_next_request(team, part, client_for, write):
    how, which, shows = WRITES[write]
    reviewer, admin = client_for(team["reviewer"]), client_for(team["admin"])
    get = {
        "labels": lambda: _labels(reviewer, part),
        "grid": lambda: _grid(reviewer, team["project"]),
        "queue": lambda: _queue(reviewer, team["project"]),
        **{
            name: functools.partial(_get, reviewer, f"/api/images/{part.pk}/{name}/")
            for name in ("comments", "reviews", "neighbors")
        },
        "overlay": functools.partial(_get, reviewer, f"/api/images/{part.pk}/suggestions/"),
    }[which]
    get()
    before = get()
    assert before[HIT] == "hit"
    assert not shows(before.json())
    r = how(team, part, admin)
    assert getattr(r, "status_code", 200) < 300, getattr(r, "content", r)
    after = get()
    assert HIT not in after
    assert shows(after.json()), after.json()


@pytest.mark.django_db
def test_a_rolled_back_write_is_never_served(team, part, client_for):
    reviewer = client_for(team["reviewer"])
    _labels(reviewer, part)

    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        label(part, "scratch", box(50, 50, 5, 5))
        assert len(_labels(reviewer, part).json()) == 2  # inside: seen, not kept
        raise Undo
    r = _labels(reviewer, part)
    assert len(r.json()) == 1


@pytest.mark.django_db(transaction=True)
def test_another_threads_transaction_shows_once_it_commits(team, part, client_for):
    """A writer in another thread (its own database connection, as a worker or another web
    process has): a page built while its transaction is open shows the data before it, and the
    first request after the commit shows the new data."""
    reviewer = client_for(team["reviewer"])
    _labels(reviewer, part)
    wrote, go_on, done = threading.Event(), threading.Event(), threading.Event()
    errors = []

    def writer():
        try:
            with transaction.atomic():
                label(Image.objects.get(pk=part.pk), "scratch", box(50, 50, 5, 5))
                wrote.set()
                go_on.wait(10)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()
            done.set()

    threading.Thread(target=writer).start()
    assert wrote.wait(10)
    during = _labels(reviewer, part)
    assert len(during.json()) == 1  # not committed yet
    assert len(_labels(reviewer, part).json()) == 1
    go_on.set()
    assert done.wait(10)
    assert not errors
    after = _labels(reviewer, part)
    assert len(after.json()) == 2


@pytest.mark.django_db
def test_without_redis_lists_are_built_as_before(team, part, client_for, settings, monkeypatch):
    monkeypatch.setattr(listcache, "PAUSE_AFTER_FAILURE", 0.5)
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    monkeypatch.setattr(listcache, "TOKENS", listcache._Tokens())
    reviewer = client_for(team["reviewer"])
    first, again = _labels(reviewer, part), _labels(reviewer, part)
    assert HIT not in first and HIT not in again
    label(part, "scratch", box(50, 50, 5, 5))  # the write does not fail either
    assert len(_labels(reviewer, part).json()) == 2
    # Redis answers again (a new process, or this one's connection made again): writes during
    # the pause do not prolong it, and once it is over lists are kept again
    settings.REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    listcache.TOKENS._client = None
    until = time.monotonic() + 3 * listcache.PAUSE_AFTER_FAILURE
    n = 0
    while time.monotonic() < until:  # a worker storing results all the while
        label(part, "scratch", box(60, 5 + n, 5, 5))
        n += 1
        time.sleep(0.05)
    assert len(_labels(reviewer, part).json()) == 2 + n
    assert _labels(reviewer, part)[HIT] == "hit"


@pytest.mark.django_db
def test_switched_off(team, part, client_for, settings):
    settings.LOUPE_LIST_CACHE = False
    reviewer = client_for(team["reviewer"])
    _grid(reviewer, team["project"])
    assert HIT not in _grid(reviewer, team["project"])


def test_the_store_is_bounded_in_pages_bytes_and_age(monkeypatch):
    pages = listcache._Pages()
    monkeypatch.setattr(listcache, "MAX_PAGES", 2)
    for n in range(3):
        pages.put(("k", n), b"x" * 10, "application/json")
    assert pages.get(("k", 0)) is None and pages.get(("k", 2)) == (b"x" * 10, "application/json")
    monkeypatch.setattr(listcache, "MAX_BYTES", 16 * 100)
    pages.put(("big",), b"y" * 101, "application/json")  # over a sixteenth of the bound: not kept
    assert pages.get(("big",)) is None
    monkeypatch.setattr(listcache, "MAX_AGE", -1.0)
    assert pages.get(("k", 2)) is None


@pytest.mark.django_db
def test_a_user_created_elsewhere_does_not_break_lists(team, part, client_for):
    """Saving any user replaces the token every project carries (usernames are in lists)."""
    reviewer = client_for(team["reviewer"])
    _grid(reviewer, team["project"])
    get_user_model().objects.create_user("newcomer", password="x-long-password-1")
    assert HIT not in _grid(reviewer, team["project"])
