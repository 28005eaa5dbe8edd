"""``workers.memory``: a process's own peak RSS, not the one of the process that started it."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import run_python
from workers import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")

CHILD = "from workers.memory import peak_rss_mb; print(round(peak_rss_mb()))"


def test_a_child_reports_its_own_peak_not_its_parents():
    """The 20 MP benchmark's child reported 5.4 GB: the parent's peak, carried in at exec."""
    ballast = bytearray(400 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: 400 MB resident
    assert memory.peak_rss_mb() > 400
    child = float(run_python(CHILD).stdout.split()[-1])
    assert child < 200, f"a fresh interpreter reported {child:.0f} MB: its parent's peak"
    code = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    inherited = float(run_python(code).stdout.split()[-1])
    assert inherited > 400, "ru_maxrss no longer carries the parent's peak: simplify memory.py"
    del ballast
