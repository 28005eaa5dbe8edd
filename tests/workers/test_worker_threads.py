"""The worker's math libraries get a bounded thread count (one per 2 cores by default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import os, workers.celery, torch; "
    "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])"
)


def _threads(**env: str) -> tuple[int, int]:
    """(OMP_NUM_THREADS as the worker sets it, torch's thread count) in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    clean.pop("LOUPE_WORKER_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    omp, torch_threads, wait = out.stdout.strip().splitlines()[-1].split()
    _threads.wait_policy = wait
    return int(omp), int(torch_threads)


def test_worker_uses_half_the_cores_unless_told():
    half = max(1, (os.cpu_count() or 2) // 2)
    assert _threads() == (half, half)  # torch alone would take every core
    assert _threads(LOUPE_WORKER_THREADS="3")[0] == 3  # torch caps it at the core count
    assert _threads(LOUPE_WORKER_THREADS="3", OMP_NUM_THREADS="2")[0] == 2  # the operator's wins


def test_idle_threads_sleep_unless_told():
    _threads()
    assert _threads.wait_policy == "PASSIVE"
    _threads(OMP_WAIT_POLICY="ACTIVE")
    assert _threads.wait_policy == "ACTIVE"  # the operator's wins
