"""Reading the past: a file's history, its content at a version, diffs between versions.

History asks git itself (`git log -- path`), which uses the commit-graph and its
changed-path Bloom filters when present, so one block's history stays fast in a
repository of 100k commits; `maintain` keeps that graph current.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import git
from filelock import lock_descriptor

from .errors import NotFoundError, WorkspaceError
from .gitrepo import GitRepo
from .maintain import MAINTAIN_LOCK
from .models import AuthorKind, BlameLine, HistoryEntry

_FIELDS = ["%H", "%an", "%ae", "%aI", "%s",
           "%(trailers:key=Memstore-Op,valueonly,separator=%x2C)",
           "%(trailers:key=Memstore-Agent,valueonly,separator=%x2C)",
           "%(trailers:key=Memstore-Block,valueonly,separator=%x2C)",
           "%(trailers:key=Memstore-Author-Kind,valueonly,separator=%x2C)"]
_FORMAT = "%x1f".join(_FIELDS) + "%x1e"
# only the format asked for, whatever the person's configuration adds (`log.showSignature` prints the
# signature check before each record)
_PLAIN_LOG = ("--no-show-signature", "--no-color")


def file_history(store: GitRepo, rel: str, limit: int = 20, block_id: str | None = None) -> list[HistoryEntry]:
    """Commits that changed `rel`, newest first; stops at the creation of `block_id`."""
    out = _git(store).log(f"-n{limit}", f"--format={_FORMAT}", *_PLAIN_LOG, "--", rel)
    entries = []
    for record in out.split("\x1e"):
        parts = record.strip("\n").split("\x1f")
        if len(parts) != len(_FIELDS):
            continue
        version, name, email, date, subject, op, agent, block, kind = parts
        entries.append(HistoryEntry(
            version=version, author_name=name, author_email=email, date=date,
            op=op or None, agent_id=agent or None, message=subject, author_kind=author_kind(kind),
        ))
        if block_id and block == block_id and op == "create_block":
            break
    if entries and len(entries) < limit and store.shallow and store.is_shallow_boundary(entries[-1].version):
        entries[-1] = entries[-1].model_copy(update={"history_cut": True})
    return entries


def author_kind(trailer: str) -> AuthorKind:
    """The kind a commit's Memstore-Author-Kind trailer names; a commit without one is a person's own."""
    return trailer if trailer in ("agent", "host", "person") else "person"  # type: ignore[return-value]


def blame(store: GitRepo, rel: str, first_line: int, *, committed: bool = False) -> list[BlameLine]:
    """Who last wrote each line of `rel` from `first_line` (1-based) on, as `git blame` says.

    Lines of the working file not committed yet (a pending hand edit) have no version;
    `committed`: the file as last committed instead (one with conflict markers is not memory).
    """
    try:
        out = _git(store).blame("--line-porcelain", *(["HEAD"] if committed else []), "--", rel)
    except git.GitCommandError as exc:
        if store.head_blob(rel) is None:  # not committed at all yet (its creation waits for a git command)
            return []
        # git's own refusal, which the person's `git blame` meets too (a `blame.ignoreRevsFile` this
        # repository lacks): said, never shown as "not committed yet"
        raise WorkspaceError(f"git blame of {rel} failed: {_stderr(exc)}") from None
    lines: list[BlameLine] = []
    info: dict[str, str] = {}
    for raw in out.split("\n"):  # not splitlines: a value may hold U+2028, \f or a lone \r
        if not raw:
            continue
        if raw.startswith("\t"):
            number = int(info["line"])
            if number >= first_line:
                lines.append(BlameLine(
                    line=number - first_line + 1, text=raw[1:], version=info["commit"],
                    author_name=info.get("author", ""), author_email=info.get("author-mail", "").strip("<>"),
                    author_kind="person", date=info.get("author-time")))
            info = {}
        elif not info:
            commit, _, rest = raw.partition(" ")
            info = {"commit": commit, "line": rest.split()[1]}
        else:
            key, _, value = raw.partition(" ")
            info[key] = value
    kinds = _kinds(store, {b.version for b in lines if b.version and set(b.version) != {"0"}})
    return [b.model_copy(update=_blame_fields(b, kinds)) for b in lines]


def _kinds(store: GitRepo, versions: set[str]) -> dict[str, AuthorKind]:
    if not versions:
        return {}
    kind = "%(trailers:key=Memstore-Author-Kind,valueonly,separator=%x2C)"
    out = _git(store).show("-s", *_PLAIN_LOG, f"--format=%H {kind}", *sorted(versions))
    return {line.split(" ", 1)[0]: author_kind(line.partition(" ")[2].strip()) for line in out.splitlines() if line}


def _blame_fields(line: BlameLine, kinds: dict[str, AuthorKind]) -> dict[str, object]:
    if line.version is None or set(line.version) == {"0"}:
        return {"version": None, "author_name": "(not committed yet)", "author_email": "", "author_kind": "person",
                "date": None}
    stamp = int(line.date) if line.date and line.date.isdigit() else None
    date = datetime.fromtimestamp(stamp, UTC).isoformat() if stamp is not None else None
    return {"author_kind": kinds.get(line.version, "person"), "date": date}


def _stderr(exc: git.GitCommandError) -> str:
    text = exc.stderr if isinstance(exc.stderr, str) else str(exc)
    return text.strip().removeprefix("stderr:").strip().strip("'").strip() or str(exc)


def _git(store: GitRepo) -> git.Git:
    """git's own commands in the workspace (history, diffs and revisions are git's to answer)."""
    return git.Git(str(store.root))


def resolve_version(store: GitRepo, version: str) -> str:
    """A full commit id for `version` (a commit id, a prefix, or any git revision)."""
    if not isinstance(version, str) or not version or version.startswith("-"):
        raise NotFoundError(f"Version {version!r} is not a commit id.")
    try:
        return _git(store).rev_parse("--verify", "--quiet", f"{version}^{{commit}}").strip()
    except git.GitCommandError:
        raise NotFoundError(f"No version {version!r} in this workspace's history.") from None


def content_at(store: GitRepo, rel: str, version: str) -> bytes:
    """The bytes of `rel` as of commit `version`."""
    commit = resolve_version(store, version)
    blob = store.blob_at(commit, rel)
    if blob is None:
        raise NotFoundError(f"{rel} did not exist at version {commit[:12]}.")
    return store.read_blob(blob)


def last_version(store: GitRepo, rel: str) -> str | None:
    """The commit that last changed `rel`."""
    out = _git(store).log("-n1", "--format=%H", *_PLAIN_LOG, "--", rel).strip()
    return out or None


class LastChange:
    """The commit that last changed each file, caught up from HEAD instead of asking git log.

    Reading a block reports its version; `git log -1 -- path` costs a process per read.
    This remembers (head, version) per file and, when HEAD has moved, walks back from the
    new HEAD to the remembered one: a few tree lookups per new commit, cached trees.
    """

    def __init__(self, store: GitRepo, max_walk: int = 256) -> None:
        self.store = store
        self.max_walk = max_walk
        self._known: dict[str, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, rel: str) -> str | None:
        head = self.store.tip()
        if head is None:
            return None
        with self._lock:
            known = self._known.get(rel)
        version = self._catch_up(rel, head, known)
        if version is _UNKNOWN:
            version = last_version(self.store, rel)
        with self._lock:
            self._known[rel] = (head, version)
        return version

    def _catch_up(self, rel: str, head: str, known: tuple[str, str | None] | None) -> str | None | object:
        """Walk back from `head` to the remembered head (or, cold, a few commits) to find the last change."""
        seen, version = known or (None, None)
        commit = head
        for _ in range(self.max_walk if known else self.max_walk // 4):
            if commit == seen:
                return version
            parents = self.store.parents(commit)
            if len(parents) != 1:
                return _UNKNOWN  # a root or a merge: let git answer
            parent = parents[0]
            if self.store.blob_at(commit, rel) != self.store.blob_at(parent, rel):
                return commit
            commit = parent
        return _UNKNOWN


_UNKNOWN = object()


def diff(store: GitRepo, rel: str, from_version: str, to_version: str | None = None) -> str:
    """A unified diff of `rel` between two versions (to_version None: the file on disk)."""
    revs = [resolve_version(store, from_version)]
    if to_version is not None:
        revs.append(resolve_version(store, to_version))
    return str(_git(store).diff("--no-ext-diff", "--no-color", *revs, "--", rel))


def since_maintenance(workdir: str) -> float:
    """Seconds since housekeeping was last started in `workdir` (infinite: never)."""
    try:
        return time.time() - os.stat(_started_file(workdir)).st_mtime
    except OSError:
        return math.inf


def _maintain_lock(workdir: str) -> str:
    return os.path.join(workdir, ".memstore", "locks", MAINTAIN_LOCK)


def _started_file(workdir: str) -> str:
    """Its time is when housekeeping last started (not the lock's: filelock removes that on Windows)."""
    return os.path.join(workdir, ".memstore", "locks", "maintain.started")


def _stamp_start(workdir: str) -> None:
    with open(_started_file(workdir), "ab"):
        pass
    os.utime(_started_file(workdir))


def maintain(workdir: str) -> None:
    """Start git's housekeeping in a background process: pack objects, refresh the commit-graph.

    `memstore/maintain.py` runs it at low priority, one run at a time. It is started as a
    script (`python -P maintain.py`, its own folder kept off the import path), not as `-m
    memstore.maintain`: importing the package costs about 0.25 s of CPU, which on a busy
    two-core machine stalled the writers' edits (`benchmarks/edits.py`'s p99). Where a lock can be handed to a child (Unix), it is taken
    here and inherited, so the run counts as under way from the moment it starts (a `git
    fsck` waiting for it sees it at once), and none is started while one runs. Each start
    is noted for `since_maintenance`.
    """
    command = [sys.executable, "-P", os.path.join(os.path.dirname(__file__), "maintain.py"), workdir]
    if sys.platform == "win32":
        flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS}
        with contextlib.suppress(OSError):
            _stamp_start(workdir)
            subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL,  # noqa: S603 - fixed command line
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **flags)
        return
    try:
        # passed on to that child only
        fd = os.open(_maintain_lock(workdir), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        return
    try:
        if lock_descriptor(fd, blocking=False):  # else a run is under way
            _stamp_start(workdir)
            subprocess.Popen([*command, str(fd)], cwd=workdir, stdin=subprocess.DEVNULL,  # noqa: S603
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(fd,),
                             start_new_session=True)
    except OSError:
        pass
    finally:
        os.close(fd)  # the child's copy keeps the lock; without a child, this lets it go
