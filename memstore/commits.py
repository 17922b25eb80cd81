"""The one write path: lock a file, recover, adopt hand edits, write atomically, commit.

Every change of a block or agent file goes through `Committer.locked` + `Committer.write`.
Under the file's lock the current content is read; a pending record left by a writer that
was killed between writing and committing is finished; an uncommitted hand edit is
committed first under the person's name; then the new content is written (temp file,
fsync, rename) and committed on top of the branch under the repository lock.

Group commit: a writer posts its commit request in its mailbox slot of the repository
lock before it waits. The holder commits its own request and those posted behind it as a
chain (one commit each, in queue order) with one ref and one index update, and answers
each slot with its commit id; a waiter whose turn comes finds its answer and goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import WorkspaceError
from .fastio import read_file
from .gitobjects import Ident, RefMovedError
from .locks import FairLock
from .workspace import COMMITTER, Workspace

_REF_RETRIES = 20
_BATCH = 64  # most requests one holder commits for others, so it does not hold the lock for long
_REQUEST, _ANSWER = b"Q", b"A"


def blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def commit_message(subject: str, trailers: dict[str, str | None]) -> str:
    """A one-line subject plus `Memstore-*` trailers that tools can parse."""
    lines = [f"{key}: {value}" for key, value in trailers.items() if value]
    return f"{subject}\n\n" + "\n".join(lines) + "\n"


class Committer:
    """Serialised, crash-safe writes of workspace files, one commit each."""

    def __init__(self, ws: Workspace, on_commit: Callable[[int, int], None] | None = None) -> None:
        self.ws = ws
        self.git = ws.git
        self._on_commit = on_commit
        self._held = threading.local()  # rel -> the FairLock this thread holds for it
        self._root = str(ws.root)

    def _lock_path(self, rel: str) -> Path:
        return self.ws.locks_dir / (rel.replace("/", "__") + ".lock")

    @contextmanager
    def locked(self, rel: str) -> Iterator[bytes | None]:
        """Hold `rel`'s lock; yield its current content (None: no such file)."""
        lock = self._fair_lock(self._lock_path(rel))
        held = self._held.__dict__.setdefault("locks", {})
        with lock:
            held[rel] = lock
            try:
                self.ws.check_state()
                current = self.read(rel)
                self._recover(rel, current, lock)
                yield current
            finally:
                del held[rel]

    def _fair_lock(self, path: Path) -> FairLock:
        """This thread's lock object for `path` (made once: building one costs more than using it).

        A forked child starts afresh: filelock refuses objects inherited across a fork.
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
        """True if `rel` on disk differs from its last commit (a person changed it)."""
        return (blob_id(current) if current is not None else None) != self.head_blob(rel)

    def adopt_hand_edit(self, rel: str, current: bytes | None, subject: str, trailers: dict[str, str | None]) -> None:
        """Commit the person's uncommitted change of `rel` under their name (see `hand_edited`)."""
        disk = self.git.write_object(b"blob", current) if current is not None else None
        self._commit(rel, disk, self.ws.person, commit_message(subject, trailers))

    def write(self, rel: str, content: bytes | None, current: bytes | None, author: Ident, message: str) -> str | None:
        """Write `content` (None: delete) and commit it; None if nothing changed."""
        if content == current:
            return None
        new = self.git.write_object(b"blob", content) if content is not None else None
        old = blob_id(current) if current is not None else None
        lock: FairLock = self._held.locks[rel]  # callers hold `locked(rel)`
        record = {"old": old, "new": new, "author": [author.name, author.email], "message": message}
        lock.write_state(json.dumps(record).encode())
        target = self.ws.root / rel
        if content is None:
            target.unlink(missing_ok=True)
        else:
            self._atomic_write(target, content)
        version = self._commit(rel, new, author, message)
        lock.write_state(b"")
        return version

    def _atomic_write(self, target: Path, content: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ws.tmp_dir / f"{target.name}.{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, content)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, target)

    def _commit(self, rel: str, blob: str | None, author: Ident, message: str) -> str | None:
        """Commit `rel` = `blob` on top of the branch; safe against any concurrent writer.

        None if the branch already had exactly that (a crashed writer's edit finished by another).
        """
        mine = _Request(rel, blob, author, message)
        lock = self._fair_lock(self.ws.locks_dir / "repo.lock")
        answers: list[str | None] = []

        def answered(ticket: int) -> bool:
            answer = _answer(lock.read_slot(ticket))
            if answer is not None:
                answers.append(answer or None)
            return answer is not None

        if not lock.acquire(queued=lambda ticket: lock.write_slot(ticket, mine.encode()), done=answered):
            return answers[0]
        try:
            if answered(lock.ticket):  # a holder did it while we took the mutex
                return answers[0]
            busy, count = _repo_state(lock.read_state())
            lock.write_state(struct.pack("<BQ", 1, count))
            batch = [(lock.ticket, mine), *self._queued(lock)]
            versions = self._publish([request for _, request in batch], recover=busy)
            self.git.set_index_entries({request.rel: request.blob for _, request in batch}, recover=busy)
            for (ticket, _), version in zip(batch[1:], versions[1:]):
                lock.write_slot(ticket, _ANSWER + (version or "").encode())
            total = count + sum(1 for v in versions if v)
            lock.write_state(struct.pack("<BQ", 0, total))
        finally:
            lock.release()
        if self._on_commit is not None:
            self._on_commit(count, total)
        return versions[0]

    def _queued(self, lock: FairLock) -> list[tuple[int, _Request]]:
        """The requests posted by the writers in line behind the holder, in queue order."""
        found = []
        for ticket in range(lock.ticket + 1, min(lock.last_ticket(), lock.ticket + _BATCH) + 1):
            raw = lock.read_slot(ticket)
            if raw is not None and raw[:1] == _REQUEST:
                try:
                    found.append((ticket, _Request.decode(raw)))
                except (ValueError, KeyError, TypeError):
                    continue
        return found

    def _publish(self, batch: list[_Request], recover: bool) -> list[str | None]:
        """Commit each request on top of the branch as a chain; a request already there gets None."""
        for _ in range(_REF_RETRIES):
            ref = self.git.head_ref()
            parent = self.git.read_ref(ref)
            tree = self.git.commit_tree(parent) if parent else None
            head, versions, steps = parent, [], []
            for request in batch:
                if self._already(tree, request):
                    versions.append(None)
                    continue
                tree = self.git.with_path(tree, request.rel, request.blob) or self.git.write_object(b"tree", b"")
                head = self.git.make_commit(tree, [head] if head else [], request.author, COMMITTER, request.message)
                versions.append(head)
                steps.append((head, f"commit: {request.message.split(chr(10), 1)[0]}"))
            if head is None or head == parent:
                return versions
            try:
                self.git.update_ref(ref, head, parent, COMMITTER, steps[-1][1], recover=recover, steps=steps)
            except RefMovedError:
                continue
            return versions
        raise WorkspaceError("the branch kept moving while memstore committed; is a git command looping?")

    def _already(self, tree: str | None, request: _Request) -> bool:
        """True if `tree` already has the request's content (its writer died and another finished it)."""
        entry = self.git.entry_at(tree, request.rel) if tree else None
        return (entry[1] if entry else None) == request.blob

    def _recover(self, rel: str, current: bytes | None, lock: FairLock) -> None:
        """Finish an edit whose writer died after writing the file but before committing."""
        raw = lock.read_state()
        if not raw:
            return
        try:
            record = json.loads(raw)
        except ValueError:
            lock.write_state(b"")
            return
        disk = blob_id(current) if current is not None else None
        if record.get("new") != record.get("old") and disk == record.get("new"):
            head = self.head_blob(rel)
            author = Ident(*record["author"])
            if head == record.get("old"):
                self._commit(rel, disk, author, record["message"])
            elif head == disk:
                with self._fair_lock(self.ws.locks_dir / "repo.lock"):
                    self.git.set_index_entries({rel: disk}, recover=True)
        lock.write_state(b"")


def _repo_state(raw: bytes) -> tuple[bool, int]:
    """(did the last holder die mid-commit, commits made so far) from the repository lock."""
    if len(raw) != struct.calcsize("<BQ"):
        return bool(raw), 0
    busy, count = struct.unpack("<BQ", raw)
    return bool(busy), count


@dataclass(frozen=True)
class _Request:
    """One commit a writer asks for: `rel` = `blob` (None: deleted), by `author`."""

    rel: str
    blob: str | None
    author: Ident
    message: str

    def encode(self) -> bytes:
        record = [self.rel, self.blob, self.author.name, self.author.email, self.message]
        return _REQUEST + json.dumps(record).encode()

    @classmethod
    def decode(cls, raw: bytes) -> _Request:
        rel, blob, name, email, message = json.loads(raw[1:])
        if not all(isinstance(v, str) for v in (rel, name, email, message)) or not isinstance(blob, str | None):
            raise ValueError("malformed commit request")
        return cls(rel, blob, Ident(name, email), message)


def _answer(raw: bytes | None) -> str | None:
    """The commit id a holder answered with ('' if there was nothing to commit); None: no answer yet."""
    return raw[1:].decode() if raw is not None and raw[:1] == _ANSWER else None
