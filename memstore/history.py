"""Reading the past: a file's history, its content at a version, diffs between versions.

History asks git itself (`git log -- path`), which uses the commit-graph and its
changed-path Bloom filters when present, so one block's history stays fast in a
repository of 100k commits; `maintain` keeps that graph current.
"""

from __future__ import annotations

import os
import subprocess
import threading

import git
from filelock import lock_descriptor

from .errors import NotFoundError
from .gitobjects import GitStore
from .models import HistoryEntry

_FIELDS = ["%H", "%an", "%ae", "%aI", "%s",
           "%(trailers:key=Memstore-Op,valueonly,separator=%x2C)",
           "%(trailers:key=Memstore-Agent,valueonly,separator=%x2C)",
           "%(trailers:key=Memstore-Block,valueonly,separator=%x2C)"]
_FORMAT = "%x1f".join(_FIELDS) + "%x1e"


def file_history(store: GitStore, rel: str, limit: int = 20, block_id: str | None = None) -> list[HistoryEntry]:
    """Commits that changed `rel`, newest first; stops at the creation of `block_id`."""
    out = store.repo.git.log(f"-n{limit}", f"--format={_FORMAT}", "--", rel)
    entries = []
    for record in out.split("\x1e"):
        parts = record.strip("\n").split("\x1f")
        if len(parts) != len(_FIELDS):
            continue
        version, name, email, date, subject, op, agent, block = parts
        entries.append(HistoryEntry(
            version=version, author_name=name, author_email=email, date=date,
            op=op or None, agent_id=agent or None, message=subject,
        ))
        if block_id and block == block_id and op == "create_block":
            break
    return entries


def resolve_version(store: GitStore, version: str) -> str:
    """A full commit id for `version` (a commit id, a prefix, or any git revision)."""
    if not isinstance(version, str) or not version or version.startswith("-"):
        raise NotFoundError(f"Version {version!r} is not a commit id.")
    try:
        return store.repo.git.rev_parse("--verify", "--quiet", f"{version}^{{commit}}").strip()
    except git.GitCommandError:
        raise NotFoundError(f"No version {version!r} in this workspace's history.") from None


def content_at(store: GitStore, rel: str, version: str) -> bytes:
    """The bytes of `rel` as of commit `version`."""
    commit = resolve_version(store, version)
    entry = store.entry_at(store.commit_tree(commit), rel)
    if entry is None:
        raise NotFoundError(f"{rel} did not exist at version {commit[:12]}.")
    return store.read_object(entry[1])[1]


def last_version(store: GitStore, rel: str) -> str | None:
    """The commit that last changed `rel`."""
    out = store.repo.git.log("-n1", "--format=%H", "--", rel).strip()
    return out or None


class LastChange:
    """The commit that last changed each file, caught up from HEAD instead of asking git log.

    Reading a block reports its version; `git log -1 -- path` costs a process per read.
    This remembers (head, version) per file and, when HEAD has moved, walks back from the
    new HEAD to the remembered one: a few tree lookups per new commit, cached trees.
    """

    def __init__(self, store: GitStore, max_walk: int = 256) -> None:
        self.store = store
        self.max_walk = max_walk
        self._known: dict[str, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, rel: str) -> str | None:
        head = self.store.read_ref(self.store.head_ref())
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
            parents = self.store.commit_parents(commit)
            if len(parents) != 1:
                return _UNKNOWN  # a root or a merge: let git answer
            parent = parents[0]
            here = self.store.entry_at(self.store.commit_tree(commit), rel)
            if here != self.store.entry_at(self.store.commit_tree(parent), rel):
                return commit
            commit = parent
        return _UNKNOWN


_UNKNOWN = object()


def diff(store: GitStore, rel: str, from_version: str, to_version: str | None = None) -> str:
    """A unified diff of `rel` between two versions (to_version None: the file on disk)."""
    revs = [resolve_version(store, from_version)]
    if to_version is not None:
        revs.append(resolve_version(store, to_version))
    return str(store.repo.git.diff(*revs, "--", rel))


def maintain(workdir: str) -> None:
    """Start git's housekeeping in the background: pack objects, refresh the commit-graph.

    At the lowest CPU (and, where the disk scheduler supports it, I/O) priority: packing a
    few thousand loose objects costs ~0.4 s of CPU, which under a burst of edits would
    otherwise be taken from the writers. It leaves out the steps that lock the branch
    (packing refs, expiring reflogs): run slowly, they would hold up every commit; a
    person's own `git gc` still does them.

    Group commit writes a small pack per batch. A geometric repack rolls small packs into
    bigger ones, so the count stays logarithmic and the work stays proportional to what is
    new; gc's own trigger on the number of packs (which repacks everything) is off here.
    """
    script = (
        "ionice -c 3 -p $$ >/dev/null 2>&1; "  # idle I/O priority where the disk scheduler has one
        "git -c gc.autoDetach=false -c gc.writeCommitGraph=false -c gc.packRefs=false -c gc.autoPackLimit=0 "
        "-c gc.reflogExpire=never -c gc.reflogExpireUnreachable=never gc --auto --quiet; "
        "git repack --geometric=2 -d -l -q; "
        "git commit-graph write --reachable --changed-paths --split --size-multiple=4 2>/dev/null"
    )
    # One run at a time: the run holds an flock on this file until it exits (it inherits the
    # descriptor), and a burst of edits that asks for more meanwhile starts none.
    lock_path = f"{workdir}/.memstore/locks/maintain.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return
    try:
        if not lock_descriptor(fd, blocking=False):
            return
        subprocess.Popen(  # noqa: S603 - fixed command line
            ["nice", "-n", "19", "sh", "-c", script], cwd=workdir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=(fd,),
        )
    finally:
        os.close(fd)  # ours only: the run keeps its copy, and with it the lock
