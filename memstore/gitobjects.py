"""Git plumbing on the edit path, in git's own on-disk formats.

GitPython's index path costs several milliseconds an edit, mostly in pure-Python index
and tree handling. An edit here writes its loose objects directly, rebuilds only the trees
on the changed path (parsed trees are cached by id), publishes the commit with a
compare-and-swap of the branch ref under git's own `.lock` protocol, and patches the one
index entry so `git status` stays truthful. Reads of packed objects go through GitPython.

What is flushed to disk follows git's own `core.fsync` setting (see `fsync_components`):
by default git flushes none of loose objects, refs or the index, and neither does memstore.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

from .errors import WorkspaceError
from .fastio import append_file, read_file, remove_later, write_all
from .gitindex import Checkpoints, IndexFormatUnsupported, patch_index
from .gitpack import PackReader, write_pack

log = logging.getLogger(__name__)

TREE_MODE = b"40000"
FILE_MODE = b"100644"
_BIG_OBJECT = 64 * 1024  # larger loose objects are stored uncompressed; `git gc` packs them
_LOCK_WAIT = 2.0  # seconds to wait for a git command's own .lock file
_STALE_AGE = 0.5  # a .lock left by a dead memstore writer is removed once this old
_KEEP_NOTE = b"memstore: objects on their way to the branch\n"  # what our packs' `.keep` files say
# The `core.fsync` words that name what memstore writes: its loose objects (and with them the
# block files and the small per-batch packs, which stand in for the loose trees and commits a
# `git commit` would write), the branch ref, the index. Git's own packs and commit-graph are git's.
_FSYNC_WORDS: dict[str, frozenset[str]] = {
    "loose-object": frozenset({"loose-object"}),
    "objects": frozenset({"loose-object"}),
    "reference": frozenset({"reference"}),
    "index": frozenset({"index"}),
    "committed": frozenset({"loose-object", "reference"}),
    "added": frozenset({"loose-object", "reference", "index"}),
    "all": frozenset({"loose-object", "reference", "index"}),
}


def blob_id(content: bytes) -> str:
    """The id git gives a file with this content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def fsync_components(value: str | None, object_files: bool = False) -> frozenset[str]:
    """What git's `core.fsync` value (and the older `core.fsyncObjectFiles`) says to flush.

    As in git: the list adds to the default (which has none of these), `-x` removes x,
    `none` starts again from nothing; the stricter of the two settings wins.
    """
    found: set[str] = set()
    for word in (value or "").split(","):
        word = word.strip().lower()
        if word == "none":
            found.clear()
        elif word.startswith("-"):
            found -= _FSYNC_WORDS.get(word[1:], frozenset())
        else:
            found |= _FSYNC_WORDS.get(word, frozenset())
    if object_files:
        found.add("loose-object")
    return frozenset(found)


def _configured_fsync(repo: git.Repo) -> frozenset[str]:
    reader = repo.config_reader()
    value = reader.get_value("core", "fsync", "")
    try:
        legacy = bool(reader.get_value("core", "fsyncObjectFiles", False))
    except ValueError:
        legacy = False
    return fsync_components(str(value), legacy)


class RefMovedError(Exception):
    """The branch moved between reading it and publishing (a git command ran meanwhile)."""


