"""Cross-process locks that are fair and survive crashes, without creating files per use.

A plain flock is unfair: a process that releases it and asks again at once usually wins,
so one writer can starve for seconds. `FairLock` queues waiters in arrival order with
Linux open-file-description byte-range locks in one persistent queue file: a waiter takes
ticket n, holds a lock on byte n and waits for the lock on byte n-1; the kernel drops the
locks of a process that dies, so a crash never blocks the queue. Mutual exclusion itself
comes from an flock on the lock file, taken with filelock's descriptor lock, so a waiter
that died in the queue can perturb the order but never let two holders in. (filelock's
`FileLock` object costs ~0.15 ms per acquire in bookkeeping, as much as the rest of an
uncontended lock; an edit takes two locks.) Creating files is slow on some disks; nothing
here creates a file after the first use.

The queue file also holds one mailbox slot per ticket (modulo `SLOTS`), so a holder can
do the work of the waiters queued behind it (group commit): a waiter posts its request
in its slot before it waits, and when its turn comes it may find the answer there and
leave without taking the lock at all.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from filelock import lock_descriptor, unlock_descriptor

from .errors import LockTimeoutError

DEFAULT_TIMEOUT = 60.0
_TICKETS = 1 << 20  # ticket n is the lock on byte _TICKETS + n (locks and data do not mix); bytes 0-7 count
_MARK = 16  # a number others may set without holding the lock (see `write_mark`)
_HINT = 24  # a few bytes anyone may read without taking the lock (see `write_hint`)
HINT_SIZE = 32
_STATE = 64  # the holder's state record, in two areas written in turn (see `write_state`)
_STATE_HEAD = struct.Struct("<QII")  # generation, length, crc32
_STATE_AREA = 32 * 1024 - 32
_STATE_ROOM = _STATE_AREA - 16
SLOTS = 256  # mailbox slots, by ticket modulo SLOTS, after the state record (a sparse file)
# A request carries every edit of its file still waiting for a commit (up to 16, ~500 bytes
# each); one that did not fit would be invisible to the holder, which then could not batch it.
SLOT_SIZE = 16 * 1024
_SLOT_FIRST_READ = 4096  # most messages fit: one read
_SLOT_AT = 64 * 1024
_SLOT_HEAD = struct.Struct("<QII")  # ticket, payload length, crc32 of payload
CONTENT_AT = 8 << 20  # past the slots: contents of a file's edits waiting for commits (see `write_content`)
SLOT_PAYLOAD = SLOT_SIZE - _SLOT_HEAD.size


def _byte_lock(fd: int, offset: int, *, kind: int = fcntl.F_WRLCK, wait: bool = True) -> None:
    """Lock (or with F_UNLCK, unlock) one byte with an open-file-description lock."""
    flock = struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, flock)


class FairLock:
    """A FIFO, crash-safe, inter-process lock at `path` (not reentrant)."""

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._queue_path = path.parent / f"{path.name}.queue"
        self._fd: int | None = None  # the queue file, while waiting or holding
        self._mutex_fd: int | None = None  # `path`, flock-ed while holding
        self.ticket = 0

    def acquire(self, *, queued: Callable[[int], None] | None = None,
                done: Callable[[int], bool] | None = None) -> bool:
        """Wait for our turn and take the lock.

        `queued(ticket)` runs once we are in line (e.g. to post a request in our slot);
        `done(ticket)` runs when our turn comes: if it says an earlier holder already did
        our work, we leave the line without taking the lock and return False.
        """
        deadline = time.monotonic() + self.timeout
        self._fd = os.open(self._queue_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            ticket = self.ticket = self._take_ticket(self._fd)
            if queued is not None:
                queued(ticket)
            if ticket > 1:
                self._wait_for(ticket - 1, deadline)
            if done is not None and done(ticket):
                self._close()
                return False
            self._take_mutex(deadline)
        except BaseException:
            self._close()  # interrupted even right after taking the mutex: give everything back
            raise
        return True

    def _wait_for(self, ticket: int, deadline: float) -> None:
        """Return once the holder of `ticket` (our predecessor) is gone, or time out.

        A blocking byte-range lock has no timeout, so a helper thread blocks on it while we
        wait with one; if we give up, it ends when the predecessor does (nothing is held).
        """
        assert self._fd is not None
        fd, offset = self._fd, _TICKETS + ticket
        try:
            _byte_lock(fd, offset, wait=False)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            gone, failed = threading.Event(), []

            def wait() -> None:
                try:
                    _byte_lock(fd, offset)
                except OSError as err:  # e.g. the descriptor closed after we gave up
                    failed.append(err)
                finally:
                    gone.set()

            threading.Thread(target=wait, name="memstore-lock-wait", daemon=True).start()
            if not gone.wait(max(0.0, deadline - time.monotonic())):
                raise LockTimeoutError(
                    f"{self.path.name} stayed locked by another process for {self.timeout:.0f}s") from None
            if failed:
                raise failed[0] from None
        _byte_lock(fd, offset, kind=fcntl.F_UNLCK)

    def _take_mutex(self, deadline: float) -> None:
        """flock `path` through filelock's descriptor lock; the queue makes waiting here rare.

        The deadline counts from joining the line, so when a holder hangs, the waiters
        behind it give up one right after another, not one timeout each.
        """
        self._mutex_fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        while not lock_descriptor(self._mutex_fd, blocking=False):
            if time.monotonic() > deadline:
                raise LockTimeoutError(f"{self.path.name} stayed locked by another process for {self.timeout:.0f}s")
            time.sleep(0.001)

    def _close(self) -> None:
        """Drop the mutex and our ticket (closing the queue file lets the next waiter go)."""
        if self._mutex_fd is not None:
            os.close(self._mutex_fd)  # closing releases the flock
            self._mutex_fd = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _take_ticket(self, fd: int) -> int:
        """Draw the next ticket number and hold its byte."""
        _byte_lock(fd, 0)
        try:
            raw = os.pread(fd, 8, 0)
            ticket = (struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0) + 1
            os.pwrite(fd, struct.pack("<Q", ticket), 0)
            _byte_lock(fd, _TICKETS + ticket, wait=False)
        finally:
            _byte_lock(fd, 0, kind=fcntl.F_UNLCK)
        return ticket

    def read_state(self) -> bytes:
        """The state record the last holder left (empty if none)."""
        assert self._mutex_fd is not None, "read_state needs the lock held"
        return _newest_state(self._fd)[1]

    def write_state(self, data: bytes) -> None:
        """Record state for the next holder, e.g. edits in progress that a crash would cut short.

        Kept in the queue file, which is already open: no file is created or opened for it.
        The record alternates between two areas and its header (with a checksum) is written
        last, so a crash mid-write leaves the previous record readable, never a torn one.
        """
        assert self._mutex_fd is not None, "write_state needs the lock held"
        if len(data) > _STATE_ROOM:
            raise ValueError(f"a lock state record holds at most {_STATE_ROOM} bytes")
        generation, _ = _newest_state(self._fd)
        at = _STATE + ((generation + 1) % 2) * _STATE_AREA
        os.pwrite(self._fd, data, at + _STATE_HEAD.size)
        os.pwrite(self._fd, _STATE_HEAD.pack(generation + 1, len(data), zlib.crc32(data)), at)

    def read_mark(self) -> int:
        """The number last stored with `write_mark` (0 if none)."""
        assert self._fd is not None, "read_mark needs a place in line"
        raw = os.pread(self._fd, 8, _MARK)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0

    def last_ticket(self) -> int:
        """The newest ticket drawn so far: waiters hold the tickets after ours up to this one."""
        assert self._fd is not None, "last_ticket needs a place in line"
        raw = os.pread(self._fd, 8, 0)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0

    def write_slot(self, ticket: int, data: bytes) -> bool:
        """Put `data` in `ticket`'s mailbox; False if it does not fit (nothing written)."""
        assert self._fd is not None, "write_slot needs a place in line"
        if len(data) > SLOT_PAYLOAD:
            return False
        at = _SLOT_AT + (ticket % SLOTS) * SLOT_SIZE
        os.pwrite(self._fd, data, at + _SLOT_HEAD.size)  # the payload first, the header last
        os.pwrite(self._fd, _SLOT_HEAD.pack(ticket, len(data), zlib.crc32(data)), at)
        return True

    def read_slot(self, ticket: int) -> bytes | None:
        """What is in `ticket`'s mailbox; None if it holds another ticket's or a torn message."""
        assert self._fd is not None, "read_slot needs a place in line"
        at = _SLOT_AT + (ticket % SLOTS) * SLOT_SIZE
        raw = os.pread(self._fd, _SLOT_FIRST_READ, at)
        if len(raw) < _SLOT_HEAD.size:
            return None
        owner, size, crc = _SLOT_HEAD.unpack_from(raw)
        if owner == ticket and _SLOT_HEAD.size + size > len(raw) and size <= SLOT_PAYLOAD:
            raw += os.pread(self._fd, _SLOT_HEAD.size + size - len(raw), at + len(raw))
        data = raw[_SLOT_HEAD.size : _SLOT_HEAD.size + size]
        if owner != ticket or size > SLOT_PAYLOAD or len(data) != size or zlib.crc32(data) != crc:
            return None
        return data

    def write_content(self, at: int, data: bytes) -> None:
        """Keep `data` at offset `at` (>= CONTENT_AT) of the queue file, for `read_content`.

        The contents of edits waiting for their commits live here: writing into a file that
        is already open creates no file, which on some disks is the dearest step of an edit.
        """
        assert self._mutex_fd is not None and self._fd is not None, "write_content needs the lock held"
        assert at >= CONTENT_AT
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, at)
            view, at = view[written:], at + written

    def trim_content(self, beyond: int) -> None:
        """Give back the space of old contents if the file holds more than `beyond` bytes of them.

        Only when no kept content is needed any more (callers know: no edit waits).
        """
        assert self._mutex_fd is not None and self._fd is not None, "trim_content needs the lock held"
        if os.fstat(self._fd).st_size > CONTENT_AT + beyond:
            os.ftruncate(self._fd, CONTENT_AT)

    def release(self) -> None:
        assert self._mutex_fd is not None, "release needs the lock held"
        unlock_descriptor(self._mutex_fd)
        self._close()

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def read_mark(path: Path) -> int:
    """The mark of the lock at `path`, read without taking the lock."""
    fd = os.open(path.parent / f"{path.name}.queue", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        raw = os.pread(fd, 8, _MARK)
    finally:
        os.close(fd)
    return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0


def write_mark(path: Path, value: int) -> None:
    """Store a number with the lock at `path` without taking it.

    Whoever calls this must be the only one who does at a time (group commit: the holder of
    the repository lock marks how far each file's edits are committed).
    """
    fd = os.open(path.parent / f"{path.name}.queue", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, struct.pack("<Q", value), _MARK)
    finally:
        os.close(fd)


def write_hint(path: Path, data: bytes) -> None:
    """Leave up to HINT_SIZE bytes with the lock at `path` for anyone to read without it.

    Only a hint: a reader may see it torn or stale, so it must check what it is told.
    """
    fd = os.open(path.parent / f"{path.name}.queue", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, data[:HINT_SIZE].ljust(HINT_SIZE, b"\0"), _HINT)
    finally:
        os.close(fd)


def read_hint(path: Path) -> bytes:
    """What `write_hint` left with the lock at `path` (zero bytes if nothing)."""
    try:
        fd = os.open(path.parent / f"{path.name}.queue", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, HINT_SIZE, _HINT)
    finally:
        os.close(fd)


def read_content(path: Path, at: int, size: int) -> bytes:
    """What `write_content` kept at `at` with the lock at `path` (shorter if the file is)."""
    fd = os.open(path.parent / f"{path.name}.queue", os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts, got = [], 0
        while got < size:
            chunk = os.pread(fd, size - got, at + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    return b"".join(parts)


def _newest_state(fd: int) -> tuple[int, bytes]:
    """(generation, data) of the newer intact state area; (0, b"") if neither is."""
    best = (0, b"")
    for area in (0, 1):
        at = _STATE + area * _STATE_AREA
        head = os.pread(fd, _STATE_HEAD.size, at)
        if len(head) < _STATE_HEAD.size:
            continue
        generation, size, crc = _STATE_HEAD.unpack(head)
        if generation <= best[0] or size > _STATE_ROOM:
            continue
        data = os.pread(fd, size, at + _STATE_HEAD.size) if size else b""
        if len(data) == size and zlib.crc32(data) == crc:
            best = (generation, data)
    return best


def in_line(path: Path, ticket: int) -> bool:
    """True if the holder of `ticket` for the lock at `path` is still waiting or holding."""
    fd = os.open(path.parent / f"{path.name}.queue", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _TICKETS + ticket, 1, 0)
        kind = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
    finally:
        os.close(fd)
    return kind != fcntl.F_UNLCK
