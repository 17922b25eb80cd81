"""Group commit: the holder of the repository lock commits the edits queued behind it.

A writer posts its request — the edits of one file that still wait for a commit, its own
last — in its mailbox slot of the repository lock (see `locks.FairLock`) and waits in
line. The holder commits its own request and those posted behind it as a chain of
commits (one per edit, in queue order, each authored by its agent) with one ref update
and one index update, and answers each waiter's slot with its commit id; a waiter whose
turn comes finds its answer there and goes.

Each file's edits are numbered (`Edit.seq`). After publishing, the holder stores in each
file's lock the highest number now committed (its mark), so an edit carried by several
requests — its own, and a later writer's of the same file when its writer let go of the
file lock before its commit or died — is committed exactly once. A holder that dies
between publishing and marking leaves a note in the repository lock that the next holder
finishes from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkspaceError
from .gitobjects import GitStore, Ident, RefMovedError, blob_id
from .locks import FairLock, in_line, read_content, read_hint, read_mark, write_hint, write_mark
from .workspace import COMMITTER, process_alive

_REF_RETRIES = 20
_BATCH = 64  # most requests one holder commits for others, so it does not hold the lock for long
_REQUEST, _ANSWER = b"Q", b"A"
_FIND_PUBLISHED = 1000  # commits walked back to tell whether a dead holder's chain was published


@dataclass
class Edit:
    """One change of one file waiting for its commit: `rel` becomes `new` (None: deleted)."""

    rel: str
    seq: int
    old: str | None
    new: str | None
    author: Ident
    message: str
    ticket: int = 0  # the repository-lock ticket of the writer waiting for it (0: none yet)
    written: bool = False  # the file holds `new` (a writer that dies before that never made the edit)
    stat: tuple[int, int, int, int] | None = field(default=None)  # the file as written: ino, size, mtime, ctime
    at: int | None = None  # where the file's lock keeps the new content (None: its blob was written)
    size: int = 0

    def to_json(self) -> list[Any]:
        return [self.rel, self.seq, self.old, self.new, self.author.name, self.author.email, self.message,
                self.ticket, self.written, list(self.stat) if self.stat else None, self.at, self.size]

    @classmethod
    def from_json(cls, item: Any) -> Edit:
        rel, seq, old, new, name, email, message, ticket, written, stat, *place = item
        at, size = place if len(place) == 2 else (None, 0)  # records from before contents were kept
        if not (isinstance(rel, str) and isinstance(seq, int) and isinstance(ticket, int)
                and isinstance(written, bool) and all(isinstance(v, str | None) for v in (old, new))
                and all(isinstance(v, str) for v in (name, email, message))
                and isinstance(at, int | None) and isinstance(size, int)):
            raise ValueError("malformed edit record")
        return cls(rel, seq, old, new, Ident(name, email), message, ticket, written,
                   tuple(int(v) for v in stat) if stat else None, at, size)  # type: ignore[arg-type]


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies the exact file a writer left (a rename gives each write a new inode)."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class GroupCommit:
    """Commits chains of edits through the repository lock, batching waiters' requests."""

    def __init__(self, git: GitStore, locks_dir: Path, file_lock: Callable[[str], Path], work_tree: str,
                 repo_lock: Callable[[], FairLock], on_commit: Callable[[int, int], None] | None = None) -> None:
        self.git = git
        self._repo_lock_path = locks_dir / "repo.lock"
        self._file_lock = file_lock
        self._work_tree = work_tree
        self._repo_lock = repo_lock
        self._on_commit = on_commit
        # The newest pack's name, left with the repository lock, so that every process finds
        # the objects of the last commit without scanning the pack folder.
        git.on_pack = lambda name: write_hint(self._repo_lock_path, bytes.fromhex(name[5:]))
        git.packs.newest = self._newest_pack

    def commit(self, chain: list[Edit], queued: Callable[[int], None] | None = None) -> str | None:
        """Commit the edits of `chain` not committed yet; the commit id of its last edit.

        None if that edit was already committed (by a holder that took it from a later
        writer's request). `queued(ticket)` runs once the request is posted and in line.
        """
        lock = self._repo_lock()
        answers: list[str | None] = []

        def posted(ticket: int) -> None:
            for edit in chain:
                edit.ticket = edit.ticket or ticket
            lock.write_slot(ticket, _REQUEST + json.dumps([e.to_json() for e in chain]).encode())
            if queued is not None:
                queued(ticket)

        def answered(ticket: int) -> bool:
            answer = _answer(lock.read_slot(ticket))
            if answer is not None:
                answers.append(answer or None)
            return answer is not None

        if not lock.acquire(queued=posted, done=answered):
            return answers[0]
        try:
            if answered(lock.ticket):  # a holder did it while we took the mutex
                return answers[0]
            count, recover = self._finish_dead_holder(lock)
            batch = [(lock.ticket, chain), *self._queued(lock)]
            version, made = self._commit_batch(lock, batch, count, recover)
        finally:
            self.git.release_packs()  # before the lock goes: the spare `.keep` is the holder's
            lock.release()
            self.git.free_replaced()  # off the lock: freeing files is slow on some disks
        if self._on_commit is not None and made:
            self._on_commit(count, count + made)
        return version

    def _newest_pack(self) -> str | None:
        raw = read_hint(self._repo_lock_path)[:20]
        return f"pack-{raw.hex()}" if len(raw) == 20 and any(raw) else None

    def in_line(self, ticket: int) -> bool:
        """True if the writer holding `ticket` still waits for (or makes) its commit."""
        return in_line(self._repo_lock_path, ticket)

    def _queued(self, lock: FairLock) -> list[tuple[int, list[Edit]]]:
        """The requests posted by the writers in line behind the holder, in queue order."""
        found = []
        for ticket in range(lock.ticket + 1, min(lock.last_ticket(), lock.ticket + _BATCH) + 1):
            raw = lock.read_slot(ticket)
            if raw is not None and raw[:1] == _REQUEST:
                try:
                    found.append((ticket, [Edit.from_json(item) for item in json.loads(raw[1:])]))
                except (ValueError, TypeError):
                    continue
        return found

    def _commit_batch(self, lock: FairLock, batch: list[tuple[int, list[Edit]]], count: int, recover: bool
                      ) -> tuple[str | None, int]:
        """Publish the batch as one chain; (the holder's own commit id, commits made)."""
        for _ in range(_REF_RETRIES):
            ref = self.git.head_ref()
            parent = self.git.read_ref(ref)
            with self.git.packing():  # the batch's blobs, trees and commits: one pack, two files
                chain = _Chain(self.git, parent, {}, self._blob)
                for _ticket, request in batch:
                    for edit in request:
                        chain.add(edit, self._mark(chain.marks, edit.rel))
            if chain.head != parent:
                lock.write_state(_note(True, count, chain.head, chain.new_marks))
                try:
                    self.git.update_ref(ref, chain.head, parent, COMMITTER, chain.steps[-1][1],
                                        recover=recover, steps=chain.steps)
                except RefMovedError:
                    continue
                except BaseException:
                    lock.write_state(_note(False, count))  # nothing published: nothing to finish
                    raise
            self._publish_marks(chain.new_marks)
            self.git.set_index_entries(self._index_changes(chain.index), recover=recover)
            answers = dict(chain.answers)
            for ticket, request in batch:  # each request's answer is its own last edit's commit
                answers[ticket] = chain.versions.get((request[-1].rel, request[-1].seq), answers.get(ticket, ""))
            for ticket, version in answers.items():
                if ticket > lock.ticket:  # earlier tickets have left the line
                    lock.write_slot(ticket, _ANSWER + (version or "").encode())
            lock.write_state(_note(False, count + len(chain.steps)))
            return answers.get(lock.ticket) or None, len(chain.steps)
        raise WorkspaceError("the branch kept moving while memstore committed; is a git command looping?")

    def _blob(self, edit: Edit) -> None:
        """Put `edit.new` in the batch's pack from the content its writer left in the file's lock.

        Raises, so that nothing is published, if that content is gone and the repository
        does not hold the blob either: a commit must never name a missing object.
        """
        if edit.new is None or edit.at is None:
            return  # a deletion, or a writer that wrote the blob itself
        content = read_content(self._file_lock(edit.rel), edit.at, edit.size)
        if blob_id(content) == edit.new:
            self.git.write_object(b"blob", content)
            return
        try:
            self.git.read_object(edit.new)
        except WorkspaceError:
            raise WorkspaceError(f"{edit.rel}: the content of edit {edit.seq} is no longer in its lock file; "
                                 "nothing was committed") from None

    def _mark(self, marks: dict[str, int], rel: str) -> int:
        if rel not in marks:
            marks[rel] = read_mark(self._file_lock(rel))
        return marks[rel]

    def _publish_marks(self, marks: dict[str, int]) -> None:
        for rel, seq in marks.items():
            write_mark(self._file_lock(rel), seq)

    def _index_changes(self, index: dict[str, Edit]) -> dict[str, tuple[str | None, os.stat_result | None]]:
        """Index entries for the last committed edit of each file, with its stat if the file is still that."""
        changes: dict[str, tuple[str | None, os.stat_result | None]] = {}
        for rel, edit in index.items():
            try:
                st: os.stat_result | None = os.stat(f"{self._work_tree}/{rel}")
            except FileNotFoundError:
                st = None
            if st is not None and (edit.stat is None or stat_key(st) != edit.stat):
                st = None  # changed since (a later edit is on its way): let git re-read it
            changes[rel] = (edit.new, st)
        return changes

    def _finish_dead_holder(self, lock: FairLock) -> tuple[int, bool]:
        """(commits so far, whether the last holder died mid-batch), finishing its batch first."""
        note = _read_note(lock.read_state())
        if not note.get("busy"):
            return note.get("count", 0), False
        dead = not process_alive(note.get("pid"))  # else it failed and cleaned up: any .lock is not its
        head = note.get("head")
        marks = note.get("marks") or {}
        if head and marks and self._published(head):
            current = {rel: read_mark(self._file_lock(rel)) for rel in marks}
            self._publish_marks({rel: seq for rel, seq in marks.items() if seq > current[rel]})
            tree = self.git.commit_tree(self.git.read_ref(self.git.head_ref()) or head)
            self.git.set_index_entries({rel: (_blob_at(self.git, tree, rel), None) for rel in marks},
                                       recover=dead)
        lock.write_state(_note(False, note.get("count", 0)))
        return note.get("count", 0), dead

    def _published(self, head: str) -> bool:
        """True if the branch holds `head` (the dead holder's ref update happened)."""
        commit = self.git.read_ref(self.git.head_ref())
        for _ in range(_FIND_PUBLISHED):
            if commit is None:
                return False
            if commit == head:
                return True
            parents = self.git.commit_parents(commit)
            commit = parents[0] if parents else None
        return False