@dataclass(frozen=True)
class Ident:
    name: str
    email: str

    def line(self, when: float, tz_offset: int) -> str:
        sign = "+" if tz_offset >= 0 else "-"
        hours, minutes = divmod(abs(tz_offset) // 60, 60)
        name = "".join(c for c in self.name if c not in "<>\n\r") or "unknown"
        email = "".join(c for c in self.email if c not in "<>\n\r ")
        return f"{name} <{email}> {int(when)} {sign}{hours:02d}{minutes:02d}"


def local_tz_offset(when: float) -> int:
    """Seconds east of UTC at `when`."""
    return time.localtime(when).tm_gmtoff or 0


class Tree:
    """A parsed tree: raw bytes plus where each entry's mode and id sit in them."""

    __slots__ = ("raw", "entries")

    def __init__(self, raw: bytes, entries: dict[bytes, tuple[bytes, int]] | None = None) -> None:
        self.raw = raw
        self.entries = entries if entries is not None else _parse_tree(raw)

    def get(self, name: bytes) -> tuple[bytes, str] | None:
        found = self.entries.get(name)
        if found is None:
            return None
        mode, at = found
        return mode, self.raw[at : at + 20].hex()

    def with_entry(self, name: bytes, entry: tuple[bytes, str] | None) -> Tree:
        """A copy with `name` set to (mode, id), or removed when `entry` is None."""
        old = self.entries.get(name)
        if entry is not None and old is not None and old[0] == entry[0]:
            at = old[1]
            with memoryview(self.raw) as raw:
                return Tree(b"".join((raw[:at], bytes.fromhex(entry[1]), raw[at + 20 :])), self.entries)
        items = {n: (m, self.raw[a : a + 20]) for n, (m, a) in self.entries.items()}
        if entry is None:
            items.pop(name, None)
        else:
            items[name] = (entry[0], bytes.fromhex(entry[1]))
        order = sorted(items, key=lambda n: n + b"/" if items[n][0] == TREE_MODE else n)
        return Tree(b"".join(items[n][0] + b" " + n + b"\0" + items[n][1] for n in order))


def _parse_tree(raw: bytes) -> dict[bytes, tuple[bytes, int]]:
    entries: dict[bytes, tuple[bytes, int]] = {}
    pos, end = 0, len(raw)
    while pos < end:
        space = raw.index(b" ", pos)
        nul = raw.index(b"\0", space)
        entries[raw[space + 1 : nul]] = (raw[pos:space], nul + 1)
        pos = nul + 21
    return entries


class GitStore:
    """Object, ref and index access for one repository; safe to share between threads."""

    def __init__(self, repo: git.Repo) -> None:
        self.repo = repo
        self.git_dir = Path(repo.git_dir)
        self.common_dir = Path(repo.common_dir)
        self.objects = self.common_dir / "objects"
        self._trees: OrderedDict[str, Tree] = OrderedDict()
        self._commit_trees: OrderedDict[str, str] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._odb_lock = threading.Lock()
        # the index we last wrote: (its shape on disk, its bytes, checksum checkpoints for them)
        self._index: tuple[tuple[int, int, int], bytearray, Checkpoints] | None = None
        # Hot paths build file names as strings: pathlib costs more than the syscalls here.
        self._objects_dir = str(self.objects)
        self._head_file = str(self.git_dir / "HEAD")
        self._common = str(self.common_dir)
        self.flush = _configured_fsync(repo)  # what to fsync before a rename makes it visible
        self._pack_dir = f"{self._objects_dir}/pack"
        self.packs = PackReader(self._pack_dir)
        self._packing = threading.local()  # per thread: objects held for the pack being gathered
        self.on_pack: Callable[[str], None] | None = None  # told each new pack's name (pack-<checksum>)
        self.trash_dir: str | None = None  # where replaced files wait to be freed (see `replace_later_free`)
        self.keep_spare: str | None = None  # a file kept to become each new pack's `.keep` (see `_keep`)
        self._replaced = threading.local()

    # -- objects ---------------------------------------------------------------------

    def read_object(self, sha: str) -> tuple[bytes, bytes]:
        """(type, body) of an object, loose or packed."""
        gathering: dict[str, tuple[bytes, bytes]] | None = getattr(self._packing, "objects", None)
        if gathering is not None and sha in gathering:
            return gathering[sha]
        try:
            raw = zlib.decompress(read_file(f"{self._objects_dir}/{sha[:2]}/{sha[2:]}"))
        except FileNotFoundError:
            found = self.packs.read(sha)
            if found is not None:
                return found
            with self._odb_lock:
                try:
                    stream = self.repo.odb.stream(bytes.fromhex(sha))
                except (ValueError, git.BadObject, git.BadName) as exc:
                    raise WorkspaceError(f"git object {sha} is missing: {exc}") from None
                return stream.type, stream.read()
        header, _, body = raw.partition(b"\0")
        return header.split(b" ", 1)[0], body

    @contextmanager
    def packing(self) -> Iterator[None]:
        """Objects this thread writes meanwhile go into one pack, written when the block ends.

        Nothing may refer to them from outside (a ref) before then; if the block raises,
        they are dropped.
        """
        if getattr(self._packing, "objects", None) is not None:
            yield None  # already gathering: the outer block writes the pack
            return
        objects: dict[str, tuple[bytes, bytes]] = {}
        self._packing.objects = objects
        try:
            yield None
        finally:
            self._packing.objects = None
        if objects:
            self._write_pack(objects)

    def _write_pack(self, objects: dict[str, tuple[bytes, bytes]]) -> None:
        written = write_pack(self._pack_dir, objects, "loose-object" in self.flush, self._keep)
        if written is None:  # too big for one small pack: loose, as usual
            for kind, body in objects.values():
                self.write_object(kind, body)
            return
        stem, built = written
        self.packs.add(stem, built.offsets)
        if self.on_pack is not None:
            self.on_pack(os.path.basename(stem))

    def _keep(self, keep_file: str) -> None:
        """Make a pack's `.keep` file: the spare one if there is one (no file to create).

        Callers hold the repository lock. With no spare, the last holder died holding it: the
        `.keep` files it left (ours say so inside; git's own are left alone) go first.
        """
        kept: list[str] = self._packing.__dict__.setdefault("kept", [])
        if self.keep_spare is not None and not kept:
            try:
                os.rename(self.keep_spare, keep_file)
                kept.append(keep_file)
                return
            except FileNotFoundError:
                self._remove_left_keeps()
            except OSError:  # e.g. another file system
                pass
        fd = os.open(keep_file, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _KEEP_NOTE)
        finally:
            os.close(fd)
        kept.append(keep_file)

    def _remove_left_keeps(self) -> None:
        try:
            names = os.listdir(self._pack_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".keep"):
                path = f"{self._pack_dir}/{name}"
                try:
                    if read_file(path) == _KEEP_NOTE:
                        os.unlink(path)
                except (FileNotFoundError, IsADirectoryError):
                    pass

    def release_packs(self) -> None:
        """Let git repack this thread's packs now that the branch reaches (or never will) their objects.

        The first `.keep` becomes the spare again; callers hold the repository lock, so no
        one else uses the spare meanwhile.
        """
        kept: list[str] = self._packing.__dict__.pop("kept", [])
        for n, keep_file in enumerate(kept):
            try:
                if n == 0 and self.keep_spare is not None:
                    os.rename(keep_file, self.keep_spare)
                else:
                    os.unlink(keep_file)
            except FileNotFoundError:
                pass
            except OSError:
                remove_later([keep_file])

    def write_object(self, kind: bytes, body: bytes) -> str:
        header = b"%s %d\0" % (kind, len(body))
        digest = hashlib.sha1(header)
        digest.update(body)
        sha = digest.hexdigest()
        gathering: dict[str, tuple[bytes, bytes]] | None = getattr(self._packing, "objects", None)
        if gathering is not None and len(body) < _BIG_OBJECT:  # a big one (the tree of 10k blocks)
            gathering[sha] = (kind, body)  # would cost more to checksum twice than to create alone
            return sha
        folder = f"{self._objects_dir}/{sha[:2]}"
        final = f"{folder}/{sha[2:]}"
        if os.path.exists(final):
            try:
                os.utime(final)  # fresh again, as git does: `git prune` spares recent objects
            except OSError:
                pass
            return sha
        parts = _deflate(header, body)
        tmp = f"{folder}/tmp_obj_{secrets.token_hex(6)}"
        fd = _create_in(folder, tmp)
        try:
            _write_all(fd, parts)
            if "loose-object" in self.flush:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        return sha

    def tree(self, sha: str) -> Tree:
        with self._cache_lock:
            cached = self._trees.get(sha)
            if cached is not None:
                self._trees.move_to_end(sha)
                return cached
        kind, body = self.read_object(sha)
        if kind != b"tree":
            raise WorkspaceError(f"git object {sha} is a {kind.decode()}, not a tree")
        tree = Tree(body)
        self._remember_tree(sha, tree)
        return tree

    def _remember_tree(self, sha: str, tree: Tree) -> None:
        with self._cache_lock:
            self._trees[sha] = tree
            while len(self._trees) > 64:
                self._trees.popitem(last=False)

    def write_tree(self, tree: Tree) -> str:
        sha = self.write_object(b"tree", tree.raw)
        self._remember_tree(sha, tree)
        return sha

    def commit_tree(self, commit: str) -> str:
        with self._cache_lock:
            if commit in self._commit_trees:
                return self._commit_trees[commit]
        kind, body = self.read_object(commit)
        if kind != b"commit" or not body.startswith(b"tree "):
            raise WorkspaceError(f"git object {commit} is not a commit")
        tree = body[5:45].decode()
        self._remember_commit(commit, tree)
        return tree

    def _remember_commit(self, commit: str, tree: str) -> None:
        with self._cache_lock:
            self._commit_trees[commit] = tree
            while len(self._commit_trees) > 256:
                self._commit_trees.popitem(last=False)

    def commit_parents(self, commit: str) -> list[str]:
        """The parent commit ids of `commit`."""
        kind, body = self.read_object(commit)
        if kind != b"commit":
            raise WorkspaceError(f"git object {commit} is not a commit")
        header = body.split(b"\n\n", 1)[0]
        return [line[7:47].decode() for line in header.split(b"\n") if line.startswith(b"parent ")]

    def entry_at(self, tree_sha: str, path: str) -> tuple[bytes, str] | None:
        """(mode, id) of `path` in the tree `tree_sha`, or None."""
        parts = path.encode().split(b"/")
        for part in parts[:-1]:
            found = self.tree(tree_sha).get(part)
            if found is None or found[0] != TREE_MODE:
                return None
            tree_sha = found[1]
        return self.tree(tree_sha).get(parts[-1])

    def with_path(self, tree_sha: str | None, path: str, blob: str | None) -> str | None:
        """Write the trees for `tree_sha` with `path` set to `blob` (None: removed)."""
        return self._with_parts(tree_sha, path.encode().split(b"/"), blob)

    def _with_parts(self, tree_sha: str | None, parts: list[bytes], blob: str | None) -> str | None:
        tree = self.tree(tree_sha) if tree_sha else Tree(b"", {})
        name = parts[0]
        if len(parts) == 1:
            entry = (FILE_MODE, blob) if blob else None
        else:
            child = tree.get(name)
            child_sha = child[1] if child and child[0] == TREE_MODE else None
            new_child = self._with_parts(child_sha, parts[1:], blob)
            entry = (TREE_MODE, new_child) if new_child else None
        new = tree.with_entry(name, entry)
        return self.write_tree(new) if new.entries else None

    def make_commit(
        self, tree: str, parents: list[str], author: Ident, committer: Ident, message: str
    ) -> str:
        now = time.time()
        tz = local_tz_offset(now)
        lines = [f"tree {tree}"] + [f"parent {p}" for p in parents]
        lines += [f"author {author.line(now, tz)}", f"committer {committer.line(now, tz)}", "", message]
        body = "\n".join(lines)
        sha = self.write_object(b"commit", body.encode() if body.endswith("\n") else (body + "\n").encode())
        self._remember_commit(sha, tree)  # the next edit starts from it: no need to read it back
        return sha

    # -- refs ------------------------------------------------------------------------

    def head_ref(self) -> str:
        """The branch HEAD points at; refuses a detached HEAD."""
        content = read_file(self._head_file).decode("utf-8", "replace").strip()
        if not content.startswith("ref: "):
            raise WorkspaceError(
                "HEAD is detached: memstore commits to a branch. Run `git switch main` (or your branch) first."
            )
        return content[5:]

    def read_ref(self, ref: str) -> str | None:
        try:
            value = read_file(f"{self._common}/{ref}").decode("utf-8", "replace").strip()
            if value:
                return value
        except (FileNotFoundError, IsADirectoryError):
            pass
        try:
            packed = (self.common_dir / "packed-refs").read_text()
        except FileNotFoundError:
            return None
        suffix = f" {ref}"
        for line in packed.splitlines():
            if line.endswith(suffix) and not line.startswith(("#", "^")):
                return line.split(" ", 1)[0]
        return None

    def update_ref(
        self, ref: str, new: str, old: str | None, who: Ident, message: str, *, recover: bool = False,
        steps: list[tuple[str, str]] | None = None,
    ) -> None:
        """Point `ref` at `new` if it still points at `old` (git's lockfile protocol).

        `steps`: the commits from `old` to `new` with their reflog messages, when one update
        publishes a chain; the reflog gets a line for each, as if committed one by one.
        """
        lock = self.common_dir / f"{ref}.lock"
        fd = self.take_git_lock(lock, recover=recover)
        if fd is None:
            raise WorkspaceError(
                f"{lock} exists: another git command is updating the branch. "
                "If no git command is running, delete that file."
            )
        try:
            if self.read_ref(ref) != old:
                raise RefMovedError(ref)
            os.write(fd, f"{new}\n".encode())
            if "reference" in self.flush:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            lock.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.replace_later_free(str(lock), f"{self._common}/{ref}")
        now = time.time()
        who_line = who.line(now, local_tz_offset(now))
        lines, prev = [], old or "0" * 40
        for commit, text in steps or [(new, message)]:
            lines.append(f"{prev} {commit} {who_line}\t{text}\n")
            prev = commit
        line = "".join(lines).encode()
        for log_path in (f"{self._common}/logs/{ref}", f"{self.git_dir}/logs/HEAD"):
            try:
                append_file(log_path, line)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(log_path), exist_ok=True)
                append_file(log_path, line)

    def take_git_lock(self, lock: Path, *, recover: bool) -> int | None:
        """Create git's `X.lock` file; None if a git command kept it past the wait.

        `recover`: the last memstore writer died mid-commit, so a `.lock` older than a
        moment is its leftover and is removed.
        """
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                return os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            except FileNotFoundError:  # e.g. `git pack-refs` removed the ref's empty folder
                lock.parent.mkdir(parents=True, exist_ok=True)
                continue
            if recover and _age(lock) > _STALE_AGE:
                log.warning("removing %s left by a writer that died", lock)
                lock.unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)

    # -- index -----------------------------------------------------------------------

    def set_index_entries(self, changes: dict[str, tuple[str | None, os.stat_result | None]], *,
                          recover: bool) -> None:
        """Make the index entries of these paths match the commits just made.

        Each path maps to (blob or None to remove it, the stat of the file on disk if it holds
        that blob; None makes git re-read the file).
        """
        lock = self.git_dir / "index.lock"
        fd = self.take_git_lock(lock, recover=recover)
        if fd is None:
            log.warning("index is locked by another git command; `git status` may show %s as changed",
                        ", ".join(changes))
            return
        cached, self._index = self._index, None
        try:
            index = self.git_dir / "index"
            checkpoints: Checkpoints = []
            if cached is not None and cached[0] == _shape(os.stat(index)):
                data, known_end, checkpoints = cached[1], len(cached[1]) - 20, cached[2]  # ours: no extensions
            else:
                data, known_end = bytearray(index.read_bytes()), None
            new = patch_index(data, [(path.encode(), blob, st) for path, (blob, st) in changes.items()], known_end,
                              checkpoints)
        except (FileNotFoundError, IndexFormatUnsupported):
            os.close(fd)
            lock.unlink(missing_ok=True)
            for path, (blob, _) in changes.items():
                self._index_via_git(path, blob)
            return
        except BaseException:
            os.close(fd)
            lock.unlink(missing_ok=True)
            raise
        try:
            os.write(fd, new)
            if "index" in self.flush:
                os.fsync(fd)
            shape = _shape(os.fstat(fd))
        finally:
            os.close(fd)
        self.replace_later_free(str(lock), f"{self.git_dir}/index")
        self._index = (shape, new, checkpoints)

    def replace_later_free(self, src: str, dst: str) -> None:
        """Rename `src` over `dst`, keeping the old `dst` alive under `trash_dir` for now.

        Freeing a file is the dearest step of a rename on some disks (a millisecond and more,
        here). Kept, it is freed in the background after the lock that serialises the rename
        is let go (`free_replaced`), so that no committer waits for it.
        """
        if self.trash_dir is not None:
            keep = f"{self.trash_dir}/{secrets.token_hex(8)}"
            try:
                os.link(dst, keep)
                self._replaced.__dict__.setdefault("paths", []).append(keep)
            except OSError:  # no old file, or another file system: free it now
                pass
        os.replace(src, dst)

    def free_replaced(self) -> None:
        """Free the files this thread's renames replaced (see `replace_later_free`), in the background."""
        remove_later(self._replaced.__dict__.pop("paths", []))

    def _index_via_git(self, path: str, blob: str | None) -> None:
        """Let git update an index we do not patch; rebuild a missing one from HEAD."""
        if not (self.git_dir / "index").exists():
            self.repo.git.read_tree("HEAD")
        elif blob:
            self.repo.git.update_index("--add", "--cacheinfo", f"100644,{blob},{path}")
        else:
            self.repo.git.update_index("--force-remove", "--", path)


