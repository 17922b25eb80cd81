"""The one write path: lock a file, recover, adopt hand edits, write atomically, commit.

Every change of a block or agent file goes through `Committer.locked` + `Committer.write`.
Under the file's lock the current content is read; a pending record left by a writer that
was killed between writing and committing is finished; an uncommitted hand edit is
committed first under the person's name; then the new content is written (temp file,
fsync, rename) and committed on top of the branch under the repository lock.
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
from pathlib import Path

from .errors import WorkspaceError
from .fastio import read_file
from .gitobjects import Ident, RefMovedError
from .locks import FairLock
from .workspace import COMMITTER, Workspace

_REF_RETRIES = 20


def blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def commit_message(subject: str, trailers: dict[str, str | None]) -> str:
    """A one-line subject plus `Memstore-*` trailers that tools can parse."""
    lines = [f"{key}: {value}" for key, value in trailers.items() if value]
    return f"{subject}\n\n" + "\n".join(lines) + "\n"


class Committer:
    """Serialised, crash-safe writes of workspace files, one commit each."""

    def __init__(self, ws: Workspace, on_commit: Callable[[int], None] | None = None) -> None:
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

    def _commit(self, rel: str, blob: str | None, author: Ident, message: str) -> str:
        """Commit `rel` = `blob` on top of the branch; safe against any concurrent writer."""
        with self._fair_lock(self.ws.locks_dir / "repo.lock") as lock:
            busy, count = _repo_state(lock.read_state())
            lock.write_state(struct.pack("<BQ", 1, count))
            commit = self._publish(rel, blob, author, message, recover=busy)
            self.git.set_index_entry(rel, blob, self.ws.root / rel, recover=busy)
            lock.write_state(struct.pack("<BQ", 0, count + 1))
        if self._on_commit is not None:
            self._on_commit(count + 1)
        return commit

    def _publish(self, rel: str, blob: str | None, author: Ident, message: str, recover: bool) -> str:
        subject = message.split("\n", 1)[0]
        for _ in range(_REF_RETRIES):
            ref = self.git.head_ref()
            parent = self.git.read_ref(ref)
            root = self.git.commit_tree(parent) if parent else None
            tree = self.git.with_path(root, rel, blob) or self.git.write_object(b"tree", b"")
            commit = self.git.make_commit(tree, [parent] if parent else [], author, COMMITTER, message)
            try:
                self.git.update_ref(ref, commit, parent, COMMITTER, f"commit: {subject}", recover=recover)
            except RefMovedError:
                continue
            return commit
        raise WorkspaceError("the branch kept moving while memstore committed; is a git command looping?")

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
                    self.git.set_index_entry(rel, disk, self.ws.root / rel, recover=True)
        lock.write_state(b"")


def _repo_state(raw: bytes) -> tuple[bool, int]:
    """(did the last holder die mid-commit, commits made so far) from the repository lock."""
    if len(raw) != struct.calcsize("<BQ"):
        return bool(raw), 0
    busy, count = struct.unpack("<BQ", raw)
    return bool(busy), count
