"""Per-file and repository locks, through filelock's platform locks.

filelock takes `flock` on Unix and `LockFileEx` on Windows; the system frees a lock when
its process dies, so a killed writer never blocks the next one. Each lock file is opened
once per process and locked through `filelock.lock_descriptor` (opening and closing it on
every acquire, as `filelock.FileLock` does, cost 0.4 ms of a 4 ms edit here); the threads
of a process take turns on a `threading.Lock` first, since one descriptor's lock does not
exclude its own process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import lock_descriptor, unlock_descriptor

from .errors import LockTimeoutError

POLL = 0.0005  # seconds between attempts while another process holds the lock
TIMEOUT = 120.0  # seconds before a wait is given up with a clear error


class _Lock:
    """One lock file of this process: its descriptor, the threads' turn-taking, who uses it now."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.turn = threading.Lock()
        self.users = 0


class Locks:
    """The lock files of one workspace (`.memstore/locks/`)."""

    KEEP_OPEN = 128  # lock files kept open; unused ones beyond this are closed (a workspace may have 10k blocks)

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[str, _Lock] = {}
        self._guard = threading.Lock()
        self._pid = os.getpid()

    def _use(self, name: str) -> _Lock:
        with self._guard:
            if self._pid != os.getpid():  # a forked child opens its own (its parent's are the parent's)
                self._open, self._pid = {}, os.getpid()
            lock = self._open.pop(name, None)
            if lock is None:
                if len(self._open) >= self.KEEP_OPEN:
                    self._close_unused()
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
                lock = _Lock(os.open(self.folder / name, flags, 0o644))
            self._open[name] = lock  # most recently used last
            lock.users += 1
            return lock

    def _done(self, lock: _Lock) -> None:
        with self._guard:
            lock.users -= 1

    def _close_unused(self) -> None:
        for name in [n for n, lock in self._open.items() if lock.users == 0][: len(self._open) // 2 or 1]:
            os.close(self._open.pop(name).fd)

    @contextmanager
    def hold(self, name: str, what: str, timeout: float = TIMEOUT) -> Iterator[None]:
        """Hold lock `name`; LockTimeoutError naming `what` after `timeout` seconds."""
        lock = self._use(name)
        try:
            deadline = time.monotonic() + timeout
            if not lock.turn.acquire(timeout=timeout):
                raise self._timed_out(name, what, timeout)
            try:
                while not lock_descriptor(lock.fd, blocking=False):
                    if time.monotonic() > deadline:
                        raise self._timed_out(name, what, timeout)
                    time.sleep(POLL)
                try:
                    yield
                finally:
                    unlock_descriptor(lock.fd)
            finally:
                lock.turn.release()
        finally:
            self._done(lock)

    def _timed_out(self, name: str, what: str, timeout: float) -> LockTimeoutError:
        return LockTimeoutError(f"Timed out after {timeout:g} s waiting for the lock of {what} "
                                f"({self.folder / name}): another memstore process holds it.")

    def file(self, rel: str) -> str:
        """The lock name of a workspace file."""
        return rel.replace("/", "__") + ".lock"
