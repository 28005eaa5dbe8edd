"""Shared fixtures: users in every role, a project, image files of every kind, a real Redis and a
real Celery worker (for integration and browser tests)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("LOUPE_DATASETS", ROOT.parent / "shared" / "datasets"))


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(
            f"dataset {name} not found at {path} (set LOUPE_DATASETS to ../shared/datasets)"
        )
    return path


def run_python(
    code: str, *, drop_env: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter at the repository root (what a new process imports),
    without the environment variables ``drop_env``; fails the test with its stderr unless it
    exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# --- media and queues isolated per test session ---------------------------------------------

_MEDIA = tempfile.mkdtemp(prefix="loupe-test-media-")
_QUEUE_PREFIX = f"test{os.getpid()}-"


@pytest.fixture(scope="session", autouse=True)
def _isolated_media_and_queues():
    from django.test.utils import override_settings

    override = override_settings(
        MEDIA_ROOT=_MEDIA,
        LOUPE_QUEUE_PREFIX=_QUEUE_PREFIX,
        # fast hashing: test users are made by the dozen
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        # job bodies run in-process inside a test's transaction, where a heartbeat from another
        # thread would wait on the test's locks; worker processes get their own interval
        LOUPE_JOB_HEARTBEAT_SECONDS=3600,
    )
    override.enable()
    yield
    override.disable()
    shutil.rmtree(_MEDIA, ignore_errors=True)


# --- users and a project ---------------------------------------------------------------------

PASSWORD = "correct-horse-battery"


@pytest.fixture
def make_user(db):
    from django.contrib.auth import get_user_model

    def _make(username: str, **extra):
        return get_user_model().objects.create_user(username=username, password=PASSWORD, **extra)

    return _make


@pytest.fixture
def team(make_user):
    """A project with one member per role, plus an outsider and a site admin."""
    from inspection.models import Role
    from inspection.services.projects import member_set, project_create

    users = {
        "admin": make_user("padmin"),
        "reviewer": make_user("rita"),
        "annotator": make_user("ann"),
        "outsider": make_user("otto"),
        "site_admin": make_user("root", is_staff=True, is_superuser=True),
    }
    project = project_create(user=users["admin"], name="Bottles")
    member_set(user=users["admin"], project=project, username="rita", role=Role.REVIEWER)
    member_set(user=users["admin"], project=project, username="ann", role=Role.ANNOTATOR)
    users["project"] = project
    return users


@pytest.fixture
def client_for():
    from rest_framework.test import APIClient

    def _client(user):
        c = APIClient()
        if user is not None:
            c.force_authenticate(user=user)
        return c

    return _client


# --- image files ---------------------------------------------------------------------------


def image_bytes(fmt: str = "PNG", size=(64, 48), mode: str = "RGB", seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        arr = rng.integers(0, 65535, (h, w), dtype=np.uint16)
        img = PILImage.fromarray(arr)  # uint16 -> I;16
    elif mode == "L":
        img = PILImage.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8))
    else:
        img = PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def tiff16_rgb_bytes(size=(40, 30), seed: int = 0) -> bytes:
    import pyvips

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 65535, (size[1], size[0], 3), dtype=np.uint16)
    return pyvips.Image.new_from_array(arr).copy(interpretation="rgb16").tiffsave_buffer()


def jpeg_with_orientation(size=(60, 30), orientation: int = 6, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = PILImage.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def png_bomb_bytes(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # a few rows; the header is what matters
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.fixture
def upload():
    """An in-memory upload: upload('a.png', data)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    return lambda name, data: SimpleUploadedFile(name, data)


# --- real Redis and a real Celery worker ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url():
    """REDIS_URL when a Redis answers there; otherwise a local redis-server for this session."""
    from inspection.redis_local import redis_answers, start_local_redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    port = _free_port()
    proc = start_local_redis(
        f"redis://127.0.0.1:{port}/0", Path(tempfile.mkdtemp(prefix="loupe-redis-"))
    )
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def _database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def start_worker(transactional_db, redis_url, settings):
    """Start a real Celery worker process on this test database, consuming this session's queues:
    ``start_worker(*extra_args, **extra_env)``; stopped at the end of the test."""
    from celery import current_app  # noqa: F401  (the app is configured below)

    from workers.celery import app

    if app.conf.broker_url != redis_url:
        app.conf.broker_url = redis_url
        if app._pool is not None:  # the producer holds connections to the old URL: drop them
            app._pool.force_close_all()
            app._pool = None
    started: list[subprocess.Popen] = []

    def _start(*extra_args: str, **extra_env: str) -> subprocess.Popen:
        env = dict(
            os.environ,
            DATABASE_URL=_database_url(),
            REDIS_URL=redis_url,
            MEDIA_ROOT=_MEDIA,
            LOUPE_QUEUE_PREFIX=_QUEUE_PREFIX,
            LOUPE_JOB_HEARTBEAT_SECONDS="1",
            DJANGO_SETTINGS_MODULE="inspection.settings",
            **extra_env,
        )
        log = tempfile.NamedTemporaryFile(prefix="loupe-worker-", suffix=".log", delete=False)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery",
                "worker",
                "--pool",
                "solo",
                "-Q",
                f"{_QUEUE_PREFIX}cpu,{_QUEUE_PREFIX}gpu",
                "--loglevel",
                "INFO",
                "-n",
                f"test{os.getpid()}-{len(started)}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *extra_args,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        deadline = time.time() + 60
        while time.time() < deadline:
            if b"ready." in Path(log.name).read_bytes():
                break
            if proc.poll() is not None:
                pytest.fail("Celery worker exited:\n" + Path(log.name).read_text())
            time.sleep(0.2)
        else:
            proc.kill()
            pytest.fail("Celery worker did not start:\n" + Path(log.name).read_text())
        proc.log_path = log.name
        return proc

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def celery_worker(start_worker):
    """A real Celery worker process on this test database, consuming this session's queues."""
    return start_worker()


def wait_for_job(job_id, timeout: float = 120.0):
    from inspection.models import Job

    deadline = time.time() + timeout
    while time.time() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.is_finished:
            return job
        time.sleep(0.2)
    raise AssertionError(
        f"job {job_id} did not finish in {timeout} s (status {job.status}, {job.message})"
    )


@pytest.fixture
def torch_one_thread():
    """Torch on one thread for the test: tiny models on a 2-core box run faster than with a
    second, busy-waiting OpenMP thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
