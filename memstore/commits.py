"""The one write path: lock a file, adopt hand edits, write atomically, commit.

Every change of a block or agent file goes through `Committer.locked` + `Committer.write`
(several files changed together: `locked_files` + `write_files`, one commit of them all).
Under the file's lock the current content is read; an edit is recorded in the file's
pending journal (`.memstore/pending/`), written (temp file and rename), and committed
under the repository lock, authored by its agent. The journal is cleared once the commit
is made. If the commit cannot be made now (a git command holds the index or the branch)
the edit stays in the file and the journal, the result says it is pending, and the next
memstore operation of any kind commits it under its author, as does the watcher of
`serve` and `watch` as soon as the obstacle clears. A writer killed between writing the
file and committing is finished the same way, never passed off as a person's edit. A git
command's commit of the same file landing meanwhile is merged onto (`Committer._rebase`),
never committed over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import (ConflictError, FileFormatError, LockTimeoutError, MemstoreError, PreconditionFailedError,
                     WorkspaceError, os_error_text)
from .fsutil import MAX_FILE, RefusedFile, read_regular, write_all, write_atomic
from .gitrepo import BranchChanged, CommitPending, GitRepo, HookRefused, Ident, blob_id, unmerged_error
from .locks import Locks
from .workspace import COMMITTER, Workspace

log = logging.getLogger(__name__)
REPO_LOCK = "repo.lock"
# git's stale-index race (`Committer.repair_index`): a racing `git commit` writes its stale index within a
# moment of memstore's commit; memstore's commit is looked for this many commits back
_RACE_SECONDS = 3
_RACE_WALK = 64
_RACE_COMMITS = 8  # memstore commits one racing `git commit` may take out at once
_ABORT_WINDOW = 3600  # seconds: a `git rebase --abort` this recent is looked at (`Committer.restore_aborted`)
MAX_MD = 8 * 1024 * 1024  # bytes of a block or agent file: a value of 1,000,000 characters and its front matter


def commit_message(subject: str, trailers: dict[str, str | None]) -> str:
    """A one-line subject plus `Memstore-*` trailers that tools can parse."""
    lines = [f"{key}: {value}" for key, value in trailers.items() if value]
    return f"{subject}\n\n" + "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Saved:
    """What became of a write: the commit that holds it, or why its commit is pending."""

    version: str | None
    pending: str | None = None
    merged: bool = False  # a git command's commit changed a file meanwhile: the edit was merged onto it


@dataclass
class _Entry:
    """One edit of a file in its journal: from blob `base` to blob `new` (None: no file)."""

    base: str | None
    new: str | None
    name: str
    email: str
    message: str
    rel: str | None = None  # the file's path (a journal's name cannot always be read back: `a__b.md`)
    group: list[str] | None = None  # the files one write changed together (`write_files`), committed as one
    on: str | None = None  # the branch's commit when the edit was made: a commit since is merged onto (`_rebase`)
    was: str | None = None  # merged onto a git command's commit: the edit's own blob, which the file may still hold

    @property
    def by_person(self) -> bool:
        """A person's edit (a hand edit, or theirs through memstore): they may edit a block made read-only."""
        return "Memstore-Author-Kind: person" in self.message

    @property
    def hand_edit(self) -> bool:
        """A person's text from their editor: never put back by a refusal."""
        return "Memstore-Op: hand_edit" in self.message


class SavedMeanwhile(ConflictError):
    """A file changed on disk between the edit's read of it (under its lock) and its write: a person's editor,
    which takes no lock, saved it. Nothing was written; the caller applies the edit again to what is there."""


class Diverged(ConflictError):
    """A git command's commit changed a file on the branch after an edit of it was made, and the two do not merge."""


class StaleVersion(Diverged, PreconditionFailedError):
    """An edit made against a version (`expected_version`, If-Match) met a git command's commit of its file."""


