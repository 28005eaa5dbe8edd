"""Concurrent API load against gunicorn + PostgreSQL on this machine (issue #18).

    .venv/bin/python benchmarks/load.py [--clients 20] [--seconds 60] [--workers 3 --threads 4]
        [--database-url postgres://postgres@127.0.0.1:5432/postgres]
    .venv/bin/python benchmarks/load.py --in-process     # each request's own cost, one process
        [--no-analyze]                                   # tables without statistics

Makes a throwaway database in the given PostgreSQL server (dropped at the end) and a media
folder, fills one project as a team would after a few days (--images images with labels and
pending suggestions, one with a Deep Zoom pyramid), serves it with gunicorn on 127.0.0.1, and
runs --clients client threads for --seconds, each sending, in turn: the images list (50 per page),
an image's labels, the review queue (50 pending suggestions) and a Deep Zoom tile, with the
token of a reviewer of the project. ``--writers N`` adds N annotators who each save a label on a
random image every ``--write-every`` seconds (a team labelling while others browse: every save
changes the project's data, so the lists kept in memory are built again).
Prints per request kind: requests, errors, median and p95 latency, and the total requests per
second. The clients run on the same 2 cores as the server, so the figures are a floor of what the
server alone can do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workspace import free_port, serve  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server (gunicorn ``server_pid`` and its workers),
    PostgreSQL and these clients, read from /proc (Linux): where the machine's time goes."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"gunicorn": 0.0, "PostgreSQL": 0.0, "clients": 0.0}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if int(entry) == me:
            out["clients"] += seconds
        elif server_pid in (int(entry), int(fields[1])):  # the master or one of its workers
            out["gunicorn"] += seconds
        elif cmd.startswith(b"postgres"):
            out["PostgreSQL"] += seconds
    return out


def make_database(server_url: str) -> str:
    import psycopg

    name = f"loupe_load_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    u = urlparse(server_url)
    return u._replace(path=f"/{name}").geturl()


def drop_database(server_url: str, url: str) -> None:
    import psycopg

    name = urlparse(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(n_images: int, tmp: Path):
    import io

    import numpy as np
    from django.contrib.auth import get_user_model
    from PIL import Image as PILImage
    from rest_framework.authtoken.models import Token

    from annotations.services.categories import category_create
    from annotations.services.labels import annotation_create
    from annotations.services.suggestions import SuggestionIn, suggestions_store
    from inspection.models import Image, InspectionRun, ModelVersion
    from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
    from inspection.services.projects import project_create
    from workers.anomaly.regions import Region

    user = get_user_model().objects.create_superuser("load", "", "load-password-1")
    project = project_create(user=user, name="Load")
    cats = [category_create(user=user, project=project, name=n) for n in ("scratch", "dent")]
    rng = np.random.default_rng(0)
    images = []
    for i in range(n_images):
        size = (2400, 1600) if i == 0 else (320, 240)
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        path = tmp / f"part-{i}.png"
        buf = io.BytesIO()
        PILImage.fromarray(arr).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        outcome = image_store_one(
            project=project, user=user, incoming=IncomingFile(path.name, path)
        )
        images.append(Image.objects.get(pk=outcome.image_id))
    image_build_derivatives(image=images[0])
    # a model as training leaves it: the ids it was trained on, metrics with the calibration's
    # curves (what a list of suggestions must not parse once per row)
    version = ModelVersion.objects.create(
        project=project,
        number=1,
        architecture="padim",
        status="ready",
        is_active=True,
        image_ids=[i.pk for i in images],
        metrics={
            "calibration": {
                "normal_maxima": rng.uniform(0, 1, 60).tolist(),
                "expected_share": [[t, float(np.exp(-t))] for t in np.linspace(0.05, 5, 100)],
            }
        },
    )
    run = InspectionRun.objects.create(
        project=project, model_version=version, image_ids=[i.pk for i in images]
    )
    for k, image in enumerate(images):
        for j in range(3):
            x, y = 10 + 40 * j, 10 + 30 * (k % 3)
            annotation_create(
                user=user,
                image=image,
                category_id=cats[j % 2].pk,
                geometry={"type": "box", "x": x, "y": y, "w": 20, "h": 15},
            )
        poly = [[200, 150], [230, 150], [230, 180], [200, 180]]
        suggestions_store(
            image=image,
            run=run,
            model_version=version,
            suggestions=[
                SuggestionIn.from_region(
                    Region(
                        box=[200, 150, 30, 30],
                        polygon=poly,
                        area=900.0,
                        peak_score=float(rng.uniform(0.5, 1)),
                        mean_score=0.6,
                    )
                )
            ],
        )
    # the clients are a reviewer of the project, as a team's are (a site admin skips the
    # membership lookup every request makes)
    from inspection.services.projects import member_set

    reviewer = get_user_model().objects.create_user("reviewer", "", "load-password-1")
    member_set(user=user, project=project, username=reviewer.username, role="reviewer")
    token = Token.objects.create(user=reviewer).key
    return project, images, token


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--worker-class", default="gthread", help="gunicorn's: gthread or sync")
    ap.add_argument(
        "--writers", type=int, default=0, help="annotators saving labels meanwhile (default 0)"
    )
    ap.add_argument(
        "--write-every", type=float, default=5.0, help="seconds between one writer's saves"
    )
    ap.add_argument(
        "--no-analyze", action="store_true", help="leave the new tables without statistics"
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="each request's own cost in one process (no HTTP, no other clients)",
    )
    ap.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
    )
    args = ap.parse_args()

    server_url = args.database_url
    db_url = make_database(server_url)
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            os.environ["DATABASE_URL"] = db_url
            os.environ["MEDIA_ROOT"] = str(tmp / "media")
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inspection.settings")
            from benchmarks.throwaway import throwaway_secret_key

            throwaway_secret_key()
            import django

            django.setup()
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
            t = time.perf_counter()
            project, images, token = fill(args.images, tmp)
            print(f"{len(images)} images filled in {time.perf_counter() - t:.0f} s")
            from django.db import connection, connections

            # what autovacuum does within a minute of a big import: without statistics the
            # planner took the new tables for empty and joined every suggestion with every image
            # (10 ms of PostgreSQL CPU per review queue page instead of 2.7)
            if not args.no_analyze:
                with connection.cursor() as cursor:
                    cursor.execute("ANALYZE")

            if args.in_process:
                in_process(project, images, token)
                return
            connections.close_all()
            port = free_port()
            server = serve(tmp, port, args.workers, args.threads, args.worker_class)
            try:
                run_load(args, server, port, project, images, token)
            finally:
                server.terminate()  # workers stop with the master (a kill orphans them)
                server.wait()
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(server_url, db_url)


def request_paths(project, images) -> dict:
    return {
        "images list": f"/api/projects/{project.pk}/images/?limit=50",
        "an image's labels": None,  # per request, a different image
        "review queue": f"/api/projects/{project.pk}/suggestions/?status=pending&limit=50",
        "a tile": f"/api/images/{images[0].pk}/dzi/image_files/10/0_0.jpg",
    }


def in_process(project, images, token: str, repeat: int = 200) -> None:
    """``--in-process``: each request's own cost in one process (Django's test client, the same
    database), without HTTP, gunicorn or other clients: CPU (this process and the PostgreSQL
    process serving it) and wall ms per request."""
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]

    def server_cpu() -> float:  # the PostgreSQL process serving this connection
        with open(f"/proc/{backend}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    print("| request | CPU ms | PostgreSQL CPU ms | wall ms |\n| --- | --- | --- | --- |")
    for kind, path in request_paths(project, images).items():
        paths = [path or f"/api/images/{images[i % len(images)].pk}/annotations/" for i in
                 range(repeat)]  # fmt: skip
        assert client.get(paths[0]).status_code == 200, kind  # and warm
        wall, cpu, pg = time.perf_counter(), time.process_time(), server_cpu()
        for p in paths:
            client.get(p)
        cpu = (time.process_time() - cpu) / repeat * 1000
        pg = (server_cpu() - pg) / repeat * 1000
        wall = (time.perf_counter() - wall) / repeat * 1000
        print(f"| {kind} | {cpu:.1f} | {pg:.1f} | {wall:.1f} |")


def run_load(args, server, port: int, project, images, token: str) -> None:
    import urllib3

    base = f"http://127.0.0.1:{port}"
    kinds = request_paths(project, images)
    headers = {"Authorization": f"Token {token}"}
    results: dict[str, list[float]] = {k: [] for k in kinds}
    errors: dict[str, int] = {k: 0 for k in kinds}
    if args.writers:
        results["a label saved"], errors["a label saved"] = [], 0
        from annotations.models import DefectCategory

        category = DefectCategory.objects.filter(project=project).values_list("pk", flat=True)[0]
    lock = threading.Lock()
    stop = time.perf_counter() + args.seconds
    # warm every path once (first-request imports are not what is measured)
    warm = urllib3.PoolManager()
    for path in kinds.values():
        warm.request(
            "GET", base + (path or f"/api/images/{images[0].pk}/annotations/"), headers=headers
        )

    def client(n: int) -> None:
        pool = urllib3.PoolManager(maxsize=1)
        names = list(kinds)
        i = n
        while time.perf_counter() < stop:
            kind = names[i % len(names)]
            path = kinds[kind] or f"/api/images/{images[i % len(images)].pk}/annotations/"
            t0 = time.perf_counter()
            try:
                r = pool.request("GET", base + path, headers=headers, retries=False, timeout=30)
                ok = r.status == 200
            except Exception:  # noqa: BLE001 - a refused or dropped connection is an error
                ok = False
            ms = 1000 * (time.perf_counter() - t0)
            with lock:
                results[kind].append(ms)
                errors[kind] += 0 if ok else 1
            i += 1

    def writer(n: int) -> None:
        import json
        import random

        pool = urllib3.PoolManager(maxsize=1)
        rng = random.Random(n)
        time.sleep(rng.uniform(0, args.write_every))  # not all at once
        while time.perf_counter() < stop:
            image = images[rng.randrange(len(images))]
            body = json.dumps(
                {"category": category, "geometry": {"type": "box", "x": rng.randrange(280),
                 "y": rng.randrange(200), "w": 12, "h": 9}}
            )  # fmt: skip
            t0 = time.perf_counter()
            try:
                r = pool.request(
                    "POST",
                    f"{base}/api/images/{image.pk}/annotations/",
                    body=body,
                    headers={**headers, "Content-Type": "application/json"},
                    retries=False,
                    timeout=30,
                )
                ok = r.status == 201
            except Exception:  # noqa: BLE001
                ok = False
            ms = 1000 * (time.perf_counter() - t0)
            with lock:
                results["a label saved"].append(ms)
                errors["a label saved"] += 0 if ok else 1
            time.sleep(max(0.0, args.write_every - ms / 1000))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(args.writers)]
    cpu0 = cpu_seconds(server.pid)
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    cpu = {k: v - cpu0[k] for k, v in cpu_seconds(server.pid).items()}
    total = sum(len(v) for v in results.values())
    every = [ms for v in results.values() for ms in v]
    print(
        f"\n{args.clients} clients"
        + (
            f" and {args.writers} writers (a label every {args.write_every:g} s each)"
            if args.writers
            else ""
        )
        + f", {wall:.0f} s, gunicorn {args.workers} workers x {args.threads} threads, "
        "PostgreSQL\n"
    )
    print("| request | requests | errors | median ms | p95 ms |")
    print("| --- | --- | --- | --- | --- |")
    for k, v in results.items():
        print(
            f"| {k} | {len(v)} | {errors[k]} | {statistics.median(v) if v else 0:.0f} | "
            f"{p95(v):.0f} |"
        )
    print(
        f"| **all** | {total} | {sum(errors.values())} | {statistics.median(every):.0f} | "
        f"{p95(every):.0f} |\n\n{total / wall:.1f} requests/s"
    )
    print(
        "CPU per request: "
        + ", ".join(f"{k} {1000 * v / max(total, 1):.1f} ms" for k, v in cpu.items())
        + f"; the machine's {os.cpu_count()} cores were "
        f"{100 * sum(cpu.values()) / (wall * (os.cpu_count() or 1)):.0f} % busy with them"
    )


if __name__ == "__main__":
    main()
