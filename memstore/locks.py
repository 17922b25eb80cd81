"""Per-file and repository locks, through filelock's platform locks.

filelock takes `flock` on Unix and `LockFileEx` on Windows; the system frees a lock when
its process dies, so a killed writer never blocks the next one. Each lock file is opened
once per process and locked through `filelock.lock_descriptor` (opening and closing it on
every acquire, as `filelock.FileLock` does, cost 0.4 ms of a 4 ms edit here); the threads
of a process take turns on a `threading.Lock` first, since one descriptor's lock does not
exclude its own process.

A lock another process holds is waited for in the kernel's queue on Unix (a blocking
`flock` of the same lock, in a helper thread so the wait can be given up at its timeout),
not by polling: polling let a writer that had just let go take the lock again before any
waiter looked, so with 8 writers on one block an edit's p99 was 50-70 times its p50
(`benchmarks/edits.py`); waiting in the queue brought that under 10. Windows and the
portable mode poll.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from filelock import lock_descriptor, unlock_descriptor

from .errors import LockTimeoutError
from .fsutil import PORTABLE

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

POLL = 0.0005  # seconds between attempts while another process holds the lock (where there is no queue)
TIMEOUT = 120.0  # seconds before a wait is given up with a clear error


class _Lock:
    """One lock file of this process: its descriptor, the threads' turn-taking, who uses it now."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.turn = threading.Lock()
        self.users = 0
        self.stale = False  # its file was removed or replaced: closed once its last user lets go


class _QueuedWait:
    """A blocking `flock` in a helper thread, waited for until a deadline.

    A wait given up (at the deadline, or by an exception such as Ctrl-C) stays in the
    kernel's queue; when the lock comes, the helper lets it go at once and then ends the
    caller's claim (`release`: its turn and its use of the descriptor), so nothing of this
    process keeps the lock or closes the descriptor while the helper still waits on it.
    """

    def __init__(self, fd: int, release: Callable[[], None]) -> None:
        self.fd, self.release = fd, release
        self.got = threading.Event()
        self.guard = threading.Lock()
        self.abandoned = False
        self.error: OSError | None = None

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.error = exc
        with self.guard:
            if not self.abandoned:
                self.got.set()
                return
        try:
            if self.error is None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.release()

    def result(self, deadline: float) -> bool:
        """True once the lock is held; False at `deadline`; the helper's OSError if it failed."""
        try:
            threading.Thread(target=self._run, name="memstore-lock-wait", daemon=True).start()
        except BaseException:
            self.release()
            raise
        try:
            self.got.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:
            if not self._abandon():
                self._fail()
            raise
        if self._abandon():
            return False
        if self.error is not None:
            self.release()
            raise self.error
        return True

    def _abandon(self) -> bool:
        """Leave the lock to the helper unless it already came; whether it was left."""
        with self.guard:
            self.abandoned = not self.got.is_set()
            return self.abandoned

    def _fail(self) -> None:
        try:
            if self.error is None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.release()


class Locks:
    """The lock files of one workspace (`.memstore/locks/`)."""

    KEEP_OPEN = 128  # lock files kept open; unused ones beyond this are closed (a workspace may have 10k blocks)

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[str, _Lock] = {}
        self._guard = threading.Lock()
        self._pid = os.getpid()
        weakref.finalize(self, _close_all, self._open)  # a store let go of closes its lock files

    def _use(self, name: str) -> _Lock:
        with self._guard:
            if self._pid != os.getpid():  # a forked child opens its own (its parent's are the parent's)
                self._open.clear()
                self._pid = os.getpid()
            lock = self._open.pop(name, None)
            if lock is None:
                if len(self._open) >= self.KEEP_OPEN:
                    self._close_unused()
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
                try:
                    fd = os.open(self.folder / name, flags, 0o644)
                except FileNotFoundError:  # the folder was removed: made again
                    self.folder.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.folder / name, flags, 0o644)
                lock = _Lock(fd)
            self._open[name] = lock  # most recently used last
            lock.users += 1
            return lock

    def _done(self, lock: _Lock) -> None:
        with self._guard:
            lock.users -= 1
            if lock.stale and not lock.users:
                os.close(lock.fd)

    def _close_unused(self) -> None:
        for name in [n for n, lock in self._open.items() if lock.users == 0][: len(self._open) // 2 or 1]:
            os.close(self._open.pop(name).fd)

    @contextmanager
    def hold(self, name: str, what: str, timeout: float = TIMEOUT) -> Iterator[None]:
        """Hold lock `name`; LockTimeoutError naming `what` after `timeout` seconds.

        A lock file removed or replaced since it was opened (`git clean -fdX`, `rm -r
        .memstore/locks`) is opened again: locking the old one would exclude no one who
        opened the new one.
        """
        deadline = time.monotonic() + timeout
        while True:
            lock = self._use(name)
            if not lock.turn.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self._done(lock)
                raise self._timed_out(name, what, timeout)
            if not self._take(lock, deadline):
                raise self._timed_out(name, what, timeout)
            if self._current(name, lock):
                break
            if time.monotonic() > deadline:  # a file that never stays put
                raise self._timed_out(name, what, timeout)
        try:
            yield
        finally:
            try:
                unlock_descriptor(lock.fd)
            finally:
                self._release(lock)

    def _current(self, name: str, lock: _Lock) -> bool:
        """Whether the held `lock` is still the file at its path; if not, it is let go and forgotten."""
        try:
            same = os.path.samestat(os.fstat(lock.fd), os.stat(self.folder / name))
        except OSError:  # gone, or its folder is no longer one: let go; opening it again says why
            same = False
        if not same:
            unlock_descriptor(lock.fd)
            with self._guard:
                if self._open.get(name) is lock:
                    del self._open[name]
                lock.stale = True
            self._release(lock)
        return same

    def _take(self, lock: _Lock, deadline: float) -> bool:
        """Lock `lock`'s file, waiting until `deadline`; on False or an error, this thread's claim is ended."""
        queue = fcntl is not None and not PORTABLE
        try:
            if lock_descriptor(lock.fd, blocking=False):
                return True
            while not queue and time.monotonic() < deadline:
                time.sleep(POLL)
                if lock_descriptor(lock.fd, blocking=False):
                    return True
        except BaseException:
            self._release(lock)
            raise
        if queue:
            return _QueuedWait(lock.fd, lambda: self._release(lock)).result(deadline)
        self._release(lock)
        return False

    def _release(self, lock: _Lock) -> None:
        """End a thread's claim on `lock`: its turn, and its use of the descriptor."""
        lock.turn.release()
        self._done(lock)

    def _timed_out(self, name: str, what: str, timeout: float) -> LockTimeoutError:
        return LockTimeoutError(f"Timed out after {timeout:g} s waiting for the lock of {what} "
                                f"({self.folder / name}): another memstore process holds it.")

    @contextmanager
    def files(self, rels: Iterable[str]) -> Iterator[None]:
        """Hold the locks of several workspace files, in their locks' order (so no two holders wait for each
        other); case twins share one lock, taken once."""
        with ExitStack() as stack:
            for name, rel in sorted({self.file(rel): rel for rel in rels}.items()):
                stack.enter_context(self.hold(name, rel))
            yield

    def file(self, rel: str) -> str:
        """The lock name of a workspace file: case-folded, so case twins (`Org.md`, `org.md`), one file on macOS
        and Windows, share one lock on Linux too."""
        return rel.replace("/", "__").lower() + ".lock"


def _close_all(open_locks: dict[str, _Lock]) -> None:
    for lock in open_locks.values():
        try:
            os.close(lock.fd)
        except OSError:
            pass
    open_locks.clear()
