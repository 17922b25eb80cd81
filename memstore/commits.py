"""The one write path: lock a file, adopt hand edits, write atomically, commit.

Every change of a block or agent file goes through `Committer.locked` + `Committer.write`.
Under the file's lock the current content is read and checked against what memstore last
wrote there (a difference is a person's edit, committed first under their name); the new
content is kept in the lock's file (where the commit reads its blob from) and recorded as
a numbered pending edit, then written (temp file, rename;
flushed first when git's `core.fsync` asks for loose objects to be) and handed to group
commit (`groupcommit.py`), which makes it one commit authored by its agent. The writer
lets go of the file lock as soon as its request is in line, so the next writer of the
same file works while the commit is made; the pending edits in the lock carry every edit
to a commit even when its writer dies.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MemstoreError, WorkspaceError
from .fastio import read_file, remove_file, write_all
from .gitobjects import Ident, blob_id
from .groupcommit import Edit, GroupCommit, stat_key
from .locks import CONTENT_AT, FairLock
from .workspace import Workspace

log = logging.getLogger(__name__)
_TRIM_OVER = 1 << 20  # kept contents past this many bytes are given back when none waits
_MAX_PENDING = 16  # past this many uncommitted edits of a file, a writer waits for its commit holding the lock


def commit_message(subject: str, trailers: dict[str, str | None]) -> str:
    """A one-line subject plus `Memstore-*` trailers that tools can parse."""
    lines = [f"{key}: {value}" for key, value in trailers.items() if value]
    return f"{subject}\n\n" + "\n".join(lines) + "\n"


class Committer:
    """Serialised, crash-safe writes of workspace files, one commit each."""

    def __init__(self, ws: Workspace, on_commit: Callable[[int, int], None] | None = None) -> None:
        self.ws = ws
        self.git = ws.git
        self._held = threading.local()  # per thread: lock objects, and the files it holds
        self._root = str(ws.root)
        self.group = GroupCommit(ws.git, ws.locks_dir, self._lock_path, self._root,
                                 lambda: self._fair_lock(ws.locks_dir / "repo.lock"), on_commit)
        ws.git.trash_dir = str(ws.trash_dir)
        ws.git.keep_spare = str(ws.locks_dir / "pack.keep")
        self._spares = _SparePool(ws.tmp_dir)

    def _lock_path(self, rel: str) -> Path:
        return self.ws.locks_dir / (rel.replace("/", "__") + ".lock")

    @contextmanager
    def locked(self, rel: str) -> Iterator[bytes | None]:
        """Hold `rel`'s lock; yield its current content (None: no such file).

        `write` lets go of the lock early; nothing else may change `rel` after it.
        """
        lock = self._fair_lock(self._lock_path(rel))
        held = self._held.__dict__.setdefault("files", {})
        spares = self._held.__dict__.setdefault("spares", {})
        spares[rel] = self._spares.take()  # made before the lock: creating a file is slow on some disks
        held_file: _Held | None = None
        try:
            lock.acquire()
            try:
                self.ws.check_state()
                current = self.read(rel)
                held_file = held[rel] = _Held.open(self, rel, lock, current)
                yield current
            finally:
                held.pop(rel, None)
                if held_file is None or not held_file.released:
                    lock.release()
        finally:
            left = spares.pop(rel, None)
            if left is not None:  # nothing written: the next edit uses it
                self._spares.give_back(left)

    def _fair_lock(self, path: Path) -> FairLock:
        """This thread's lock object for `path` (made once: building one costs more than using it).

        A forked child starts afresh: lock objects are never shared across a fork.
        """
        if self._held.__dict__.get("pid") != os.getpid():
            self._held.__dict__.update(pid=os.getpid(), objects={})
        cache: dict[Path, FairLock] = self._held.objects
        lock = cache.get(path)
        if lock is None:
            if len(cache) >= 256:
                cache.clear()
            lock = cache[path] = FairLock(path)
        return lock

    def read(self, rel: str) -> bytes | None:
        try:
            return read_file(f"{self._root}/{rel}")
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise WorkspaceError(f"{rel} is a folder, not a file") from None

    def head_blob(self, rel: str) -> str | None:
        head = self.git.read_ref(self.git.head_ref())
        if head is None:
            return None
        entry = self.git.entry_at(self.git.commit_tree(head), rel)
        return entry[1] if entry else None

    def hand_edited(self, rel: str, current: bytes | None) -> bool:
        """True if a person changed `rel`: it differs from what memstore last wrote (or committed)."""
        disk = blob_id(current) if current is not None else None
        held = self._held.__dict__.get("files", {}).get(rel)
        return disk != (held.expected if held is not None else self.head_blob(rel))

    def adopt_hand_edit(self, rel: str, current: bytes | None, subject: str,
                        trailers: dict[str, str | None]) -> str | None:
        """Commit the person's change of `rel` (see `hand_edited`) under their name; its commit id."""
        held: _Held = self._held.files[rel]  # callers hold `locked(rel)`
        disk = self.git.write_object(b"blob", current) if current is not None else None
        edit = held.add(disk, self.ws.person, commit_message(subject, trailers))
        edit.written, edit.stat = True, _stat(f"{self._root}/{rel}")
        held.save()
        return self.group.commit(held.pending)

    def orphaned(self, rel: str) -> bool:
        """True if edits of `rel` wait for a commit no writer will ask for (theirs died)."""
        pending = self._held.files[rel].pending  # callers hold `locked(rel)`
        return bool(pending) and not any(self.group.in_line(e.ticket) for e in pending if e.ticket)

    def settle(self, rel: str) -> str | None:
        """Commit the edits of `rel` still waiting; the commit id of the last."""
        held: _Held = self._held.files[rel]  # callers hold `locked(rel)`
        return self.group.commit(held.pending) if held.pending else None

    def write(self, rel: str, content: bytes | None, current: bytes | None, author: Ident, message: str) -> str | None:
        """Write `content` (None: delete) and commit it; its commit id, None if nothing changed."""
        if content == current:
            return None
        held: _Held = self._held.files[rel]  # callers hold `locked(rel)`
        assert not held.released, "one write per hold of a file lock"
        edit = held.add(self._keep_content(held, content), author, message)
        if content is not None and "loose-object" not in self.git.flush:
            edit.at, edit.size = held.regions[-1]
        held.save()  # before the file changes: a crash from here on is finished by the next writer
        target = f"{self._root}/{rel}"
        if content is None:
            Path(target).unlink(missing_ok=True)
        else:
            self._atomic_write(rel, Path(target), content)
            edit.stat = _stat(target)
        edit.written = True
        held.save()
        early = len(held.pending) < _MAX_PENDING
        try:
            return self.group.commit(held.pending, queued=held.let_go if early else None)
        except (MemstoreError, OSError) as exc:
            # The edit is in the file and recorded as waiting for its commit, which the next
            # writer of the file or the watcher makes. Reporting a failure would only make the
            # caller repeat an edit that happened.
            log.warning("%s: edit written, its commit is waiting: %s", rel, exc)
            return None

    def _keep_content(self, held: _Held, content: bytes | None) -> str | None:
        """The new blob's id, its content kept for the commit.

        Kept in the file's lock (after the contents of its edits still waiting), which costs
        no new file; or, when git's `core.fsync` asks for flushed objects, written as a loose
        object and flushed.
        """
        if content is None:
            return None
        if "loose-object" in self.git.flush:
            return self.git.write_object(b"blob", content)
        held.lock.write_content(held.place(len(content)), content)
        return blob_id(content)

    def _atomic_write(self, rel: str, target: Path, content: bytes) -> None:
        """Replace `target` with `content` by a rename; the old file is freed in the background.

        Freeing a file costs a millisecond and more on some disks; done here it would hold
        up the next writer of the file, which waits for this lock.
        """
        tmp, fd = self._held.__dict__.get("spares", {}).pop(rel, None) or self._spares.take()
        try:
            write_all(fd, content)
            if "loose-object" in self.git.flush:  # the file goes with its objects (git's core.fsync)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            remove_file(tmp)
            raise
        os.close(fd)
        try:
            self.git.replace_later_free(tmp, str(target))
        except FileNotFoundError:  # a new folder (an agent's first conversation log)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        self.git.free_replaced()