def _create_in(folder: str, path: str) -> int:
    """Create `path`, making its folder if needed: `git gc` removes empty object folders at any time."""
    for _ in range(100):
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
    raise WorkspaceError(f"cannot create {path}: its folder keeps disappearing")


def _deflate(header: bytes, body: bytes) -> list[bytes | memoryview]:
    """A loose object's zlib stream, in pieces: fast compression, or stored blocks when big.

    Big trees (thousands of blocks) change on every edit; compressing them costs
    milliseconds, and `git gc` packs them with deltas later anyway.
    """
    if len(body) < _BIG_OBJECT:
        return [zlib.compress(header + body, 1)]
    view = memoryview(body)
    parts: list[bytes | memoryview] = [b"\x78\x01"]  # zlib header: deflate, 32K window
    first = 0xFFFF - len(header)  # the first stored block carries the object header too
    chunks = [view[:first]] + [view[at : at + 0xFFFF] for at in range(first, len(body), 0xFFFF)]
    for n, chunk in enumerate(chunks):
        size = len(chunk) + (len(header) if n == 0 else 0)
        parts.append(struct.pack("<BHH", n == len(chunks) - 1, size, size ^ 0xFFFF))
        parts += [header, chunk] if n == 0 else [chunk]
    parts.append(struct.pack(">I", zlib.adler32(body, zlib.adler32(header))))
    return parts


def _write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    for part in parts:
        write_all(fd, part)


def _shape(st: os.stat_result) -> tuple[int, int, int]:
    """What identifies one version of a file for our caches."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
