"""The workspace's git repository, through libgit2 (pygit2): read, filter, commit, index.

memstore commits under git's own locks: it takes git's `index.lock` first, puts the new
index in place, builds the commit on the branch tip, moves the branch with a
compare-and-swap under git's ref lock, and lets go. The index goes in before the branch
moves (git itself does it the other way round) because `git commit` reads the index
before it takes the lock: see `_place_index`. A git command the person runs meanwhile
either waits for memstore or makes memstore wait. One git race remains, and memstore repairs
it: `git commit` writes back the index it read even when it then fails (see `_place_index`
and `commits.Committer.repair_index`). A lock file that git holds is never removed.

Two pieces of git's formats are written by hand, for the goal "an edit among 10,000
blocks costs at most 2x one among 10", where libgit2 rewrites the whole blocks tree and
the whole index on every change: one tree entry is patched in place (`gittree`), and one
index entry (`gitindex`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path

import pygit2
from pygit2.enums import DeltaStatus, FilterMode, ObjectType

from . import gitindex, gittree
from .errors import ConflictError, MemstoreError, WorkspaceError
from .cache import LRU
from .fsutil import PORTABLE, pid_alive, write_all, write_atomic

try:
    import fcntl
except ImportError:  # Windows: locks are claimed by the repository lock alone (see `GitRepo.git_lock`)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_MARKER = b"memstore lock\n"  # what memstore's own git lock files hold (see `GitRepo.git_lock`)
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.EINVAL)
LOCK_WAIT = 5.0  # seconds memstore waits for a lock a git command holds before the edit is left pending
_HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit")
_IndexKey = tuple[int, int, int, bytes]
_IN_PROGRESS = {  # git's multi-step operations, by the file in the git folder that says one is under way
    "MERGE_HEAD": "a merge is in progress: finish it or run `git merge --abort`",
    "rebase-merge": "a rebase is in progress: finish it or run `git rebase --abort`",
    "rebase-apply": "a rebase or `git am` is in progress: finish it or abort it",
    "CHERRY_PICK_HEAD": "a cherry-pick is in progress: finish it or run `git cherry-pick --abort`",
    "REVERT_HEAD": "a revert is in progress: finish it or run `git revert --abort`",
}
_NO_CHECKSUM = bytes(20)  # an index's trailer when git skips its checksum (`index.skipHash`)


@dataclass(frozen=True)
class Ident:
    """A commit author or committer."""

    name: str
    email: str

    def signature(self, when: float | None = None) -> pygit2.Signature:
        now = time.time() if when is None else when
        return pygit2.Signature(self.name, self.email, int(now), (time.localtime(now).tm_gmtoff or 0) // 60)


class CommitPending(MemstoreError):
    """The commit cannot be made now (a git command holds a lock, the disk refused): the edit waits."""


def blob_id(content: bytes) -> str:
    """The id git gives `content` as a blob."""
    return sha1(b"blob %d\0" % len(content) + content).hexdigest()


def open_repository(root: Path, config: dict[str, str]) -> pygit2.Repository:
    """The repository at `root`, or a WorkspaceError naming the git feature memstore cannot serve."""
    git_dir = root / ".git"
    ext = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("extensions.")}
    fmt = ext.get("objectformat", "sha1").lower()
    if fmt != "sha1":
        raise WorkspaceError(f"{root}: the repository uses the {fmt} object format; memstore works with SHA-1 "
                             "repositories only (git's default).")
    if ext.get("refstorage", "files").lower() != "files":
        raise WorkspaceError(f"{root}: the repository keeps its refs in {ext['refstorage']}; memstore needs git's "
                             "default ref storage (files).")
    if "partialclone" in ext or any(k.endswith(".promisor") for k in config):
        raise WorkspaceError(f"{root}: this is a partial clone (objects are fetched on demand); memstore needs every "
                             "object on disk. Clone it without --filter.")
    for key, feature in (("core.splitindex", "a split index"), ("index.sparse", "a sparse index"),
                         ("core.sparsecheckout", "a sparse checkout")):
        if git_bool(config.get(key)):
            raise WorkspaceError(f"{root}: the repository uses {feature} ({key}); memstore does not support it. "
                                 f"Run `git config {key} false`.")
    try:
        repo = pygit2.Repository(str(root))
    except (pygit2.GitError, KeyError) as exc:
        raise WorkspaceError(f"{root}: the git repository is unreadable ({exc}).") from None
    if repo.is_bare:
        raise WorkspaceError(f"{root}: a bare repository has no files to edit.")
    if git_dir.is_dir() and any(p.name.startswith("sharedindex.") for p in git_dir.iterdir()):
        raise WorkspaceError(f"{root}: the repository has a split index; run `git update-index --no-split-index`.")
    return repo


def git_config(root: Path, files: set[Path] | None = None) -> dict[str, str]:
    """git's configuration as git itself reads it here (every scope, includes, GIT_CONFIG_* variables);
    `files`, if given, gets the files its values came from (included ones too).

    Asked of git, not libgit2: libgit2 does not honour GIT_CONFIG_GLOBAL and friends, and
    the person's identity, hooks and signing must be what `git commit` would use.
    """
    proc = subprocess.run(["git", "config", "--list", "--show-origin", "-z"], cwd=root, capture_output=True,
                          stdin=subprocess.DEVNULL, check=False)
    out: dict[str, str] = {}
    items = proc.stdout.decode("utf-8", "replace").split("\0")
    for origin, item in zip(items[0::2], items[1::2]):  # (file:<path>, key\nvalue) pairs
        key, given, value = item.partition("\n")
        if files is not None and origin.startswith("file:"):
            source = root / origin[len("file:"):]
            files.add(source)
            if key.lower() == "include.path" or (key.lower().startswith("includeif.") and key.lower().endswith(".path")):
                files.add(source.parent / Path(value).expanduser())  # watched even while it sets nothing
        if key:
            out[key.lower()] = value if given else "true"  # a bare `key` line means true
    return out


def git_bool(value: str | None) -> bool:
    """A configuration value as git reads a boolean (true, yes, on or a non-zero number)."""
    value = (value or "false").strip().lower()
    if value in ("true", "yes", "on"):
        return True
    try:
        return int(value, 0) != 0
    except ValueError:
        return False


class GitRepo:
    """One workspace's repository; shared by a process's threads (calls are short and serialised by locks)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._config_origins: set[Path] = set()
        self.config = cfg = git_config(root, self._config_origins)
        self.repo = open_repository(root, cfg)
        self.git_dir = Path(self.repo.path).resolve()
        self.common_dir = _common_dir(self.git_dir)
        self.shallow = self.repo.is_shallow
        self._index_cache: tuple[_IndexKey, bytes | bytearray] | None = None
        self._index_sha1 = gitindex.ResumableSha1()
        self._index_places = gitindex.Places()  # for 10,000 blocks
        self._blobs: LRU[tuple[str, str], str | None] = LRU(1024)  # (commit, path) -> blob: commits never change
        self._links = not PORTABLE  # git's locks made as hard links of a marker (see `git_lock`)
        self._tidied = False  # the temp files killed writers left are removed at this process's first commit
        self._libgit2_index = threading.Lock()  # for `staged`, which uses the repository's own index object
        self.repo.set_ident("memstore", "memstore@agents.memstore")  # reflog lines of branch moves
        self.flush = _fsync_components(cfg.get("core.fsync"))
        self.objects = gittree.Objects(self.repo, str(self.common_dir / "objects"), self.flush)
        self._rules: tuple[tuple[int, int] | None, ...] = ()
        self._watched: list[str] = []  # the files `_rules` describes
        self._hooks: list[str] = []
        self._refreshing = threading.Lock()
        self.refresh(cfg)

    # -- what the repository asks of a commit --------------------------------------------

    def refresh(self, cfg: dict[str, str] | None = None) -> None:
        """Read again what the repository asks of a commit (attributes, signing, hooks) if a file that
        says it changed since: a long-running `serve` notices hooks installed or signing turned on.
        Per change: a few stats (git's configuration is read again only when one of its files changed)."""
        with self._refreshing:  # one thread at a time: the fields below change together
            rules = self._rules_key()
            if cfg is not None or rules != self._rules:
                before = self._config_origins
                if cfg is None:
                    origins: set[Path] = set()
                    cfg = git_config(self.root, origins)
                    self._config_origins = origins
                self.config = cfg
                self._filters = self._has_filters(cfg)
                self._check_filter_drivers()  # refused: read again (and refused again) at the next change
                self.signs = git_bool(cfg.get("commit.gpgsign"))
                hooks = [self._hook_file(name) for name in _HOOKS]
                watched = list(dict.fromkeys(str(p) for p in (*self._config_files(), *self._attribute_files())))
                # the files' stats from before they were read: a change made meanwhile is read at the next change
                same = self._config_origins == before and watched == self._watched
                self._watched = watched
                self._rules = rules if same else self._rules_key()
                self._hooks = [str(h) for h in hooks]
            self.native_commit = self.signs or any(_runnable(h) for h in self._hooks)  # made as `git commit` makes it

    def _rules_key(self) -> tuple[tuple[int, int] | None, ...]:
        """The (mtime, size) of every file that says what a commit needs: when it changes, they are read again.
        Paths kept as strings and stat'ed directly: this runs at every change (about 15 us, not 60)."""
        return tuple(map(_stat_key, self._watched))

    def _config_files(self) -> list[Path]:
        """git's configuration files: the repository's, the worktree's, the global one (and XDG's), and every
        file a value came from (the system's, included ones)."""
        return [self.git_dir / "config", self.common_dir / "config", Path(os.path.expanduser("~/.gitconfig")),
                Path(os.environ.get("GIT_CONFIG_GLOBAL") or _xdg_git() / "config"), *sorted(self._config_origins)]

    def _attribute_files(self) -> list[Path]:
        """The attribute files that can apply to blocks/ and agents/."""
        global_attrs = self.config.get("core.attributesfile")
        return [self.root / ".gitattributes", self.root / "blocks/.gitattributes",
                self.root / "agents/.gitattributes", self.common_dir / "info/attributes",
                Path(global_attrs).expanduser() if global_attrs else _xdg_git() / "attributes"]

    def _has_filters(self, cfg: dict[str, str]) -> bool:
        """Whether content may differ between the file and its blob (attributes, autocrlf)."""
        if cfg.get("core.autocrlf", "false").lower() != "false" or cfg.get("core.eol"):
            return True
        return any(p.is_file() for p in self._attribute_files())

    def _check_filter_drivers(self) -> None:
        """Refuse clean/smudge drivers (LFS, custom filters): memstore cannot apply them itself."""
        if not self._filters:
            return
        for sample in ("blocks/x.md", "agents/x.md", "agents/x/messages.jsonl"):
            driver = self.repo.get_attr(sample, "filter")
            if isinstance(driver, str):
                raise WorkspaceError(
                    f"{self.root}: .gitattributes gives {sample.split('/')[0]}/ files the `{driver}` filter "
                    "(a clean/smudge program such as git-lfs); memstore cannot apply it. Remove that attribute "
                    "for blocks/ and agents/.")

    def _hook_file(self, name: str) -> Path:
        """Where git hook `name` is looked for (`core.hooksPath`, else `.git/hooks`)."""
        hooks = self.config.get("core.hookspath")
        folder = Path(hooks).expanduser() if hooks else self.common_dir / "hooks"
        return (folder if folder.is_absolute() else self.root / folder) / name

    def _hook_path(self, name: str) -> Path | None:
        """The git hook `name` that `git commit` would run (None: none)."""
        path = self._hook_file(name)
        return path if _runnable(str(path)) else None

    def to_odb(self, rel: str, data: bytes) -> bytes:
        """A file's content as `git add` stores it (eol conversion and other built-in filters)."""
        if not self._filters:
            return data
        filters = self.repo.load_filter_list(rel, FilterMode.TO_ODB)
        return filters.apply_to_buffer(data) if filters is not None else data

    def to_workdir(self, rel: str, data: bytes) -> bytes:
        """A blob's content as `git checkout` writes it."""
        if not self._filters:
            return data
        filters = self.repo.load_filter_list(rel, FilterMode.TO_WORKTREE)
        return filters.apply_to_buffer(data) if filters is not None else data

    # -- reading -------------------------------------------------------------------------

    def branch(self) -> str:
        """The branch HEAD names (refs/heads/…); refuse a detached HEAD, naming the operation under way if one is
        (a rebase detaches HEAD while it runs: `git switch` would be the wrong advice)."""
        try:
            target = self.repo.references["HEAD"].target
        except (KeyError, pygit2.GitError) as exc:
            raise WorkspaceError(f"{self.root}: cannot read HEAD ({exc}).") from None
        if not isinstance(target, str):
            problem = self.in_progress() or "HEAD is detached (not on a branch); run `git switch <branch>` first"
            raise WorkspaceError(f"{self.root}: {problem}.")
        return target

    def in_progress(self) -> str | None:
        """The multi-step git operation under way (a merge, rebase, cherry-pick or revert), as a refusal; None."""
        git_dir = str(self.git_dir)
        return next((problem for marker, problem in _IN_PROGRESS.items()
                     if os.path.exists(f"{git_dir}/{marker}")), None)

    def tip(self) -> str | None:
        """The commit the branch points at (None: no commit yet)."""
        try:
            ref = self.repo.references.get(self.branch())
        except pygit2.GitError:
            return None
        return str(ref.target) if ref is not None else None

    def head_commit(self) -> str | None:
        """The commit HEAD names, on a branch or detached (a rebase under way); None: no commit yet."""
        try:
            return None if self.repo.head_is_unborn else str(self.repo.head.target)
        except pygit2.GitError:
            return None

    def check_tip(self) -> None:
        """Refuse a branch whose commit git's object store does not hold (every read and commit would fail)."""
        try:
            tip = self.tip()
        except WorkspaceError:  # no branch (a rebase under way): `Workspace.check_state` says which state it is
            return
        if tip is not None and tip not in self.repo:
            raise WorkspaceError(f"{self.root}: the branch {self.branch().removeprefix('refs/heads/')} points at "
                                 f"commit {tip[:12]}, which git's object store does not hold (a `git gc --prune=now` "
                                 "that ran while commits were made, or a damaged clone). Run `git fsck`, and reset "
                                 "the branch to a commit that is there.")

    def head_blob(self, rel: str) -> str | None:
        tip = self.tip()
        return self.blob_at(tip, rel) if tip else None

    def blob_at(self, commit: str, rel: str) -> str | None:
        """The blob of regular file `rel` in `commit` (None: absent, or not a regular file).

        Found in the trees' bytes (kept for the last few trees) rather than through libgit2,
        which parses every entry of a tree per lookup: 1.5 ms for a tree of 10,000 blocks
        against 0.1 ms (benchmarks/edits.py, edit latency by workspace size).
        """
        try:
            return self._blobs.get_or_make((commit, rel), lambda: self.objects.blob_in(self._tree_of(commit), rel))
        except (KeyError, ValueError):  # no such commit here: nothing is remembered
            return None

    def _tree_of(self, commit: str) -> str:
        return str(self.repo[commit].peel(pygit2.Commit).tree_id)

    def read_blob(self, oid: str) -> bytes:
        try:
            return self.repo[oid].read_raw()
        except KeyError:
            missing = "the repository is a shallow clone; " if self.shallow else ""
            raise WorkspaceError(f"git object {oid} is missing ({missing}run `git fsck`).") from None

    def has_object(self, oid: str) -> bool:
        """Whether git's object store holds `oid` now, as the disk says (libgit2's cache would still hold one a
        `git prune` removed): loose, else in a pack (read afresh)."""
        if os.path.exists(os.path.join(self.common_dir, "objects", oid[:2], oid[2:])):
            return True
        try:
            return pygit2.Odb(str(self.common_dir / "objects")).exists(oid)
        except (pygit2.GitError, ValueError):
            return False

    def files_in(self, folders: tuple[str, ...]) -> list[str]:
        """The paths of the files directly in these folders on the branch."""
        tip = self.tip()
        if tip is None:
            return []
        tree = self.repo[tip].peel(pygit2.Tree)
        found = []
        for folder in folders:
            sub = tree[folder] if folder in tree else None
            if isinstance(sub, pygit2.Tree):
                found += [f"{folder}/{entry.name}" for entry in sub if entry.type == ObjectType.BLOB]
        return found

    def descends(self, commit: str, ancestor: str) -> bool:
        """Whether `ancestor` is in `commit`'s past (False when either is unknown here: a shallow cut)."""
        try:
            return self.repo.descendant_of(commit, ancestor)
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def parents(self, commit: str) -> list[str]:
        return [str(p) for p in self.repo[commit].parent_ids]

    def is_shallow_boundary(self, commit: str) -> bool:
        try:
            return commit in (self.common_dir / "shallow").read_text().split()
        except FileNotFoundError:
            return False

    def changes_of(self, rel: str, limit: int, walk: int = 256) -> list[tuple[str, str | None, str | None]]:
        """The last `limit` commits that changed `rel` on the branch (first parents, at most `walk` back),
        newest first: (commit, the blob before it, the blob after it)."""
        found: list[tuple[str, str | None, str | None]] = []
        commit = self.tip()
        for _ in range(walk):
            if commit is None or len(found) >= limit:
                break
            parent = next(iter(self.parents(commit)), None)
            before, after = (self.blob_at(parent, rel) if parent else None), self.blob_at(commit, rel)
            if before != after:
                found.append((commit, before, after))
            commit = parent
        return found

    def rebase_aborts(self, since: float) -> list[tuple[str, str]]:
        """The branch's moves by `git rebase --abort` since time `since`, as its reflog's last lines say: (from,
        to), oldest first. Cheap when there is none: one read of the reflog's tail."""
        try:
            with open(self.common_dir / "logs" / self.branch(), "rb") as log_file:
                log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - 4096))
                tail = log_file.read()
        except (OSError, WorkspaceError):
            return []
        if b"\trebase (abort)" not in tail:
            return []
        found = []
        for line in tail.decode("utf-8", "replace").splitlines():
            head, _, message = line.partition("\t")
            fields = head.split(" ")
            if (message.startswith("rebase (abort)") and len(fields) > 3 and len(fields[0]) == len(fields[1]) == 40
                    and fields[-2].isdigit() and int(fields[-2]) >= since):
                found.append((fields[0], fields[1]))
        return found

    def changed_paths(self, commit: str) -> list[str]:
        """The paths `commit` changed from its first parent."""
        new = self.repo[commit].peel(pygit2.Commit)
        old = new.parents[0].tree if new.parents else None
        deltas = self.repo.diff(old, new.tree).deltas if old is not None else new.tree.diff_to_tree(swap=True).deltas
        return [d.new_file.path if d.status != DeltaStatus.DELETED else d.old_file.path for d in deltas]

    def commit_info(self, commit: str) -> tuple[Ident, Ident, str, int]:
        """A commit's (author, committer, message, commit time)."""
        made = self.repo[commit].peel(pygit2.Commit)
        return (Ident(made.author.name, made.author.email), Ident(made.committer.name, made.committer.email),
                made.message, made.commit_time)

    def index_mtime(self) -> float | None:
        try:
            return os.stat(self.git_dir / "index").st_mtime
        except FileNotFoundError:
            return None

    def staged(self) -> list[tuple[str, str | None, str | None]]:
        """The index entries that differ from the branch tip: (path, blob on the branch, blob in the index)."""
        tip = self.tip()
        if tip is None or self._index_key() is None:
            return []
        with self._libgit2_index:  # one object per repository: one thread at a time
            try:
                index = self.repo.index
                index.read(force=True)
                deltas = self.repo[tip].peel(pygit2.Tree).diff_to_index(index).deltas
            except (pygit2.GitError, OSError):  # an index being replaced, or one git itself would refuse
                return []
        return [(d.old_file.path if d.status == DeltaStatus.DELETED else d.new_file.path,
                 None if d.status == DeltaStatus.ADDED else str(d.old_file.id),
                 None if d.status == DeltaStatus.DELETED else str(d.new_file.id))
                for d in deltas if d.status in (DeltaStatus.MODIFIED, DeltaStatus.ADDED, DeltaStatus.DELETED)]

    def set_entries(self, entries: dict[str, tuple[str | None, str | None]]) -> list[str]:
        """Set each path's index entry from the first blob to the second (None: no entry), if it still holds
        the first; the paths set. Without file stats: git re-reads those files once. Under git's
        `index.lock`, not waited for: CommitPending if a git command holds it."""
        with self.git_lock(self.git_dir / "index.lock", "a git command", 0.0):
            index = self._read_index()
            now = {rel: staged for rel, _, staged in self.staged()}
            done = [rel for rel, (was, _) in entries.items() if now.get(rel, "unchanged") == was]
            for rel in done:
                index = self._new_index(index, rel, entries[rel][1], None)
            if done and index is not None:
                self._place_index(index)
        return done

    # -- committing ----------------------------------------------------------------------

    def write_blob(self, content: bytes) -> str:
        """Store `content` (its odb form) as a blob; its id."""
        return self.objects.write(b"blob", content)

    def commit(self, changes: Sequence[tuple[str, str | None]], author: Ident, message: str, committer: Ident, *,
               written: Mapping[str, os.stat_result | None] | None = None, wait: float | None = None) -> str:
        """One commit on the branch tip that sets each path to its stored blob (None: removes it); its id.

        `written`: the stat of each file as memstore wrote it with its blob; while the file
        is still that one, its index entry carries the stat, else git re-reads the file (a
        person may have saved it since). Raises CommitPending when a git command holds a
        lock past `wait` seconds (default LOCK_WAIT), ConflictError when a path is unmerged.
        The caller holds the workspace's repository lock (`commits.REPO_LOCK`) and has called
        `refresh` since the files' locks were taken.
        """
        wait = LOCK_WAIT if wait is None else wait
        written = written or {}
        for rel, blob in changes:  # a commit never names an object git does not hold (`git fsck`: missing blob)
            if blob is not None and not self.has_object(blob):
                raise WorkspaceError(f"{rel}: the content to commit ({blob[:12]}) is no longer in git's object store "
                                     "(`git gc --prune=now` or `git prune` removed it); nothing was committed.")
        with self.git_lock(self.git_dir / "index.lock", "interactive staging, or a commit in an editor?",
                           wait) as claim:
            if not self._tidied:
                self._remove_dead_temps()
                self._tidied = True
            index = self._read_index()
            for rel, _ in changes:
                if self.unmerged(rel, index):
                    raise unmerged_error(rel)
            new_index = index
            for rel, blob in changes:
                new_index = self._new_index(new_index, rel, blob, self._still(rel, written.get(rel)))
            assert new_index is not None
            try:
                if self.native_commit:
                    commit = self._commit_with_git(changes, author, message, committer, wait, claim, new_index)
                else:
                    commit = self._on_tip(changes, message, wait, new_index, lambda tip: self._build(
                        tip, changes, author, message, committer))
            except BaseException:  # the commit was not made, or an interrupt came right after it
                try:
                    landed = all(self.head_blob(rel) == blob for rel, blob in changes)
                except Exception:  # noqa: BLE001 - cannot tell: as if it did not land
                    landed = False
                if not landed:  # the branch lacks the change: the index goes back to match it
                    self._put_back_index(index)
                raise
        if not self.native_commit:  # hooks may have changed what was committed
            for rel, blob in changes:
                self._blobs.get_or_make((commit, rel), lambda blob=blob: blob)
        return commit

    def _still(self, rel: str, written: os.stat_result | None) -> os.stat_result | None:
        """The file's stat now, if it is still the file memstore wrote (`written`)."""
        if written is None:
            return None
        try:
            st = os.stat(self.root / rel)
        except OSError:
            return None
        same = (st.st_ino, st.st_size, st.st_mtime_ns) == (written.st_ino, written.st_size, written.st_mtime_ns)
        return st if same else None

    def _on_tip(self, changes: Sequence[tuple[str, str | None]], message: str, wait: float, index: bytes | bytearray,
                build: Callable[[str | None], str]) -> str:
        """Build the commit on the branch tip (`build(tip)`), put the new `index` in place and compare-and-swap
        the branch to it; its id.

        A git command may move the branch meanwhile (then it is built again on the new tip),
        but not change these files there: BranchChanged, and the caller looks at what it did
        before it tries again. The index goes in only once the commit is built: a person's
        `git commit` lets go of `index.lock` before its hooks run and reads the index again
        after them, so an index placed while memstore's own hooks ran was committed under the
        person's name.
        """
        first: list[str | None] | None = None
        for _ in range(10):
            tip = self.tip()
            there = [self.blob_at(tip, rel) if tip else None for rel, _ in changes]
            if tip is not None and there == [blob for _, blob in changes]:
                self._place_index(index)  # a git command committed these very blobs: the commit that holds them
                return tip
            if first is not None and there != first:
                raise BranchChanged(f"a git commit changed {', '.join(rel for rel, _ in changes)} on the branch "
                                    "while memstore committed")
            first = there
            commit = build(tip)
            self._place_index(index)
            try:
                self._move_branch(tip, commit, message, wait)
                return commit
            except _BranchMoved:
                continue
        raise CommitPending("the branch kept moving under another git command")

    def _build(self, tip: str | None, changes: Sequence[tuple[str, str | None]], author: Ident, message: str,
               committer: Ident) -> str:
        """The commit of `tip`'s tree with each path set to its blob, made here (no hooks, no signing)."""
        tree = str(self.repo[tip].peel(pygit2.Tree).id) if tip else None
        for rel, blob in changes:
            tree = self.objects.tree_with(tree, rel, blob)
        assert tree is not None
        now = time.time()
        return str(self.repo.create_commit(None, author.signature(now), committer.signature(now), message,
                                           pygit2.Oid(hex=tree), [pygit2.Oid(hex=tip)] if tip else []))

    def _move_branch(self, old: str | None, new: str, message: str, wait: float) -> None:
        """Compare-and-swap the branch from `old` to `new` as `git commit` does: under git's locks of
        HEAD and of the branch (in git's order), the reflog lines first, then the ref."""
        name = self.branch()
        with self.git_lock(self.git_dir / "HEAD.lock", "another git command moving HEAD", wait), \
                self.git_lock(self.common_dir / f"{name}.lock", "another commit, fetch or gc", wait):
            if self.branch() != name or self.tip() != old:
                raise _BranchMoved()
            self._log_move(name, old, new, message)
            write_atomic(self.common_dir / name, f"{new}\n".encode(), self.git_dir,
                         flush="reference" in self.flush, tmp_name="memstore-ref")

    def _log_move(self, name: str, old: str | None, new: str, message: str) -> None:
        """The reflog lines of a branch move, in the branch's log and HEAD's, as `git commit` writes them."""
        kind = "commit" if old else "commit (initial)"
        line = (f"{old or '0' * 40} {new} memstore <memstore@agents.memstore> {_git_time(time.time())}"
                f"\t{kind}: {message.splitlines()[0]}\n").encode()
        for log_path in (self.common_dir / "logs" / name, self.git_dir / "logs" / "HEAD"):
            try:  # best effort, as the reflog is to memstore: a line that cannot be written does not stop the commit
                try:
                    out = open(log_path, "ab")  # noqa: SIM115 - closed below
                except FileNotFoundError:  # the first commit on this branch, or a gc removed the folder
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    out = open(log_path, "ab")  # noqa: SIM115
                with out:
                    out.write(line)
            except OSError as exc:
                log.warning("commit %s made, but its reflog line in %s was not written: %s", new[:12], log_path, exc)

    # -- the index -------------------------------------------------------------------------

    @contextmanager
    def git_lock(self, lock: Path, what: str, wait: float) -> Iterator[int | None]:
        """Hold git's lock file `lock` (`index.lock`, `refs/heads/main.lock`) as git does.

        A git command's lock is waited for (`wait` seconds, then CommitPending) and never
        removed. memstore's own hold `_MARKER` (each a hard link to a marker file of its
        kind, so never seen empty) and are claimed while held: on Unix by a shared `flock`
        on the lock, taken before the lock appears and let go by the system when the process
        dies; on Windows, which cannot remove a file that is open, by the workspace's
        repository lock, which every memstore writer holds while it holds one of git's. A
        marked lock that nobody claims is a killed writer's, and is removed.
        """
        deadline = time.monotonic() + wait
        while (made := self._make_lock(lock)) is None:
            if self._remove_dead_lock(lock):
                continue
            if time.monotonic() > deadline:
                raise CommitPending(f"{lock} is held by another git command ({what}); the edit is "
                                    "committed once it is let go")
            time.sleep(0.01)
        claim, st = made
        try:
            yield claim  # a process given it (a hook, git making a commit) keeps the lock claimed
        finally:
            try:  # what the lock guarded is done (a branch moved): a lock left here is removed, unclaimed
                _remove_if_same(lock, st)
            except OSError as exc:
                log.warning("%s not removed yet (the next memstore writer removes it): %s", lock, exc)
            if claim is not None:  # the claim lasts until the lock is gone
                os.close(claim)

    def _make_lock(self, lock: Path) -> tuple[int | None, os.stat_result] | None:
        """Create and claim `lock`, holding the marker: (the claim, the lock's stat); None if it exists."""
        # one marker per lock a commit holds at once: a claim on one never looks like a claim on another
        kind = {"index.lock": "index", "HEAD.lock": "head"}.get(lock.name, "ref")
        marker = self.git_dir / f"memstore-marker-{kind}"
        for _ in range(3):
            if not self._links:
                break
            try:
                fd = os.open(marker, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except FileNotFoundError:  # not made yet, or removed (a person tidying .git)
                write_atomic(marker, _MARKER, self.git_dir, tmp_name="memstore-marker")
                continue
            if os.read(fd, len(_MARKER) + 1) != _MARKER:  # written over in place: made afresh
                os.close(fd)
                write_atomic(marker, _MARKER, self.git_dir, tmp_name="memstore-marker")
                continue
            claim = _claim(fd)
            try:
                _link(marker, lock)
                st = os.stat(lock)
                if claim is not None and not os.path.samestat(os.fstat(claim), st):  # replaced since opened
                    _remove_if_same(lock, st)
                    os.close(claim)
                    continue
                return claim, st
            except OSError as exc:
                if claim is not None:
                    os.close(claim)
                if isinstance(exc, FileExistsError):
                    return None
                if isinstance(exc, FileNotFoundError):  # the marker went since it was opened
                    continue
                if exc.errno not in _NO_LINKS:
                    raise
                self._links = False  # no hard links here (FAT, some network shares): git's plain O_EXCL
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            try:
                fd = os.open(lock, flags, 0o644)
            except FileNotFoundError:  # the ref's folder is gone (`git pack-refs`)
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, flags, 0o644)
        except FileExistsError:
            return None
        try:
            if fcntl is not None:  # claimed before it is marked
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_SH)
            write_all(fd, _MARKER)
            st = os.fstat(fd)
        except BaseException:  # a full disk: no lock left half-marked
            os.close(fd)
            os.unlink(lock)
            raise
        if fcntl is None:  # Windows cannot remove a file that is open
            os.close(fd)
            return None, st
        return fd, st

    def _remove_dead_lock(self, lock: Path) -> bool:
        """Remove `lock` if memstore made it and no live writer claims it (see `git_lock`).

        Judged and done while holding the lock file exclusively (Unix): no writer can claim
        and link a new lock of that file meanwhile, and its inode cannot be reused. Locks of
        versions before 5 Dec are known by a `memstore-*lock.<pid>.*` twin, a hard link of
        the lock, whose process is gone.
        """
        try:
            seen = os.stat(lock)
            if seen.st_size != len(_MARKER) and seen.st_nlink < 2:
                return False  # git's own, left unopened (on Windows an open file would hold up git's rename)
            fd = os.open(lock, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            return False
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return False  # claimed by a live writer (or flock cannot tell)
            st = os.fstat(fd)
            ours = st.st_size == len(_MARKER) and os.read(fd, len(_MARKER) + 1) == _MARKER
            folder = self.git_dir if lock.parent == self.git_dir else self.common_dir
            twins = [] if ours or st.st_nlink < 2 else [t for t in folder.glob("memstore-*lock.*")
                                                         if _same_file(t, st)]
            old = any(not pid_alive(int(t.name.split(".")[1])) for t in twins if t.name.split(".")[1].isdigit())
            if not (ours or old) or not _same_file(lock, st):
                return False
            if fcntl is not None:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        finally:
            os.close(fd)
        if fcntl is None and not _remove_if_same(lock, st):  # Windows: closed first, as it cannot remove an
            return False  # open file; the repository lock keeps memstore's writers out meanwhile
        for twin in twins:
            twin.unlink(missing_ok=True)
        log.warning("removed %s, left by a memstore writer that died", lock)
        return True

    def _remove_dead_temps(self) -> None:
        """Temp files killed writers left in the git folder: new indexes and refs never renamed into
        place, the scratch indexes and messages of commits made with hooks. memstore makes and uses
        them only while it holds index.lock, as do the hooks it started (which keep the claim, see
        `_commit_with_git`), and the caller holds index.lock now: so none is in use, whatever its
        process id says."""
        for kind in ("index", "ref", "msg"):
            for path in self.git_dir.glob(f"memstore-{kind}.*"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _index_key(self) -> _IndexKey | None:
        """Which version of the index is in place: (inode, size, mtime, its trailing checksum); None: no index.

        The checksum tells two versions apart even when a reused inode and a coarse clock
        give them the same stat (not when git skipped it: `_read_index` reads those again).
        """
        try:
            fd = os.open(self.git_dir / "index", os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            os.lseek(fd, max(st.st_size - 20, 0), os.SEEK_SET)
            return st.st_ino, st.st_size, st.st_mtime_ns, os.read(fd, 20)
        finally:
            os.close(fd)

    def _read_index(self) -> bytes | None:
        """The index's bytes; the last ones read or written are kept while that version is in place.

        With 10,000 files the index is ~1 MB, read up to three times per edit otherwise.
        """
        key = self._index_key()
        if key is None:
            return None
        cached = self._index_cache
        # an index git wrote without its checksum (`index.skipHash`) is told apart only by its stat: read again
        if cached is not None and cached[0] == key and key[3] != _NO_CHECKSUM:
            return cached[1]
        try:
            data = (self.git_dir / "index").read_bytes()
        except FileNotFoundError:
            return None
        if len(data) == key[1] and data[-20:] == key[3]:  # not replaced while it was read
            self._index_cache = (key, data)
        return data

    def _new_index(self, index: bytes | bytearray | None, rel: str, blob: str | None,
                   st: os.stat_result | None) -> bytes | bytearray:
        """The index with `rel`'s entry as just committed: patched, or by libgit2 for formats
        memstore does not patch, or when there was no index."""
        if index is not None:
            try:
                path = rel.encode()
                return gitindex.patch_index(bytearray(index), path, blob, st, self._index_sha1,
                                            self._index_places.get(path))
            except gitindex.RequiredExtension as exc:  # libgit2 cannot write these either
                feature = {"link": "a split index", "sdir": "a sparse index"}.get(str(exc), f"the `{exc}` extension")
                raise WorkspaceError(f"{self.root}: git's index now uses {feature}, which memstore cannot update; "
                                     "run `git update-index --no-split-index` or `git sparse-checkout disable` "
                                     "(and set core.splitIndex / index.sparse to false).") from None
            except gitindex.IndexFormatUnsupported:
                pass
        with self._scratch_index(index) as (idx, tmp):
            tip = self.tip() if index is None else None
            if tip is not None:  # no index at all: as `git read-tree HEAD` makes it, then the change
                idx.read_tree(self.repo[tip].peel(pygit2.Tree))
            _set_entry(idx, rel, blob)
            idx.write()
            return tmp.read_bytes()

    @contextmanager
    def _scratch_index(self, data: bytes | None) -> Iterator[tuple[pygit2.Index, Path]]:
        """A temporary index file holding `data` (None: empty), for libgit2 to work on; removed after."""
        tmp = self.git_dir / f"memstore-index.{os.getpid()}.{time.monotonic_ns()}"
        try:
            if data is not None:
                tmp.write_bytes(data)
            yield pygit2.Index(str(tmp)), tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _place_index(self, data: bytes) -> None:
        """Put the new index in place before the branch moves, while git's `index.lock` stays held.

        `git commit` reads HEAD, then the index, and only then takes `index.lock`. Were the
        branch moved first (git's own order), a person's commit that read the new HEAD and
        the old index would commit the old entry back over the agent's edit. With the index
        placed first, a commit that read the old index read the old HEAD too, and its
        compare-and-swap of the branch fails (tests/test_concurrency.py). Before it fails, such
        a commit has already written back the index it read: `Committer.repair_index` puts
        that entry right again.
        """
        st = write_atomic(self.git_dir / "index", data, self.git_dir, flush="index" in self.flush,
                          tmp_name="memstore-index")
        # `data` is not changed after this (a patch works on its own copy): kept as it is, not copied
        self._index_cache = ((st.st_ino, st.st_size, st.st_mtime_ns, bytes(data[-20:])), data)

    def _put_back_index(self, index: bytes | None) -> None:
        """The index as it was before a commit that was not made (best effort: the journal keeps the edit)."""
        try:
            if index is None:
                (self.git_dir / "index").unlink(missing_ok=True)
                self._index_cache = None
            else:
                self._place_index(index)
        except OSError:
            log.warning("could not put the index back after a commit that was not made; `git status` may show "
                        "the edit as staged until it is committed")

    def unmerged(self, rel: str, index: bytes | None = None) -> bool:
        """Whether `rel` has conflict stages in the index (a merge, stash pop or rebase left it)."""
        index = self._read_index() if index is None else index
        if not index:
            return False
        try:
            return gitindex.unmerged(index, rel.encode(), self._index_places)
        except gitindex.IndexFormatUnsupported:  # version 4 compresses names: libgit2 reads it
            conflicts = pygit2.Index(str(self.git_dir / "index")).conflicts
            return conflicts is not None and rel in conflicts

    def merge3(self, rel: str, base: str, ours: str, theirs: str) -> bytes | None:
        """The 3-way merge of blobs `ours` and `theirs` from `base`, as `git merge-file` makes it; None: they
        conflict, or are not text libgit2 can hand back (UTF-8 without NUL bytes)."""
        if any(b"\0" in self.read_blob(blob) for blob in (base, ours, theirs)):
            return None

        def entry(blob: str) -> pygit2.IndexEntry:
            return pygit2.IndexEntry(rel, pygit2.Oid(hex=blob), pygit2.GIT_FILEMODE_BLOB)

        try:
            result = self.repo.merge_file_from_index(entry(base), entry(ours), entry(theirs))
        except UnicodeDecodeError:
            return None
        return result.contents.encode() if result.automergeable else None

    # -- git's own commit, for hooks and signing ------------------------------------------

    def _commit_with_git(self, changes: Sequence[tuple[str, str | None]], author: Ident, message: str,
                         committer: Ident, wait: float, claim: int | None, index: bytes | bytearray) -> str:
        """The commit as `git commit` makes it, hooks run and signing applied, on the tip it was built on.

        Built from a temporary index (the tip's tree plus these changes, as `git commit --only`
        builds it, with the blobs instead of the files), so it holds these entries' content
        whatever the files hold now. Made with git's plumbing (hooks, `git commit-tree`), the
        branch moved by memstore's compare-and-swap: `git commit` itself builds on whatever
        HEAD it reads when it starts, and a person's commit landing between memstore's look at
        the tip and that read was reverted by the agent's. The caller holds the real
        `index.lock`, as `git commit` would; the hooks and git keep it claimed (`claim`), so
        a writer killed meanwhile does not leave it to be taken for dead while they run.
        """
        with self._scratch_index(self._read_index()) as (staged, tmp):
            env = {**os.environ, "GIT_INDEX_FILE": str(tmp), "GIT_AUTHOR_NAME": author.name,
                   "GIT_AUTHOR_EMAIL": author.email, "GIT_COMMITTER_NAME": committer.name,
                   "GIT_COMMITTER_EMAIL": committer.email, "GIT_AUTHOR_DATE": f"@{_git_time(time.time())}",
                   "GIT_EDITOR": ":"}  # what `git commit` gives its hooks
            note = self.git_dir / f"memstore-msg.{os.getpid()}.{time.monotonic_ns()}"  # hooks read and edit it
            built: list[str] = []
            try:
                def build(tip: str | None) -> str:
                    if tip is not None:
                        staged.read_tree(self.repo[tip].peel(pygit2.Tree))
                    else:
                        staged.clear()
                    for rel, blob in changes:
                        _set_entry(staged, rel, blob)
                    staged.write()
                    note.write_bytes(message.encode())
                    self._hook("pre-commit", [], env, claim, changes)
                    self._hook("prepare-commit-msg", [str(note), "message"], env, claim, changes)
                    self._hook("commit-msg", [str(note)], env, claim, changes)
                    cleanup = self.config.get("commit.cleanup", "default").lower()  # as `git commit -F` does
                    if note.read_bytes() != message.encode() and cleanup != "verbatim":  # a hook changed it
                        self._git(["stripspace", *(["--strip-comments"] if cleanup == "strip" else [])], env,
                                  claim, changes, stdin=note.read_bytes(), out=note)
                    staged.read(force=True)  # what the pre-commit hook added
                    tree = str(staged.write_tree(self.repo))
                    built.append(self._git(["commit-tree", tree, *(["-p", tip] if tip else []),
                                            *(["-S"] if self.signs else []), "-F", str(note)],
                                           env, claim, changes).decode().strip())
                    return built[-1]

                made = self._on_tip(changes, message, wait, index, build)
                parent = next(iter(self.parents(made)), None)
                if made in built:  # not when a git command had committed these very blobs meanwhile
                    self._hook("post-commit", [], env, claim, changes, check=False)
                    made = self._amended(made, changes)
                    built.append(made)
            finally:
                note.unlink(missing_ok=True)
        if made not in built:  # a git command's commit: its other paths are its own business in the index
            return made
        try:  # the commit is made: nothing past this point may undo the index or say it failed
            self._index_follows(parent, self.tip() or made, changes)
        except (OSError, pygit2.GitError, KeyError, ValueError) as exc:
            log.warning("commit %s made, but the index may not show what its hooks added: %s", made[:12], exc)
        return made

    def _amended(self, made: str, changes: Sequence[tuple[str, str | None]]) -> str:
        """The commit that holds the edit after the post-commit hook: `made`, or the commit a `git commit
        --amend` in the hook put in its place (same parents, the edit's blobs), since `made` left the branch."""
        try:
            tip = self.tip()
            if (tip is None or tip == made or self.descends(tip, made) or self.parents(tip) != self.parents(made)
                    or any(self.blob_at(tip, rel) != blob for rel, blob in changes)):
                return made
        except (KeyError, ValueError, pygit2.GitError):
            return made
        return tip

    def _hook(self, name: str, args: list[str], env: dict[str, str], claim: int | None,
              changes: Sequence[tuple[str, str | None]], check: bool = True) -> None:
        """Run git hook `name` as `git commit` does, if there is one; HookRefused if it fails (and `check`)."""
        path = self._hook_path(name)
        if path is None:
            return
        # Windows cannot run a shell script itself: git runs it (through its own shell) as `git commit` would
        argv = ["git", "hook", "run", name, "--", *args] if os.name == "nt" else [str(path), *args]
        with tempfile.TemporaryFile() as out:  # not a pipe: a job the hook leaves running (`git push &`) keeps
            def run(cmd: list[str]) -> int:  # a pipe open, and git does not wait for it either
                return subprocess.run(cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, pass_fds=() if claim is None else (claim,),
                                      check=False).returncode
            try:
                try:
                    code = run(argv)
                except OSError as exc:  # no #! line: git has `sh` run it
                    if exc.errno != errno.ENOEXEC:
                        raise
                    code = run(["sh", *argv])
                out.seek(0)
                text = out.read().decode("utf-8", "replace").strip() or f"exit {code}"
            except OSError as exc:
                code, text = 1, f"cannot run {path}: {exc.strerror or exc}"
        if code < 0:  # killed by a signal (the machine shutting down, the OOM killer): not a verdict
            raise CommitPending(f"the {name} hook was killed by signal {-code}")
        if code and check:
            raise HookRefused(f"the {name} hook refused the edit of {', '.join(r for r, _ in changes)}: "
                              f"{text[-2000:]}")

    def _git(self, args: list[str], env: dict[str, str], claim: int | None, changes: Sequence[tuple[str, str | None]],
             stdin: bytes | None = None, out: Path | None = None) -> bytes:
        """Run `git <args>`; its output (also written to `out`). Signing refused: HookRefused; else
        CommitPending (a full disk, a lock): the edit waits."""
        proc = subprocess.run(["git", *args], cwd=self.root, env=env, input=stdin, capture_output=True,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              pass_fds=() if claim is None else (claim,), check=False)
        if proc.returncode != 0:
            text = proc.stderr.decode("utf-8", "replace").strip()
            if self.signs and args[0] == "commit-tree" and proc.returncode == 1:  # signing refused (else git dies: 128)
                raise HookRefused(f"git could not sign the commit of {', '.join(r for r, _ in changes)}: "
                                  f"{text[-2000:]}")
            raise CommitPending(text.splitlines()[-1] if text else f"git {args[0]} ended with {proc.returncode}")
        if out is not None:
            out.write_bytes(proc.stdout)
        return proc.stdout

    def _index_follows(self, tip: str | None, made: str, changes: Sequence[tuple[str, str | None]]) -> None:
        """Make the real index agree with the branch for every path git's commit (and its hooks)
        changed beyond the ones memstore asked for: a pre-commit formatter's `git add`, a
        post-commit hook's own commit. A person's later commit then never undoes them."""
        old = self.repo[tip].peel(pygit2.Tree) if tip else None
        new = self.repo[made].peel(pygit2.Tree)
        deltas = self.repo.diff(old, new).deltas if old is not None else new.diff_to_tree(swap=True).deltas
        asked = set(changes)  # the changes memstore placed in the index already
        changed = [d for d in deltas if (d.new_file.path, None if d.status == DeltaStatus.DELETED
                                         else str(d.new_file.id)) not in asked]
        index = self._read_index()
        if not changed or index is None:
            return
        with self._scratch_index(index) as (real, tmp):
            for delta in changed:
                path, target = delta.new_file.path, delta.new_file
                entry = real[path] if path in real else None
                if delta.status == DeltaStatus.DELETED:
                    if entry is not None:
                        real.remove(path)
                elif entry is None or entry.id != target.id:
                    real.add(pygit2.IndexEntry(path, target.id, target.mode))
            real.write()
            self._place_index(tmp.read_bytes())


class _BranchMoved(Exception):
    """The branch is not where the commit was built on."""


class BranchChanged(CommitPending):
    """While memstore committed, a git command's commit changed the files being committed on the branch."""


class HookRefused(ConflictError):
    """A `pre-commit` or `commit-msg` hook (or signing) refused the commit."""


def unmerged_error(rel: str) -> ConflictError:
    return ConflictError(f"{rel} is unmerged (a merge, rebase or `git stash pop` left conflict markers in it): "
                         f"resolve it, `git add {rel}` and commit, then edit it again.")


def _link(src: Path, dst: Path) -> None:
    """Hard-link `src` as `dst` (FileExistsError if taken), making `dst`'s folder if a gc removed it."""
    try:
        os.link(src, dst)
    except FileNotFoundError:  # e.g. `git pack-refs` removed the ref's empty folder
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)


def _set_entry(index: pygit2.Index, rel: str, blob: str | None) -> None:
    """`rel` at `blob` (None: removed) in a libgit2 index; without file stats, git re-reads the file once."""
    if blob is not None:
        index.add(pygit2.IndexEntry(rel, pygit2.Oid(hex=blob), pygit2.GIT_FILEMODE_BLOB))
    elif rel in index:
        index.remove(rel)


def _claim(fd: int) -> int | None:
    """Claim a lock file for as long as `fd` stays open: a shared `flock` (Unix), which the system
    lets go when the process dies. Windows claims nothing, and closes `fd`: it could not remove
    the lock while the file is open."""
    if fcntl is None:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # a file system without flock claims nothing: its dead locks stay (a person
        fcntl.flock(fd, fcntl.LOCK_SH)  # removes them, as git asks), since no writer's claim can be told there
    return fd


def _same_file(path: Path, st: os.stat_result) -> bool:
    try:
        return os.path.samestat(os.stat(path), st)
    except OSError:
        return False


def _remove_if_same(path: Path, st: os.stat_result) -> bool:
    """Remove `path` if it is still the file `st` describes (a lock proven ours); whether it was."""
    if not _same_file(path, st):
        return False
    path.unlink(missing_ok=True)
    return True


def _xdg_git() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")) / "git"


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _stat_key(path: str) -> tuple[int, int] | None:
    """(mtime, size) of a file, None if there is none: tells that it changed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _git_time(now: float) -> str:
    """A moment as git writes it in commits and reflogs: seconds since 1970 and the local offset (+0100)."""
    offset = (time.localtime(now).tm_gmtoff or 0) // 60
    sign, offset = ("-", -offset) if offset < 0 else ("+", offset)
    return f"{int(now)} {sign}{offset // 60:02d}{offset % 60:02d}"


def _common_dir(git_dir: Path) -> Path:
    try:
        return (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    except FileNotFoundError:
        return git_dir


def _fsync_components(value: str | None) -> frozenset[str]:
    """What git's `core.fsync` asks to be flushed, in the parts memstore writes."""
    if not value:
        return frozenset()
    parts: set[str] = set()
    for item in value.split(","):
        item = item.strip()
        if item.startswith("-"):
            parts.discard(item[1:])
        elif item in ("all", "committed", "added"):
            parts |= {"loose-object", "reference", "index"}
        elif item in ("objects", "derived-metadata"):
            parts.add("loose-object")
        else:
            parts.add(item)
    return frozenset(parts)