class _Held:
    """A file lock held by this thread, with the file's edits still waiting for a commit.

    The lock's state record is {"seq": last edit number, "pending": [edits]}; the lock's
    mark, set by group commit, is the last number committed, so pending edits at or below
    it are done.
    """

    def __init__(self, rel: str, lock: FairLock, seq: int, pending: list[Edit], expected: str | None) -> None:
        self.rel = rel
        self.lock = lock
        self.seq = seq
        self.pending = pending
        self.expected = expected  # what the file holds unless a person changed it
        self.released = False
        # Where the contents of the edits still waiting are kept (at, size): they must stay.
        self.regions = [(e.at, e.size) for e in pending if e.at is not None]

    @classmethod
    def open(cls, committer: Committer, rel: str, lock: FairLock, current: bytes | None) -> _Held:
        state = _read_state(lock.read_state())
        mark = lock.read_mark()
        pending = [e for e in _edits(state.get("pending")) if e.seq > mark]
        disk = blob_id(current) if current is not None else None
        if pending and not pending[-1].written:  # its writer died around writing the file
            if disk == pending[-1].new:
                pending[-1].written = True
            else:
                pending.pop()  # it never reached the file: it never happened
        # What the file holds unless a person changed it: the last edit still waiting for its
        # commit, else the branch (so any other difference, e.g. after a `git reset`, is a hand edit).
        expected = pending[-1].new if pending else committer.head_blob(rel)
        return cls(rel, lock, max(int(state.get("seq", 0)), mark), pending, expected)

    def add(self, new: str | None, author: Ident, message: str) -> Edit:
        """Record the next edit of the file, on top of what it holds now."""
        self.seq += 1
        edit = Edit(self.rel, self.seq, self.expected, new, author, message)
        self.pending.append(edit)
        self.expected = new
        return edit

    def place(self, size: int) -> int:
        """Where to keep a new content of `size` bytes without touching those still needed.

        At the start of the area when it fits below them, else after them: the area stays
        about as big as the contents that wait at one time. With none waiting, the space of
        old ones is given back once it is large.
        """
        if not self.regions:
            self.lock.trim_content(max(4 * size, _TRIM_OVER))
            at = CONTENT_AT
        elif size <= min(at for at, _ in self.regions) - CONTENT_AT:
            at = CONTENT_AT
        else:
            at = max(at + length for at, length in self.regions)
        self.regions.append((at, size))
        return at

    def save(self) -> None:
        self.lock.write_state(json.dumps({"seq": self.seq, "pending": [e.to_json() for e in self.pending]}).encode())

    def let_go(self, ticket: int) -> None:
        """Our request is in line: record its ticket and free the file for the next writer."""
        self.save()
        self.lock.release()
        self.released = True


