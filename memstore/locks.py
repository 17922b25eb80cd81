"""Cross-process locks that are fair and survive crashes.

A plain flock is unfair: a process that releases it and asks again at once usually wins,
so one writer can starve for seconds. `FairLock` queues waiters in arrival order: each
waiter holds a flock on its own ticket file and waits on its predecessor's; the kernel
releases every flock of a dead process, so a crash never blocks the queue. Mutual
exclusion itself comes from a `filelock.FileLock`, so a waiter that died in the queue can
perturb the order but never let two holders in.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from .errors import LockTimeoutError

DEFAULT_TIMEOUT = 60.0


class FairLock:
    """A FIFO, crash-safe, inter-process lock at `path` (not reentrant)."""

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._queue = path.parent / f"{path.name}.q"
        self._mutex = FileLock(str(path), timeout=timeout, poll_interval=0.001, thread_local=False)
        self._ticket_fd: int | None = None

    def acquire(self) -> None:
        ticket_fd, number = self._join_queue()
        try:
            self._wait_for(number - 1)
            self._mutex.acquire()
        except FileLockTimeout:
            os.close(ticket_fd)
            raise LockTimeoutError(
                f"{self.path.name} stayed locked by another process for {self.timeout:.0f}s"
            ) from None
        except BaseException:
            os.close(ticket_fd)
            raise
        self._ticket_fd = ticket_fd

    def release(self) -> None:
        self._mutex.release()
        if self._ticket_fd is not None:
            os.close(self._ticket_fd)  # lets the next ticket in
            self._ticket_fd = None

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _join_queue(self) -> tuple[int, int]:
        """Take the next ticket; return our flocked ticket file and its number."""
        self._queue.mkdir(parents=True, exist_ok=True)
        tail_fd = os.open(self._queue / "tail", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(tail_fd, fcntl.LOCK_EX)
            raw = os.pread(tail_fd, 32, 0).strip(b"\0 \n")
            number = int(raw) + 1 if raw.isdigit() else 1
            ticket_fd = os.open(self._queue / str(number), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(ticket_fd, fcntl.LOCK_EX)
            os.pwrite(tail_fd, b"%020d" % number, 0)
        finally:
            os.close(tail_fd)
        return ticket_fd, number

    def _wait_for(self, number: int) -> None:
        """Block until ticket `number` is released (by its holder, or by the kernel on death)."""
        path = self._queue / str(number)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
