"""Peak resident memory of this process, measured so that a parent's memory does not leak in.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not the process's own peak on Linux: when a process
is started by ``fork``/``vfork`` + ``exec`` (``subprocess``, Celery, pytest-xdist), the kernel
carries the forking process's peak into it at ``exec``. A 20 MP prediction started from a
benchmark that had trained a detector reported that benchmark's 5.4 GB instead of its own
1.4 GB. ``VmHWM`` in ``/proc/self/status`` belongs to the current address space only.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``; ``ru_maxrss`` where there is no
    ``/proc``, e.g. macOS, where it is in bytes)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
