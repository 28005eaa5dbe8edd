"""The API keeps its OpenAPI schema's promises (schemathesis, in process, a few examples per
operation): no 5xx for any request the schema allows, and every response matches its schema.

The full run with `--checks all` and the stateful phase is `schemathesis run` against a
throwaway server (docs/api.md); this one runs with every `./loupe test`.
"""

import json
import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from inspection.wsgi import application

pytestmark = pytest.mark.django_db


@pytest.fixture
def api_schema():
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    generated = SchemaGenerator().get_schema(request=None, public=True)
    return schemathesis.openapi.from_dict(json.loads(OpenApiJsonRenderer().render(generated)))


@pytest.fixture
def token(team, tmp_path):
    """A site admin's token, and objects for the generated requests to find: a project with a
    category, an image with a label, a model version and a job."""
    from rest_framework.authtoken.models import Token

    from annotations.services.categories import category_create
    from annotations.services.labels import annotation_create
    from inspection.models import Image, ModelVersion
    from inspection.services.images import IncomingFile, image_store_one
    from inspection.services.jobs import job_enqueue
    from tests.conftest import image_bytes

    project, admin = team["project"], team["admin"]
    category = category_create(user=admin, project=project, name="scratch")
    path = tmp_path / "part.png"
    path.write_bytes(image_bytes(size=(64, 48)))
    image = Image.objects.get(
        pk=image_store_one(
            project=project, user=admin, incoming=IncomingFile(path.name, path)
        ).image_id
    )
    label = annotation_create(
        user=admin,
        image=image,
        category_id=category.pk,
        geometry={"type": "box", "x": 1, "y": 1, "w": 5, "h": 5},
    )
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready"
    )
    job = job_enqueue(kind="pyramid", user=admin, project=project)
    REAL_IDS.clear()
    REAL_IDS.update(
        {
            "projects": project.pk,
            "images": image.pk,
            "annotations": label.pk,
            "models": version.pk,
            "jobs": str(job.pk),
            "categories": category.pk,
        }
    )
    return Token.objects.create(user=team["site_admin"]).key


REAL_IDS: dict[str, object] = {}


def with_real_ids(case) -> None:
    """Point half of the generated requests at objects that exist: random ids only ever reach
    the 404 of the first lookup."""
    parts = case.path.strip("/").split("/")  # api, projects, {id}, ...
    # crc32, not hash(): str hashes change with every process, and the requests must not
    if not case.path_parameters or zlib.crc32(repr(case.query).encode()) % 2:
        return
    for name in list(case.path_parameters):
        if name in ("id", "pk") and len(parts) > 1 and parts[1] in REAL_IDS:
            case.path_parameters[name] = REAL_IDS[parts[1]]
        elif name == "project_pk":
            case.path_parameters[name] = REAL_IDS["projects"]


def test_no_server_error_and_every_response_matches_the_schema(api_schema, token):
    """Every operation, a few generated requests each (the same ones every run)."""
    from django.core import signals
    from django.db import close_old_connections

    # as Django's test client does: a request must not close the test's database connection
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        _run_every_operation(api_schema, token)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def _run_every_operation(api_schema, token) -> None:
    from hypothesis import given

    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 60  # the whole API, not a part that happened to load

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,  # reproducible: the same requests every run
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case):
            with_real_ids(case)
            case.call_and_validate(
                app=application,
                headers={"Authorization": f"Token {token}"},
                checks=[not_a_server_error, response_schema_conformance],
            )

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect them all
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