class _SparePool:
    """Empty temp files made ahead for writes, shared by a process's threads.

    A file is created before the file's lock is taken (creating one is slow on some disks,
    and the writers queued behind would wait for it); one a thread did not use goes back
    for the next. They are named `next.<pid>.<random>`: the stale-file sweep leaves the
    ones of live processes alone, and a process removes its own when it exits.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._free: list[tuple[str, int]] = []
        _POOLS.add(self)

    def take(self) -> tuple[str, int]:
        with self._lock:
            self._after_fork()
            if self._free:
                return self._free.pop()
        path = f"{self._folder}/next.{os.getpid()}.{secrets.token_hex(6)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return path, fd

    def give_back(self, spare: tuple[str, int]) -> None:
        with self._lock:
            self._after_fork()
            if os.path.basename(spare[0]).split(".")[1] == str(self._pid):
                self._free.append(spare)

    def _after_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's files are the parent's
            self._pid, self._free = os.getpid(), []

    def remove_all(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for path, fd in self._free:
                    os.close(fd)
                    remove_file(path)
                self._free = []


_POOLS: weakref.WeakSet[_SparePool] = weakref.WeakSet()


@atexit.register
def _remove_spares() -> None:
    for pool in list(_POOLS):
        pool.remove_all()


def _read_state(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        return {}
    return state if isinstance(state, dict) and "seq" in state else {}


def _edits(items: Any) -> list[Edit]:
    try:
        return [Edit.from_json(item) for item in items or []]
    except (ValueError, TypeError):
        return []


def _stat(path: str) -> tuple[int, int, int, int] | None:
    try:
        return stat_key(os.stat(path))
    except FileNotFoundError:
        return None
