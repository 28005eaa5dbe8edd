"""A small process supervisor for ``loupe run``: start the web server, the worker and (when
needed) Redis, and restart whichever exits, with back-off, while the others keep running.

One machine, a handful of children: a loop over ``Popen.poll`` is all it takes (honcho stops
everything when one child exits, which is the behaviour this replaces; supervisord is another
daemon with its own configuration to install). Back-off doubles from ``min_backoff`` to
``max_backoff`` seconds for a child that keeps dying, and starts over once it has run for
``stable`` seconds.

Each child runs in its own process group (:func:`spawn`), and a child that exits or is stopped
takes its whole group with it: a Celery worker forks its pool and its embedded beat, and when the
worker itself is killed (out of memory, say) those would stay behind, orphaned, holding memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


def spawn(command: list[str], **kwargs) -> subprocess.Popen:
    """Start ``command`` in a process group of its own, for :class:`Supervisor`."""
    return subprocess.Popen(command, start_new_session=True, **kwargs)


def _signal_group(child: Child, sig: int) -> None:
    """Send ``sig`` to every process left in the child's own group (one started by
    :func:`spawn`; nothing for a child that shares the supervisor's group). The group outlives
    its leader while anything it forked is in it, so its id is not reused meanwhile."""
    if child.proc is None or not child.own_group:
        return
    try:
        os.killpg(child.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Child:
    name: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    due: float | None = None  # when a dead child is started again
    own_group: bool = False  # it leads a process group of its own (started by spawn)


class Supervisor:
    def __init__(
        self,
        children: list[Child],
        log: Callable[[str], None],
        *,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        stable: float = 60.0,
    ) -> None:
        self.children = children
        self.log = log
        self.min_backoff, self.max_backoff, self.stable = min_backoff, max_backoff, stable

    def start_all(self) -> None:
        for child in self.children:
            self._start(child, time.monotonic())

    def _start(self, child: Child, now: float) -> None:
        child.proc = child.start()
        try:
            child.own_group = os.getpgid(child.proc.pid) == child.proc.pid
        except ProcessLookupError:  # it exited at once; its group, if any, is its pid
            child.own_group = False
        child.started_at = now
        child.due = None

    def tick(self, now: float | None = None) -> None:
        """Notice children that exited and start them again when their back-off is over."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.due is not None:
                if now >= child.due:
                    child.restarts += 1
                    self.log(f"{child.name}: starting again (restart {child.restarts})")
                    self._start(child, now)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            _signal_group(child, signal.SIGKILL)  # what it forked must not outlive it
            ran = now - child.started_at
            if ran >= self.stable:
                child.backoff = self.min_backoff
            else:
                child.backoff = min(max(child.backoff * 2, self.min_backoff), self.max_backoff)
            child.due = now + child.backoff
            self.log(
                f"{child.name} exited with {child.proc.returncode} after {ran:.0f} s; "
                f"starting it again in {child.backoff:.0f} s (the others keep running)"
            )

    def stop_all(self, timeout: float = 15.0) -> None:
        """Terminate every child (the last started first), then kill what did not stop, and
        what each one forked."""
        for child in reversed(self.children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            _signal_group(child, signal.SIGKILL)