class _Chain:
    """Commits being built on top of `parent` for one batch."""

    def __init__(self, git: GitStore, parent: str | None, marks: dict[str, int],
                 blob: Callable[[Edit], None]) -> None:
        self.git = git
        self._blob = blob
        self.head = parent
        self.tree = git.commit_tree(parent) if parent else None
        self.marks = marks  # per file: the highest edit number committed (as read, then as advanced)
        self.new_marks: dict[str, int] = {}
        self.steps: list[tuple[str, str]] = []  # (commit, reflog message)
        self.answers: dict[int, str] = {}  # ticket -> commit id ('' : nothing to commit)
        self.versions: dict[tuple[str, int], str] = {}  # (file, edit number) -> its commit
        self.index: dict[str, Edit] = {}

    def add(self, edit: Edit, mark: int) -> None:
        if edit.seq <= mark:
            return  # committed before
        self.marks[edit.rel] = self.new_marks[edit.rel] = edit.seq
        entry = self.git.entry_at(self.tree, edit.rel) if self.tree else None
        branch = entry[1] if entry else None
        if branch == edit.new or branch != edit.old:
            # The branch has it already, or a person committed the file with git meanwhile: their
            # commit holds what they saw on disk, and an edit made before it must not undo it.
            self.answers.setdefault(edit.ticket, "")
            return
        self._blob(edit)
        self.tree = self.git.with_path(self.tree, edit.rel, edit.new) or self.git.write_object(b"tree", b"")
        self.head = self.git.make_commit(self.tree, [self.head] if self.head else [], edit.author, COMMITTER,
                                         edit.message)
        self.steps.append((self.head, f"commit: {edit.message.split(chr(10), 1)[0]}"))
        self.answers[edit.ticket] = self.versions[(edit.rel, edit.seq)] = self.head
        self.index[edit.rel] = edit


def _blob_at(git: GitStore, tree: str, rel: str) -> str | None:
    entry = git.entry_at(tree, rel)
    return entry[1] if entry else None


def _note(busy: bool, count: int, head: str | None = None, marks: dict[str, int] | None = None) -> bytes:
    """The repository lock's state: commits so far, and while busy what the batch publishes."""
    note: dict[str, Any] = {"busy": busy, "count": count}
    if busy:
        note.update(head=head, marks=marks or {}, pid=os.getpid())
    return json.dumps(note).encode()


def _read_note(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        note = json.loads(raw)
    except ValueError:
        return {"busy": True}  # unreadable: treat as a crash, so stale git lock files are cleared
    return note if isinstance(note, dict) else {"busy": True}


def _answer(raw: bytes | None) -> str | None:
    """The commit id a holder answered with ('' if there was nothing to commit); None: no answer yet."""
    return raw[1:].decode() if raw is not None and raw[:1] == _ANSWER else None
