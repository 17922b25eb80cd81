"""Per-file and repository locks, through filelock's platform locks.

filelock takes `flock` on Unix and `LockFileEx` on Windows; the system frees a lock when
its process dies, so a killed writer never blocks the next one. A lock object is made
once per path and shared by a process's threads (filelock keeps each thread's hold apart).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from .errors import LockTimeoutError

POLL = 0.0005  # seconds between attempts while another process holds the lock
TIMEOUT = 120.0  # seconds before a wait is given up with a clear error


class Locks:
    """The lock files of one workspace (`.memstore/locks/`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._made: dict[str, filelock.FileLock] = {}
        self._guard = threading.Lock()
        self._pid = os.getpid()

    def _lock(self, name: str) -> filelock.FileLock:
        with self._guard:
            if self._pid != os.getpid():  # a forked child makes its own (a lock is never shared across a fork)
                self._made, self._pid = {}, os.getpid()
            lock = self._made.get(name)
            if lock is None:
                lock = self._made[name] = filelock.FileLock(self.folder / name, thread_local=True)
            return lock

    @contextmanager
    def hold(self, name: str, what: str, timeout: float = TIMEOUT) -> Iterator[None]:
        """Hold lock `name`; LockTimeoutError naming `what` after `timeout` seconds."""
        lock = self._lock(name)
        try:
            lock.acquire(timeout=timeout, poll_interval=POLL)
        except filelock.Timeout:
            raise LockTimeoutError(f"Timed out after {timeout:g} s waiting for the lock of {what} "
                                   f"({self.folder / name}): another memstore process holds it.") from None
        try:
            yield
        finally:
            lock.release()

    def file(self, rel: str) -> str:
        """The lock name of a workspace file."""
        return rel.replace("/", "__") + ".lock"
