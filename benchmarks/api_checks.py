"""Every schemathesis check against a throwaway Loupe: the triage in docs/api.md comes from it.

    .venv/bin/python benchmarks/api_checks.py [--max-examples 10] [--phases examples,coverage,fuzzing,stateful]

``./loupe test`` runs two checks in process on every run (no server error, responses match their
schema: tests/inspection/test_api_schema.py). This runs all of them (``st run --checks all``)
against gunicorn on a throwaway SQLite database and media folder, its jobs on a queue prefix of
their own (no worker takes them; its Redis keys are deleted afterwards), signed in as a project
admin with a token, over a project with images, categories, labels, a suggestion and a model
version; the stateful phase deletes what it made. Prints schemathesis' summary and writes its
JUnit report to ``--report-dir``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workspace import add_image, free_port, serve, setup_django, synthetic_photo  # noqa: E402


def build(tmp: Path) -> str:
    """A project an admin works in; returns the admin's API token."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from annotations.models import Annotation
    from annotations.services.categories import category_create
    from annotations.services.suggestions import SuggestionIn, suggestions_store
    from inspection.models import InspectionRun, ModelVersion
    from inspection.services.projects import member_set, project_create
    from workers.anomaly.regions import Region

    users = get_user_model().objects
    admin = users.create_user("checker", password="checker-password-1")
    users.create_user("colleague", password="colleague-password-1")
    project = project_create(user=admin, name="Checked")
    member_set(user=admin, project=project, username="colleague", role="annotator")
    scratch = category_create(user=admin, project=project, name="scratch")
    category_create(user=admin, project=project, name="dent")
    images = [
        add_image(project, admin, f"part-{i}.jpg", synthetic_photo(640 + 16 * i, 480), tmp)
        for i in range(3)
    ]
    Annotation.objects.create(
        image=images[0],
        category=scratch,
        kind="box",
        geometry={"type": "box", "x": 10, "y": 10, "w": 30, "h": 20},
        author=admin,
    )
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(
        project=project, model_version=version, image_ids=[i.pk for i in images]
    )
    box = [100, 100, 40, 40]
    poly = [[100, 100], [140, 100], [140, 140], [100, 140]]
    region = Region(box=box, polygon=poly, area=1600.0, peak_score=0.8, mean_score=0.6)
    suggestions_store(
        image=images[1],
        run=run,
        model_version=version,
        suggestions=[SuggestionIn.from_region(region)],
    )
    return Token.objects.create(user=admin).key


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-examples", type=int, default=10)
    ap.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    ap.add_argument("--report-dir", default=str(ROOT / "var" / "api-checks"))
    args = ap.parse_args()
    prefix = f"apichecks{uuid.uuid4().hex[:8]}-"
    os.environ["LOUPE_QUEUE_PREFIX"] = prefix
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setup_django(tmp)
        token = build(tmp)
        port = free_port()
        server = serve(tmp, port)
        try:
            cmd = [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"http://127.0.0.1:{port}/api/schema/",
                "-H",
                f"Authorization: Token {token}",
                "--checks",
                "all",
                "--max-examples",
                str(args.max_examples),
                "--phases",
                args.phases,
                "--report",
                "junit",
                "--report-dir",
                args.report_dir,
                "--no-color",
            ]
            subprocess.run(cmd, check=False, cwd=tmp)  # its .schemathesis cache goes there too
        finally:
            server.kill()
            import redis
            from django.conf import settings

            client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
            for key in client.scan_iter(match=f"*{prefix}*"):
                client.delete(key)


if __name__ == "__main__":
    main()