class Committer:
    """Serialised, crash-safe writes of workspace files, one commit each."""

    def __init__(self, ws: Workspace, on_commit: Callable[[], None] | None = None,
                 check: Callable[[str, bytes, bytes, bool], None] | None = None) -> None:
        self.ws = ws
        self.check = check  # check(rel, merged, base, by_person) raises if a merge must not be committed
        self.git: GitRepo = ws.git
        self.locks = Locks(ws.locks_dir)
        self.on_commit = on_commit
        self._made = threading.local()  # .commits: this thread's commits so far
        ws.pending_dir.mkdir(parents=True, exist_ok=True)
        self._journal_paths: dict[str, Path] = {}

    # -- reading ---------------------------------------------------------------------------

    def read(self, rel: str) -> bytes | None:
        """The file's content as git stores it (None: no such file).

        Only a regular file inside the workspace is read; anything else (a symbolic link, a
        FIFO, a file too big) is a FileFormatError naming it, reported like a broken file.
        """
        try:
            data = read_regular(self.ws.root, rel, MAX_MD if rel.endswith(".md") else MAX_FILE)
        except IsADirectoryError:
            raise FileFormatError(rel, None, "is a folder, not a file") from None
        except RefusedFile as exc:
            raise FileFormatError(rel, None, f"refused: {exc}") from None
        return None if data is None else self.git.to_odb(rel, data)

    def head_blob(self, rel: str) -> str | None:
        return self.git.head_blob(rel)

    def committed(self, rel: str) -> bytes | None:
        blob = self.head_blob(rel)
        return self.git.read_blob(blob) if blob else None

    def hand_edited(self, rel: str, current: bytes | None) -> bool:
        """True if a person changed `rel`: it differs from the branch and from memstore's pending edits."""
        disk = blob_id(current) if current is not None else None
        pending = self._journal(rel)
        return disk != (pending[-1].new if pending else self.head_blob(rel))

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def _holding(self, rels: list[str]) -> Iterator[None]:
        """Hold the files' locks (sorted); once they are let go, call `on_commit` if this thread committed
        meanwhile.

        The hook (housekeeping) runs after the locks are let go, so it never holds up a file's
        next writer.
        """
        before, depth = self.made(), getattr(self._made, "depth", 0)
        if not depth:  # only while this thread holds no file's lock: the restore takes the files' own
            with contextlib.suppress(MemstoreError, OSError):
                self.restore_aborted()
        self._made.depth = depth + 1
        try:
            with self.locks.files(rels):
                self.git.refresh()  # attributes, hooks or signing set up since the last change: once per operation
                self.git.check_tip()
                yield
        finally:
            self._made.depth = depth
        if self.on_commit is not None and self.made() != before:
            self.on_commit()

    @contextmanager
    def locked(self, rel: str) -> Iterator[bytes | None]:
        """Hold `rel`'s lock; yield its current content (None: no such file)."""
        with self.locked_files([rel]) as now:
            yield now[rel]

    @contextmanager
    def locked_files(self, rels: Iterable[str]) -> Iterator[dict[str, bytes | None]]:
        """Hold several files' locks, in sorted order (so no two holders wait for each other: an agent's
        file comes before its blocks'); yield each one's current content (None: no such file)."""
        rels = sorted(set(rels))
        with self._holding(rels):
            self.ws.check_state()
            for rel in rels:
                self._finish(rel, wait=0.0, held=rels)
                if self.git.unmerged(rel):
                    raise unmerged_error(rel)
            yield {rel: self.read(rel) for rel in rels}

    def _groups_of(self, rels: Iterable[str]) -> set[str]:
        """The files of the several-file writes waiting in these files' journals."""
        found: set[str] = set()
        for rel in rels:
            for entry in self._journal(rel):
                found |= set(entry.group or ())
        return found

    def write(self, rel: str, content: bytes | None, current: bytes | None, author: Ident, message: str,
              exact: bool = False) -> Saved:
        """Write `content` (None: delete) and commit it. Callers hold `locked(rel)`."""
        return self.write_files({rel: (content, current)}, author, message, {rel} if exact else ())

    def write_files(self, files: Mapping[str, tuple[bytes | None, bytes | None]], author: Ident,
                    message: str, exact: Iterable[str] = ()) -> Saved:
        """Write each file's new content (None: delete) over its current one, and commit them all as one
        commit. Callers hold the files' locks (`locked_files`). All or nothing: a refusal or a disk
        error puts every file back; a commit that must wait leaves every file written and pending. `exact`:
        the files written against a version (If-Match): a git command's commit of one landing meanwhile is
        StaleVersion (nothing written), not merged onto."""
        changed = {rel: (new, cur) for rel, (new, cur) in files.items() if new != cur}
        if not changed:  # nothing to commit: the version is the last commit, unless one is pending
            waiting = [rel for rel in files if self.has_pending(rel)]
            return Saved(None, pending=f"{', '.join(waiting)}: earlier edits are still waiting for their commit"
                         if waiting else None)
        blobs = {rel: self._store_blob(new) for rel, (new, _) in changed.items()}
        journals = {rel: self._journal(rel) for rel in changed}
        earlier = [rel for rel, journal in journals.items() if journal]
        # one commit of them all, also if it waits; behind earlier waiting edits, each file's part is its own
        group = list(changed) if len(changed) > 1 and not earlier else None  # in the order they are written
        on = self.git.tip()
        for rel, (_, cur) in changed.items():
            journals[rel].append(_Entry(blob_id(cur) if cur is not None else None, blobs[rel], author.name,
                                        author.email, message, rel, group, on))
        written: dict[str, os.stat_result | None] = {}
        journaled: list[str] = []
        try:
            for rel in changed:
                journaled.append(rel)
                self._save_journal(rel, journals[rel])
            for rel, (new, cur) in changed.items():
                written[rel] = self._put(rel, new, still=blob_id(cur) if cur is not None else None)
        except SavedMeanwhile:
            self._undo_all(changed, journals, journaled, written)
            raise
        except OSError as exc:
            if not self._undo_all(changed, journals, journaled, written) and written:
                return Saved(None, pending=f"{rel}: {_disk_error(rel, exc)}; the edit is in the files written")
            raise _disk_error(rel, exc) from None
        if earlier:  # an earlier edit still waits for its obstacle: this one queues behind it
            return Saved(None, pending=f"{', '.join(earlier)}: earlier edits are still waiting for their commit")
        mine = {rel: journals[rel][-1] for rel in changed}  # merged onto a git command's commit: changed in place
        try:
            version = self._commit_journal(journals, wait=None, written=written, exact=frozenset(exact))
            return Saved(version, merged=any(entry.new != blobs[rel] for rel, entry in mine.items()))
        except CommitPending as exc:
            return Saved(None, pending=str(exc))
        except MemstoreError as exc:  # a hook refused it, a file is unmerged, or a git commit changed it
            if isinstance(exc, Diverged):  # the files take the branch's content: the person's commit stays whole
                self._index_to_branch({rel: blob_id(cur) if cur is not None else None
                                       for rel, (_, cur) in changed.items()})
                changed = {rel: (new, self.committed(rel)) for rel, (new, _) in changed.items()}
            if not self._undo_all(changed, journals, list(changed), written):
                if not isinstance(exc, (HookRefused, Diverged)):  # unmerged: committed once the person resolves it
                    return Saved(None, pending=f"{', '.join(changed)}: the commit waits (the files are unmerged) "
                                 "and the files could not be put back")
                exc.args = ((f"{exc} The disk refused to put the files back: they hold the edit until memstore's "
                             "next operation, which tries its commit once more and takes it out if it is refused "
                             "again."),)
            raise
        except OSError as exc:
            if not self._undo_all(changed, journals, list(changed), written):
                return Saved(None, pending=f"{', '.join(changed)}: {_disk_error(rel, exc)}; the edit is in the "
                             "files")
            raise _disk_error(', '.join(changed), exc) from None

    def adopt_hand_edit(self, rel: str, current: bytes | None, subject: str,
                        trailers: dict[str, str | None]) -> str | None:
        """Commit the person's change of `rel` (see `hand_edited`) under their name.

        Its commit id; None when a git command holds a lock: then it waits in the journal,
        under the person's name, like any pending edit. A change that only puts back what a
        racing `git commit` undid (see `repair_index`) is committed as a restore under the
        author of what it puts back.
        """
        blob = self._store_blob(current)
        earlier = self._journal(rel)  # edits still waiting for a git command: theirs come first, under their authors
        base = earlier[-1].new if earlier else self.head_blob(rel)
        restores = [] if earlier else self._restore_of(rel, blob)
        entries = [_Entry(before, after, author.name, author.email, message, rel)
                   for before, after, author, message in restores] or [
            _Entry(base, blob, self.ws.person.name, self.ws.person.email,
                   commit_message(subject, {**trailers, "Memstore-Author-Kind": "person"}), rel, on=self.git.tip())]
        journal = [*earlier, *entries]
        try:
            self._save_journal(rel, journal)
            if earlier:  # behind waiting edits: all of them now, if their obstacle is gone (merged onto the branch)
                return self._finish(rel, wait=0.0)
            return self._commit_journal({rel: journal}, wait=None)
        except OSError as exc:
            self._save_journal(rel, earlier)
            raise _disk_error(rel, exc) from None
        except CommitPending:
            return None
        except MemstoreError:
            self._save_journal(rel, earlier)  # refused (unmerged, a hook): it stays an uncommitted hand edit
            raise

    def _restore_of(self, rel: str, blob: str | None) -> list[tuple[str | None, str | None, Ident, str]]:
        """If `rel` holds `blob`, untouched since memstore committed it, and a git command's commit then took
        memstore's last commits of it out of the branch: the restores (`_undone`); else none.

        That is the trace of git's stale-index race (see `repair_index`) once the person committed
        before the index was repaired: the file still holds the agents' content, the branch and the
        index do not. A file written since (a person bringing the text back) is theirs.
        """
        undone, when = self._undone(rel, blob)
        if not undone:
            return []
        try:
            untouched = os.stat(self.ws.root / rel).st_mtime <= when + _RACE_SECONDS
        except OSError:
            return []
        if not untouched or any(path == rel for path, _, _ in self.git.staged()):
            return []
        return undone

    def _undone(self, rel: str, blob: str | None) -> tuple[list[tuple[str | None, str | None, Ident, str]], int]:
        """If the branch's last change of `rel`, by a git command, took out exactly memstore's commits of it
        that led to `blob` (git's stale-index race can take out several): each of them again, oldest
        first, as (from blob, to blob, its author, a message restoring it), and the time of the last
        of them; else none."""
        changes = self.git.changes_of(rel, limit=_RACE_COMMITS + 1, walk=_RACE_WALK)
        if blob is None or not changes or changes[0][1] != blob:
            return [], 0
        undone_by, _, back_to = changes[0]
        if self.git.commit_info(undone_by)[1] == COMMITTER or self._disk_blob(rel) == back_to:
            return [], 0  # memstore's own, or the file went back too: the person's deliberate change (`commit -a`)
        restores: list[tuple[str | None, str | None, Ident, str]] = []
        expected, last = blob, 0
        for made, before, after in changes[1:]:
            author, committer, original, when = self.git.commit_info(made)
            if committer != COMMITTER or after != expected:
                return [], 0
            last = last or when
            subject, _, body = original.partition("\n")
            trailers = {key: value for key, _, value in (line.partition(": ") for line in body.splitlines())
                        if key.startswith("Memstore-")}
            restores.insert(0, (before, after, author, commit_message(
                f"Restore {subject} (commit {undone_by[:12]} took it out, the file kept it)",
                {**trailers, "Memstore-Op": "restore", "Memstore-Restores": made})))
            if before == back_to:
                return restores, last
            expected = before
        return [], 0

    def repair_index(self) -> list[str]:
        """Put back index entries that a racing `git commit` took back to before memstore's commit; the paths.

        `git commit` reads the index before it takes `index.lock`. When a memstore commit
        falls in between, that git commit writes its stale copy back and then fails (the
        branch moved): git's own behaviour between any two committers. The entry then holds
        the content from before memstore's commit while the branch and the file hold
        memstore's, and the person's next commit would undo the agent's edit. Only such an
        entry is put back, and only while the index was written within seconds of that commit:
        the branch's last change of the path was memstore's, the index holds exactly what was
        there before it, and the file still holds what it committed. (A person who stages the
        old content on purpose, `git reset HEAD~ -- path`, seconds after an agent's commit, sees
        it put back; later, never.)
        """
        if not self._stale_entries():  # looked at without the lock first: most often nothing
            return []
        with self.locks.hold(REPO_LOCK, "the repository"):
            stale = self._stale_entries()
            try:
                repaired = self.git.set_entries(stale) if stale else []
            except CommitPending:  # a git command holds the index: tried again at its next change
                return []
        for rel in repaired:
            log.warning("%s: a git commit that raced memstore's put back the index entry from before memstore's "
                        "commit; the entry is set to the branch's again, so no later commit undoes that edit", rel)
        return repaired

    def restore_aborted(self) -> list[str]:
        """Make again the memstore commits a `git rebase --abort` took off the branch; the paths.

        A rebase (`git pull --rebase`) reads the branch, and only later marks itself under way;
        a memstore commit in between makes its last step fail ("cannot lock ref … is at <the
        agent's commit> but expected …"), and `git rebase --abort` then returns the branch to
        what it read, before that commit: git's own race between two committers. Only commits
        memstore made, between the two, are made again on top (of waiting edits too), each
        merged under its author and whole (a several-file one with a file changed since is
        left, with a warning). Looked at before every operation takes its locks, for aborts of
        the last `_ABORT_WINDOW` seconds, the newest once.
        """
        if getattr(self._made, "restoring", False):  # its own writes
            return []
        aborts = self.git.rebase_aborts(since=time.time() - _ABORT_WINDOW)
        if not aborts or aborts[-1][0] == aborts[-1][1]:
            return []
        old, new = aborts[-1]
        if self.ws.read_state("restored-abort") == f"{old} {new}":
            return []
        dropped, commit = [], old  # newest first, from the abort's "from" back to its "to"
        while commit != new and len(dropped) <= _RACE_COMMITS:
            if self.git.commit_info(commit)[1] != COMMITTER or not self.git.parents(commit):
                dropped = []  # a commit of the person's own (or an unrelated line): the abort stands as it is
                break
            dropped.append(commit)
            commit = self.git.parents(commit)[0]
        restored: list[str] = []
        self._made.restoring = True
        try:
            for made in reversed(dropped if commit == new else []):
                restored += self._restore_commit(made)
        finally:
            self._made.restoring = False
        self.ws.write_state("restored-abort", f"{old} {new}")
        return restored

    def _restore_commit(self, made: str) -> list[str]:
        """One memstore commit made again on the branch (see `restore_aborted`); its paths restored."""
        author, _, original, _ = self.git.commit_info(made)
        parent = self.git.parents(made)[0]
        rels = [rel for rel in self.git.changed_paths(made) if rel.startswith(("blocks/", "agents/"))]
        with self.locked_files(rels) as now:
            files: dict[str, tuple[bytes | None, bytes | None]] = {}
            for rel in rels:
                waiting = self._journal(rel)  # on top of edits still waiting for their commit
                base, ours = self.git.blob_at(parent, rel), self.git.blob_at(made, rel)
                theirs = waiting[-1].new if waiting else self.head_blob(rel)
                if ours == theirs:
                    continue
                merged = ours if theirs == base else (None if None in (base, ours, theirs)
                                                      else self.git.merge3(rel, base, ours, theirs))  # type: ignore[arg-type]
                if (blob_id(now[rel]) if now[rel] is not None else None) != theirs or (merged is None and ours):
                    log.warning("%s: commit %s, which a git rebase --abort took off the branch, is not made again: "
                                "the file changed since, or the two do not merge", rel, made[:12])
                    return []  # whole or not at all, as it was made
                files[rel] = (merged if isinstance(merged, bytes) else self.git.read_blob(merged) if merged else None,
                              now[rel])
            if not files:
                return []
            subject, _, body = original.partition("\n")
            trailers = {key: value for key, _, value in (line.partition(": ") for line in body.splitlines())
                        if key.startswith("Memstore-")}
            saved = self.write_files(files, author, commit_message(
                f"Restore {subject} (a git rebase --abort took commit {made[:12]} off the branch)",
                {**trailers, "Memstore-Op": "restore", "Memstore-Restores": made}))
        log.warning("%s: commit %s, which a git rebase --abort took off the branch, is made again%s", ", ".join(files),
                    made[:12], f" (its commit waits: {saved.pending})" if saved.pending else f": {saved.version}")
        return list(files)

    def _stale_entries(self) -> dict[str, tuple[str | None, str | None]]:
        """The index entries `repair_index` puts back: path -> (the stale blob, the branch's)."""
        stale: dict[str, tuple[str | None, str | None]] = {}
        written = self.git.index_mtime()
        for rel, head, staged in self.git.staged():
            if head is None or written is None or not rel.startswith(("blocks/", "agents/")):
                continue
            try:  # the cheap tests first: a person's staged edit of a file fails them
                data = self.read(rel)
            except FileFormatError:
                continue
            if data is None or blob_id(data) != head or self._journal(rel):
                continue
            last = self.git.changes_of(rel, limit=1, walk=_RACE_WALK)
            if not last or last[0][1:] != (staged, head):
                continue
            _, committer, _, when = self.git.commit_info(last[0][0])
            if committer == COMMITTER and when - 1 <= written <= when + _RACE_SECONDS:
                stale[rel] = (staged, head)
        return stale

    def _store_blob(self, content: bytes | None) -> str | None:
        if content is None:
            return None
        try:
            return self.git.write_blob(content)
        except OSError as exc:
            raise _disk_error("the git object store", exc) from None

    def _put(self, rel: str, content: bytes | None, still: str | None | object = ...) -> os.stat_result | None:
        """Write (or delete) the file; the stat of the file written. `still`: the blob the file held when the
        edit read it (None: no file), checked right before the rename: SavedMeanwhile if a person's editor saved
        the file since (the rename would have thrown their save away)."""
        target = self.ws.root / rel

        def unchanged() -> None:
            if still is ...:
                return
            seen = _stat_of(target)  # the file read next; stat'ed again last, so only a save in the moment
            if self._disk_blob(rel) != still or _stat_of(target) != seen:  # between that stat and the rename is missed
                raise SavedMeanwhile(f"{rel} was saved by someone else while the edit was made; nothing was written. "
                                     "Retry the edit on what the file holds now.")

        if content is None:
            unchanged()
            target.unlink(missing_ok=True)
            return None
        return write_atomic(target, self.git.to_workdir(rel, content), self.ws.tmp_dir,
                            flush="loose-object" in self.git.flush, before=unchanged)

    def _undo_all(self, changed: Mapping[str, tuple[bytes | None, bytes | None]], journals: dict[str, list[_Entry]],
                  journaled: list[str], written: dict[str, os.stat_result | None]) -> bool:
        """Put back the files a write changed, and their journals, as they were before it; False if the
        disk refuses (the journals keep the edit: it is committed once the disk takes it)."""
        ok = True
        for rel in journaled:
            try:
                if rel in written:
                    self._put(rel, changed[rel][1])
                self._save_journal(rel, journals[rel][:-1])
            except OSError:
                ok = False
        return ok

    # -- committing the journal --------------------------------------------------------------

    def _commit_journal(self, journals: dict[str, list[_Entry]], wait: float | None,
                        written: Mapping[str, os.stat_result | None] | None = None, steps: int | None = None,
                        exact: frozenset[str] = frozenset()) -> str:
        """Commit journal entries in order, clearing each once its commit exists; the last commit.

        One file's journal: each entry, one commit each. Several files' journals (one write of
        several files, `write_files`, one entry each): one commit of them all. Each commit holds
        its entries' blobs, whatever the files hold now (a later entry, or a person's change on
        top, which stays in the file for the watcher or the next edit). `written`: the stat of
        each file as its last entry wrote it, when known. `steps`: at most this many commits.
        """
        version = ""
        with self.locks.hold(REPO_LOCK, "the repository"):
            while all(journals.values()) and steps != 0:
                steps = None if steps is None else steps - 1
                for attempt in range(2):
                    for rel, journal in journals.items():
                        self._restore_undone(rel, journal[0].base, wait)
                    merged = self._rebase(journals, exact)
                    step = [(rel, journal[0].new) for rel, journal in journals.items()]
                    entry = next(iter(journals.values()))[0]
                    last = all(len(journal) == 1 for journal in journals.values())
                    try:
                        version = self.git.commit(step, Ident(entry.name, entry.email), entry.message, COMMITTER,
                                                  written=written if last and not merged else None, wait=wait)
                        break
                    except BranchChanged:  # a git commit changed the files meanwhile: restored or merged onto
                        if attempt:
                            raise
                for rel, journal in journals.items():
                    journal.pop(0)
                    try:
                        self._save_journal(rel, journal)
                    except OSError as exc:  # the commit is made: `_finish` knows the entry left as committed
                        log.warning("%s: committed as %s, but its journal was not cleared: %s", rel, version[:12],
                                    os_error_text(exc))
                self._made.commits = getattr(self._made, "commits", 0) + 1
        return version

    def _rebase(self, journals: dict[str, list[_Entry]], exact: frozenset[str] = frozenset()) -> bool:
        """Carry waiting edits over a git command's commit that changed their files on the branch after they
        were made (a person's commit, a pull): each edit 3-way merged onto the branch's content, as
        `git rebase` would, and the file rewritten to match, so the commit keeps the person's change;
        whether any was. Diverged, with nothing changed, when an edit does not merge. A branch that went
        back past the edits (a reset) is not merged onto: they are committed as they are. `exact`: the files
        of an edit made against a version (If-Match) whose caller waits for it: StaleVersion, not a merge.
        A person's hand edit that does not merge stops the merge there: it stays in the file, theirs.
        """
        plans = {rel: self._plan(rel, journal, rel in exact) for rel, journal in journals.items()
                 if journal[0].base != self.head_blob(rel) and self._moved_on(rel, journal)}
        for rel, plan in plans.items():
            journal = journals[rel]
            left = [entry for entry in journal if all(entry is not kept for kept, _, _ in plan)]
            for entry in left:
                log.warning("%s: the waiting edit by %s does not merge with a git commit of the file; dropped",
                            rel, entry.name)
            # not when a person saved the file since, or their hand edit stays in it: theirs stays
            holds = self._disk_blob(rel) == journal[-1].new and not any(entry.hand_edit for entry in left)
            was = journal[-1].was or journal[-1].new
            journal[:] = [entry for entry, _, _ in plan]  # in place: the caller commits from these lists
            for entry, base, new in plan:
                entry.base, entry.new = base, new
            journal[-1].was = was if holds else None
            self._save_journal(rel, journal)  # first: killed before the file is written, `_finish` writes it
            if holds:
                self._put(rel, self.git.read_blob(plan[-1][2]) if plan[-1][2] else None)
            log.warning("%s: a git commit changed it on the branch while %d edit(s) of it waited; merged onto it",
                        rel, len(journal))
        return bool(plans)

    def _plan(self, rel: str, journal: list[_Entry], exact: bool = False) -> list[tuple[_Entry, str | None, str | None]]:
        """Each edit of `journal` merged onto the branch's content of `rel`, in turn: (edit, base, new). An
        agent's queued edit that does not merge is left out (the next ones are merged without it); Diverged
        when none merges, or one that must not be left out does not: a hand edit, a part of a several-file
        edit, an edit whose caller waits for it."""
        theirs, plan, refused = self.head_blob(rel), [], None
        for entry in journal:
            try:
                merged = self._merged(rel, entry, theirs, exact)
            except Diverged as exc:
                if exact or entry.group or len(journal) == 1 or (entry.hand_edit and not plan):
                    raise
                if entry.hand_edit:  # the person's text stays in the file, a hand edit again; what follows too
                    break
                refused = exc
                continue
            plan.append((entry, theirs, merged))
            theirs = merged
        if not plan:
            assert refused is not None
            raise refused
        return plan

    def _moved_on(self, rel: str, journal: list[_Entry]) -> bool:
        """Whether the waiting edits of `rel` are merged onto the branch's content: it moved since the first was
        made, forward (a commit, a pull) or sideways (a rebasing pull, a switch, a reset onto another line). A
        move back into the edits' own past is merged onto only when the file no longer holds them as they are
        (`rebase -i --autostash` dropping a commit under them); holding them (`git reset --soft HEAD~`), the
        file is the truth and they are committed as they are, as `git commit` would."""
        entry = journal[0]
        if entry.on is not None:
            tip = self.git.tip()
            if tip is None:
                return False
            # the same commit: one landed between the edit's read of the file and its look at the branch
            if tip == entry.on or not self.git.descends(entry.on, tip):
                return True
            return self._disk_blob(rel) != journal[-1].new
        # journals of versions before 5 Dec: the file's content the edit was made on is in the branch's past
        return any(before == entry.base for _, before, _ in self.git.changes_of(rel, limit=64))

    def _index_to_branch(self, bases: dict[str, str | None]) -> None:
        """After edits refused as Diverged, whose files took the branch's content: each index entry that
        still holds what the edits were made on takes the branch's too, so the person's next commit does
        not take their change back out (best effort: a git command holding the index keeps it)."""
        try:
            self.git.set_entries({rel: (base, self.head_blob(rel)) for rel, base in bases.items()})
        except (MemstoreError, OSError) as exc:
            log.warning("%s: the index still holds the content the refused edit was made on: %s",
                        ", ".join(bases), exc)

    def _merged(self, rel: str, entry: _Entry, theirs: str | None, exact: bool = False) -> str | None:
        """The blob of `entry`'s edit made on `theirs` instead (None: no file); Diverged if they conflict, or
        the merge must not be committed (`check`: an invalid file, a block made read-only meanwhile)."""
        base, ours = entry.base, entry.new
        if ours == theirs or base == theirs:
            return ours
        last = self.git.changes_of(rel, limit=1)
        if exact:
            raise StaleVersion(f"{rel}: {_by(self.git, last)} changed it after the version the edit was made "
                               "against; nothing was written. Read it again and retry.")
        if theirs is None and not last:  # the branch's line never had the file (a reset or rebase onto another
            return ours  # line): nothing of its to keep, and the file is the block's only copy there
        if base == ours:
            return theirs
        why = "the two do not merge"
        merged = None if base is None or ours is None or theirs is None else self.git.merge3(rel, base, ours, theirs)
        if merged is not None and self.check is not None:
            try:
                self.check(rel, merged, self.git.read_blob(base), entry.by_person)  # type: ignore[arg-type]
            except MemstoreError as exc:
                merged, why = None, f"the two do not merge ({exc})"
        if merged is None:
            raise Diverged(f"{rel}: {_by(self.git, last)} changed it on the branch after the edit by {entry.name} "
                           f"was made, and {why}. The edit was not applied; read it again and retry.")
        return self._store_blob(merged)

    def _restore_undone(self, rel: str, base: str | None, wait: float | None) -> None:
        """Before an edit of `rel` made on `base` is committed: if a git command took `base` out of the branch
        since, undoing a memstore commit (git's stale-index race, `repair_index`), commit it back first as a
        restore by its author, so the edit's commit holds only the edit. The caller holds the repository lock."""
        if self.head_blob(rel) == base:
            return
        for _, after, author, message in self._undone(rel, base)[0]:
            self.git.commit([(rel, after)], author, message, COMMITTER, wait=wait)

    def _finish(self, rel: str, wait: float | None, held: Iterable[str] = ()) -> str | None:
        """Commit the edits of `rel` a blocked or killed writer left in its journal (under the file lock;
        `held`: the files whose locks the caller holds besides)."""
        journal = self._journal(rel)
        if journal and journal[0].group:
            group = journal[0].group
            with ExitStack() as stack:  # the group's other files, if free now: never waited for while holding
                try:  # locks (so no order of taking them can deadlock), and never this thread's own again
                    for other in sorted(set(group) - {rel, *held}):
                        stack.enter_context(self.locks.hold(self.locks.file(other), other, timeout=0))
                except LockTimeoutError:
                    return None  # left waiting, whole, for whoever holds them all (`finish_all`)
                self._finish_group(group, wait)
            journal = self._journal(rel)
            if journal and journal[0].group:  # still waiting, whole
                return None
        if not journal:
            journal = self._revived(rel)
            if not journal:
                return None
        journal = self._kept(rel, journal)
        if not journal:
            return None
        disk = self.read(rel)
        disk_blob = blob_id(disk) if disk is not None else None
        if journal[-1].was is not None and disk_blob == journal[-1].was != journal[-1].new:
            try:  # merged onto a git command's commit by a writer killed before it wrote the file
                self._put(rel, self.git.read_blob(journal[-1].new) if journal[-1].new else None)
                disk_blob = journal[-1].new
            except OSError as exc:
                log.warning("%s: waiting edits not committed yet: %s", rel, os_error_text(exc))
                return None
        unwritten = []
        if disk_blob != journal[-1].new and disk_blob == journal[-1].base:
            # its writer died before the file changed, or (one edit) a `git stash` took it out
            unwritten.append(journal.pop())
        head = self.head_blob(rel)
        if journal and journal[0].base != head and self._undone(rel, journal[0].base)[0]:
            head = journal[0].base  # a racing git commit took it out: restored before the journal is committed
        while journal and journal[0].base != head and any(e.new == head for e in journal):
            journal.pop(0)  # committed; its writer died before clearing it
        moved_on = bool(journal) and journal[0].base != head and self._moved_on(rel, journal)
        if moved_on and disk_blob != journal[-1].new:  # the merge may be in the file already (`pull --autostash`)
            try:
                in_file = self._plan(rel, journal)[-1][2] == disk_blob
            except Diverged:
                in_file = False
            if not in_file and not unwritten and disk_blob not in (head, None):
                return None  # a person's change on top: once taken as theirs (a hand edit), all are merged onto it
            moved_on = in_file
        if not journal or (journal[0].base != head and not moved_on and disk_blob != journal[-1].new) or (
                disk_blob == head and disk_blob != journal[-1].new):
            if journal:  # the person put the file back to the branch (`git reset --hard`, `git checkout`, `git stash`)
                log.warning("%s: dropping %d pending edit(s) that a git reset, checkout or stash discarded",
                            rel, len(journal))
            if journal or unwritten:
                self._keep_dropped(rel, [*journal, *unwritten])
            self._save_journal(rel, [])
            return None
        try:
            return self._commit_journal({rel: journal}, wait=wait)
        except CommitPending:
            return None
        except (HookRefused, Diverged) as exc:
            self._drop_refused(rel, journal, disk_blob, exc)
            return None
        except ConflictError:  # unmerged now: the edits wait until the person resolves it
            return None
        except OSError as exc:
            log.warning("%s: waiting edits not committed yet: %s", rel, os_error_text(exc))
            return None

    def _kept(self, rel: str, journal: list[_Entry]) -> list[_Entry]:
        """The waiting edits of `rel`, each with its content in git's object store. Nothing in git refers to a
        waiting edit's blob, so `git gc --prune=now` or `git prune` removes it: it is stored again from the file
        when the file holds it; else its change goes into the next edit's commit (the last one's stays in the
        file, for the person), with a warning, rather than a commit naming a missing object."""
        gone = [entry for entry in journal if entry.new is not None and not self.git.has_object(entry.new)]
        if not gone:
            return journal
        disk = self.read(rel)
        if disk is not None and blob_id(disk) in {entry.new for entry in gone}:
            self._store_blob(disk)
        kept: list[_Entry] = []
        for at, entry in enumerate(journal):
            if entry.new is None or entry.new == (blob_id(disk) if disk is not None else None) \
                    or self.git.has_object(entry.new):
                kept.append(entry)
                continue
            log.warning("%s: the content of the waiting edit by %s was removed from git's object store (a git gc "
                        "or prune); its change is committed with the next one, or stays in the file", rel, entry.name)
            if at + 1 < len(journal):
                journal[at + 1].base = entry.base
        if len(kept) != len(journal):
            self._save_journal(rel, kept)
        return kept

    def _finish_group(self, group: list[str], wait: float | None) -> None:
        """Finish a write of several files that a blocked or killed writer left (the caller holds them all):
        as one commit, its files that were not written yet written from the blobs stored before it began.

        When its files no longer all stand where it left them (a reset, a later edit queued behind it),
        each file's part is finished on its own, as a one-file edit is. A person's commit of some of them
        since is merged onto, the write whole (`_rebase`), or it is dropped whole.
        """
        journals = {rel: self._journal(rel) for rel in group}
        entries = {rel: journal[0] if journal else None for rel, journal in journals.items()}
        first = entries[group[0]]
        heads = {rel: self.head_blob(rel) for rel in group}
        disks = {rel: self._disk_blob(rel) for rel in group}
        gone = False  # content a `git prune` removed: stored again from the file, else each file's part on its own
        for rel, entry in entries.items():
            if entry is not None and entry.new is not None and not self.git.has_object(entry.new):
                if disks[rel] == entry.new:
                    self._store_blob(self.read(rel))
                else:
                    gone = True
        written = [journals[rel][1].base == e.new if len(journals[rel]) > 1 else disks[rel] == e.new
                   for rel, e in entries.items() if e is not None]  # (a later edit made on top of it: written)
        whole = first is not None and all(
            e is not None and e.group == group and (e.message, e.name, e.email) == (first.message, first.name,
                                                                                   first.email)
            and (len(journals[rel]) > 1 or disks[rel] in (e.base, e.new)) for rel, e in entries.items())
        # a writer killed while it wrote them leaves the first files new and the rest as they were; all as
        # they were, or another pattern, is a person's git (stash, reset, checkout): each file on its own
        whole = whole and any(written) and written == sorted(written, reverse=True)
        if whole and all(heads[rel] == e.new for rel, e in entries.items() if e is not None):
            for rel, journal in journals.items():  # committed; its writer died before clearing the journals
                self._save_journal(rel, journal[1:])
            return
        moved = [rel for rel, e in entries.items() if e is not None and heads[rel] != e.base]
        if gone or not whole or any(not self._moved_on(rel, journals[rel]) for rel in moved):
            for rel, journal in journals.items():  # from here on, each file's part is its own edit
                for entry in journal:
                    if entry.group == group:
                        entry.group = None
                self._save_journal(rel, journal)
            return
        try:
            for rel, entry in entries.items():
                if entry is not None and len(journals[rel]) == 1 and disks[rel] != entry.new:
                    self._put(rel, self.git.read_blob(entry.new) if entry.new else None)  # its writer died first
            self._commit_journal(journals, wait=wait, steps=1)
        except (HookRefused, Diverged) as exc:  # refused as waiting one-file edits are: dropped, the files put back
            for rel, journal in journals.items():
                self._drop_refused(rel, journal, self._disk_blob(rel), exc)
        except (CommitPending, ConflictError):  # a git command's lock, or unmerged now: waits, whole
            return
        except OSError as exc:
            log.warning("%s: a waiting edit of several files is not committed yet: %s", ", ".join(group),
                        os_error_text(exc))

    def _disk_blob(self, rel: str) -> str | None:
        try:
            data = self.read(rel)
        except FileFormatError:
            return "unreadable"
        return blob_id(data) if data is not None else None

    def _keep_dropped(self, rel: str, journal: list[_Entry]) -> None:
        """Remember edits a git command took out of the file, in case they come back (`git stash pop`)."""
        data = json.dumps([asdict(e) for e in journal]).encode()
        try:
            write_atomic(self._dropped_path(rel), data, self.ws.tmp_dir)
        except OSError as exc:  # best effort: were they to come back, they would be a person's hand edit
            log.info("%s: the dropped edits are not remembered: %s", rel, os_error_text(exc))

    def _revived(self, rel: str) -> list[_Entry]:
        """Dropped edits of `rel` that are back in the file, exactly as they left it, on the same branch
        content (a `git stash` and `git stash pop`): they go back in the journal, to be committed under
        their authors, not as a person's hand edit. Dropped edits that can no longer come back are forgotten."""
        path = self._dropped_path(rel)
        if not os.path.exists(path):
            return []
        dropped = _read_journal(path)
        try:
            if not dropped or dropped[0].base != self.head_blob(rel):
                path.unlink(missing_ok=True)  # the branch moved on: a pop now is the person's merge
                return []
            disk = self.read(rel)
            if (blob_id(disk) if disk is not None else None) != dropped[-1].new:
                return []
            self._save_journal(rel, dropped)
            path.unlink(missing_ok=True)
        except (OSError, MemstoreError) as exc:
            log.info("%s: dropped edits not looked at: %s", rel, exc)
            return self._journal(rel)
        log.warning("%s: %d dropped edit(s) are back in the file (git stash pop?): committed under their authors",
                    rel, len(dropped))
        return dropped

    def _drop_refused(self, rel: str, journal: list[_Entry], disk_blob: str | None, exc: MemstoreError) -> None:
        """Waiting edits that a hook (or signing) refused when their commit was retried, or that do not merge
        with a git command's commit of the file (Diverged): they go, as a refused edit does, and the file
        goes back to what is committed unless a person changed it since. A person's text is never put back:
        agents' edits under it are taken out of it where they come out cleanly, and it is a hand edit again."""
        log.warning("%s: %d waiting edit(s), the first by %s, refused and dropped: %s", rel, len(journal),
                    journal[0].name, exc)
        persons = [i for i, entry in enumerate(journal) if entry.hand_edit]
        try:
            if disk_blob == journal[-1].new and not persons:
                back = self.head_blob(rel) if isinstance(exc, Diverged) else journal[0].base
                self._put(rel, self.git.read_blob(back) if back else None)
                if isinstance(exc, Diverged):
                    self._index_to_branch({rel: journal[0].base})
            elif disk_blob == journal[-1].new and persons[0] and persons == list(range(persons[0], len(journal))):
                refused = journal[: persons[0]]  # agents' edits, then the person's on top: the agents' taken out
                base, theirs = refused[-1].new, refused[0].base
                out = self.git.merge3(rel, base, disk_blob, theirs) if None not in (base, disk_blob, theirs) else None
                if out is not None and not isinstance(exc, Diverged):
                    self._put(rel, out)
            self._save_journal(rel, [])
        except OSError as exc:  # the disk refuses: they stay waiting, to be dropped at the next try
            log.warning("%s: the refused edits could not be taken out of the file yet: %s", rel, os_error_text(exc))

    def made(self) -> int:
        """How many commits this thread has made so far (a difference tells a call made some)."""
        return getattr(self._made, "commits", 0)

    def has_pending(self, rel: str) -> bool:
        """Whether an edit of `rel` is written but its commit is still pending."""
        return bool(self._journal(rel))

    def pending_files(self) -> list[str]:
        """The files with edits written but not yet committed."""
        return self._files_with(".json")

    def _files_with(self, suffix: str) -> list[str]:
        """The files whose journals (`.json`) or dropped edits (`.dropped`) hold entries."""
        try:
            entries = list(os.scandir(self.ws.pending_dir))
        except FileNotFoundError:
            return []
        found = []
        for item in entries:
            try:
                waiting = (item.name.endswith(suffix) and item.is_file(follow_symlinks=False)
                           and item.stat().st_size > 0)  # journals of earlier versions may be empty
            except OSError:  # removed since it was listed: its edits were committed
                continue
            journal = _read_journal(Path(item.path)) if waiting else []
            if journal:  # not one left blank by a killed writer
                found.append(journal[0].rel or item.name[: -len(suffix)].replace("__", "/"))  # before `rel` was kept
        return sorted(found)

    def finish_all(self, wait: float | None = 0.0) -> list[str]:
        """Commit every pending edit whose obstacle has cleared, and repair the index (`repair_index`); the
        files still pending."""
        self._remove_empty_journals()
        with contextlib.suppress(MemstoreError, OSError):  # a busy lock or repository: tried again next time
            self.repair_index()
        with contextlib.suppress(MemstoreError, OSError):
            self.restore_aborted()
        waiting = []
        for rel in sorted({*self.pending_files(), *self._files_with(".dropped")}):  # dropped ones may be back
            try:
                held = sorted({rel} | self._groups_of([rel]))  # this thread holds no lock yet: waited for in order
                with self._holding(held):
                    self._finish(rel, wait=wait, held=held)
            except (MemstoreError, OSError) as exc:  # one file's trouble never stops the others, or an open
                log.warning("%s: waiting edits not committed yet: %s", rel, exc)
            except Exception:  # a defect in finishing one file: said, and it never stops every command  # noqa: BLE001
                log.exception("%s: waiting edits not committed yet (a memstore defect; please report it)", rel)
            if self._journal(rel):
                waiting.append(rel)
        return waiting

    def _remove_empty_journals(self) -> None:
        """Empty journals that versions before 4 Dec kept for every file ever edited (each is removed
        under its file's lock, if free: a writer holding it may be about to fill it)."""
        try:
            names = [e.name for e in os.scandir(self.ws.pending_dir) if e.name.endswith(".json")]
        except OSError:
            return
        for name in names:
            path = self.ws.pending_dir / name
            lock = self.locks.file(name[:-5].replace("__", "/"))  # the journal's name is the lock's, encoded alike
            with contextlib.suppress(MemstoreError, OSError):
                if not path.stat().st_size:
                    with self.locks.hold(lock, name, timeout=0):
                        if not path.stat().st_size:
                            path.unlink()

    # -- the journal -------------------------------------------------------------------------

    def _journal_path(self, rel: str) -> Path:
        path = self._journal_paths.get(rel)
        if path is None:
            path = self._journal_paths[rel] = self.ws.pending_dir / (rel.replace("/", "__") + ".json")
        return path

    def _dropped_path(self, rel: str) -> Path:
        return self.ws.pending_dir / (rel.replace("/", "__") + ".dropped")

    def _journal(self, rel: str) -> list[_Entry]:
        return _read_journal(self._journal_path(rel))

    def _save_journal(self, rel: str, journal: list[_Entry]) -> None:
        """Rewrite the journal in place; remove it when nothing waits.

        A shorter journal is padded with spaces to the old one's length before it is cut to
        size, so a writer killed between the two still leaves JSON that parses (and the
        edits in it are committed under their authors, not taken for a person's).
        """
        path = self._journal_path(rel)
        if not journal:
            try:  # nothing waits: no file, so finding what waits costs nothing however many files there are
                path.unlink(missing_ok=True)
                return
            except OSError:  # Windows, while another process reads it: emptied instead
                pass
        data = json.dumps([asdict(e) for e in journal]).encode() if journal else b""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            write_all(fd, data.ljust(os.fstat(fd).st_size))
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


def _read_journal(path: Path) -> list[_Entry]:
    """A journal's entries. What follows its JSON is ignored: the tail of a longer write cut short
    by a full disk before the journal was put back."""
    try:
        raw = path.read_bytes().decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return []
    if not raw:
        return []
    try:
        return [_Entry(**item) for item in json.JSONDecoder().raw_decode(raw)[0]]
    except (ValueError, TypeError):
        return []  # torn by a writer killed while writing it: that edit never reached the file


def _stat_of(path: Path) -> tuple[int, int, int] | None:
    """Which file is at `path`: (inode, size, mtime); None: none. A save by rename changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _by(git: GitRepo, last: list[tuple[str, str | None, str | None]]) -> str:
    """Who changed a file on the branch: its last commit there (`changes_of`), else the move that brought it."""
    if not last:
        return "a git command (a reset or rebase onto another line)"
    return f"a git commit ({last[0][0][:12]} by {git.commit_info(last[0][0])[0].name})"


def _disk_error(where: str, exc: OSError) -> MemstoreError:
    reason = os_error_text(OSError(exc.errno, exc.strerror))  # the path is `where`
    return WorkspaceError(f"Cannot write {where}: {reason}. Nothing was changed.")
