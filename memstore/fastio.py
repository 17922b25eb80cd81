"""Small-file reads and appends with the fewest system calls.

An edit reads HEAD, the branch ref, a few loose objects and the block file; Python's
buffered `open()` spends nine system calls on each (fstat twice, a terminal check, two
seeks). On a virtual machine system calls dominate an edit's CPU time, so the hot path
reads and appends through these instead.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time

_CHUNK = 1 << 16


def read_file(path: str) -> bytes:
    """The whole content of `path` (raises FileNotFoundError, IsADirectoryError, …)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunk = os.read(fd, _CHUNK)
        if len(chunk) < _CHUNK:  # a short read of a regular file is its end
            return chunk
        parts = [chunk]
        while chunk := os.read(fd, _CHUNK):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def append_file(path: str, data: bytes) -> None:
    """Append `data` to `path` in one write (creating it, not its folder)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove_file(path: str) -> None:
    """Remove a file if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Freer:
    """Removes files on a background thread of this process.

    Freeing a big file (a 1 MB index replaced by the next) takes milliseconds on some disks;
    nobody needs to wait for it. A file still queued when the process ends is found by the
    next sweep of its folder (see `Committer`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[str] = queue.Queue()

    def put(self, paths: list[str]) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: no thread yet
                self._pid, self._queue = os.getpid(), queue.Queue()
                threading.Thread(target=self._run, args=(self._queue,), name="memstore-free", daemon=True).start()
                atexit.register(self.finish)
            for path in paths:
                self._queue.put(path)

    def wait(self) -> None:
        """Return once every file queued so far is removed."""
        self._queue.join()

    def finish(self, timeout: float = 2.0) -> None:
        """At exit: give the thread a moment to remove what is queued (the rest waits for a sweep)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.001)

    @staticmethod
    def _run(paths: queue.Queue[str]) -> None:
        while True:
            path = paths.get()
            try:
                remove_file(path)
            except OSError:
                pass
            finally:
                paths.task_done()


_freer = _Freer()


def remove_later(paths: list[str]) -> None:
    """Remove these files soon, on a background thread (see `_Freer`)."""
    if paths:
        _freer.put(paths)


def wait_for_removals() -> None:
    """Return once the files given to `remove_later` so far are gone."""
    _freer.wait()
