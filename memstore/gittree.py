"""Trees and big objects as memstore writes them: one entry patched in place, for 10,000 blocks.

Kept by hand because libgit2 cannot come near the goal "an edit among 10,000 blocks costs
at most 2x one among 10": its TreeBuilder rewrites and compresses the whole blocks tree
(0.4 MB) on every change (benchmarks/edits.py prints both designs side by side, "The
commit of one change"; see the README for the figures).
- `Objects.tree_with` changes one entry of a tree in its bytes (new or removed entries go
  through libgit2's TreeBuilder); big objects are stored loose without compression
  (`Objects.write`, `_stored_zlib`), which git reads like any other.
- Where a name sits in a big tree is remembered (`gitindex.Places`), and a big tree's
  checksums are carried from the version before (`gitindex.ResumableSha1`,
  `Objects._adler_after`): at 10,000 blocks each saves a search of, or a pass over, most
  of the tree. Measured side by side, each one off (benchmarks/edits.py, 10 vs 10,000
  blocks): 0.07-0.6 ms more per edit, and all off 2.33x where the goal is 2x.
Checked against git's own reading (`git fsck`, `git status`) in the tests.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
import zlib
from hashlib import sha1

import pygit2
from pygit2.enums import ObjectType

from . import gitindex
from .fsutil import replace_file, write_all

_BIG_OBJECT = 64 * 1024  # bytes: objects this big are stored uncompressed (compressing costs more than the disk)
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class Objects:
    """A repository's object store as memstore writes to it, with the last few trees' bytes kept.

    Shared by a process's threads (commits are serialised by the repository lock).
    """

    def __init__(self, repo: pygit2.Repository, objects_dir: str, flush: frozenset[str]) -> None:
        self.repo = repo
        self._objects = objects_dir  # a string, not a Path: 0.05 ms less per big object at 10,000 blocks
        self._flush = "loose-object" in flush
        self._sha1 = gitindex.ResumableSha1()
        self._places = gitindex.Places()
        self._adler: tuple[str, int] = ("", 0)  # (big object this process wrote last, its Adler-32)
        self._trees: dict[str, bytes] = {}  # tree id -> its bytes, the last few written or read
        self._trees_lock = threading.Lock()

    def blob_in(self, tree: str, rel: str) -> str | None:
        """The blob of regular file `rel` in `tree` (None: absent, or not a regular file)."""
        *folders, name = rel.split("/")
        for folder in folders:
            found = self.entry(tree, folder)
            if found is None or found[0] != b"40000":
                return None
            tree = found[1]
        found = self.entry(tree, name)
        # A regular file only: a committed symbolic link (a pull may bring one) is not content.
        return found[1] if found is not None and found[0] in (b"100644", b"100755") else None

    def tree_with(self, tree: str | None, path: str, blob: str | None) -> str:
        """The id of tree `tree` with `path` set to `blob` (None: removed), writing the changed trees.

        An entry that only points elsewhere is patched in the tree's bytes; an entry added
        or removed goes through libgit2's TreeBuilder (which keeps git's order).
        """
        head, _, rest = path.partition("/")
        raw = self._raw(tree) if tree else b""
        found = self.entry(tree, head) if tree else None
        if rest:
            sub = self.tree_with(found[1] if found and found[0] == b"40000" else None, rest, blob)
            entry = None if sub == _EMPTY_TREE else (sub, b"40000")
        else:
            entry = (blob, b"100644") if blob else None
        if found is not None and entry is not None and found[0] == entry[1]:
            at = found[2]
            return self.write(b"tree", raw[:at] + bytes.fromhex(entry[0]) + raw[at + 20 :], (tree, at))
        builder = self.repo.TreeBuilder(self.repo[tree]) if tree else self.repo.TreeBuilder()
        if entry is None:
            if found is not None:
                builder.remove(head)
        else:
            builder.insert(head, pygit2.Oid(hex=entry[0]), int(entry[1], 8))
        return str(builder.write())

    def entry(self, tree: str, name: str) -> tuple[bytes, str, int] | None:
        """Entry `name` of `tree`: (mode, id, where the id starts in its bytes); see `_tree_entry`."""
        raw = self._raw(tree)
        return _tree_entry(raw, name.encode(), self._places if len(raw) >= _BIG_OBJECT else None)

    def _raw(self, tree: str) -> bytes:
        """A tree's bytes; the last few are kept (the blocks tree of 10,000 blocks is ~400 KB)."""
        raw = self._trees.get(tree)
        if raw is None:
            raw = self.repo[tree].read_raw()
            self._keep(tree, raw)
        return raw

    def _keep(self, tree: str, raw: bytes) -> None:
        with self._trees_lock:  # threads of one server share this cache
            while len(self._trees) >= 8:
                self._trees.pop(next(iter(self._trees)))
            self._trees[tree] = raw

    def write(self, kind: bytes, body: bytes, patched: tuple[str, int] | None = None) -> str:
        """Store an object loose; big ones uncompressed (still a zlib stream, as git reads it).

        `patched`: (tree, offset) when `body` is that tree's bytes changed from that offset on.
        """
        if len(body) < _BIG_OBJECT:
            kind_id = ObjectType.TREE if kind == b"tree" else ObjectType.BLOB
            for attempt in range(5):
                try:
                    oid = str(self.repo.odb.write(kind_id, body))
                    self._remember(kind, oid, body)
                    return oid
                except (OSError, pygit2.GitError):  # `git gc` removed the empty object folder meanwhile
                    if attempt == 4:
                        raise
            raise AssertionError("unreachable")
        data = b"%s %d\0" % (kind, len(body)) + body
        head = len(data) - len(body)
        if patched is None:
            oid, adler = sha1(data).hexdigest(), zlib.adler32(data)
        else:
            oid = self._sha1.digest(data, bytes.fromhex(patched[0]), head + patched[1]).hex()
            adler = self._adler_after(patched[0], data, head + patched[1])
        folder = os.path.join(self._objects, oid[:2])  # strings, not Paths: 0.05 ms less at 10,000 blocks
        path = os.path.join(folder, oid[2:])
        if os.path.exists(path):
            return oid
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        tmp = os.path.join(folder, f"tmp_obj_{os.getpid()}_{time.monotonic_ns()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        try:
            try:
                for part in _stored_zlib(data, adler):
                    write_all(fd, part)
                if self._flush:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o444)  # read-only, as git keeps objects (only now: Windows cannot remove such a file)
            replace_file(tmp, path)
        except BaseException:  # a full disk: no half-written object left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._adler = (oid, adler)
        self._remember(kind, oid, body)
        return oid

    def _adler_after(self, tree: str, data: bytes, at: int) -> int:
        """The Adler-32 of `data`: tree `tree`'s object with the 20 bytes at `at` changed.

        From the old tree's Adler-32 when this process wrote it: the checksum is a weighted
        sum of the bytes, so changing 20 of them changes it by 20 terms, where computing it
        over a 0.4 MB tree costs 0.1 ms of an edit among 10,000 blocks.
        """
        known, adler = self._adler
        old = self._trees.get(tree)
        if known != tree or old is None:
            return zlib.adler32(data)
        body_at = at - (len(data) - len(old))
        a, b, n = adler & 0xFFFF, adler >> 16, len(data)
        for i in range(20):
            d = data[at + i] - old[body_at + i]
            a, b = (a + d) % 65521, (b + (n - at - i) * d) % 65521
        return b << 16 | a

    def _remember(self, kind: bytes, oid: str, body: bytes) -> None:
        if kind == b"tree":
            self._keep(oid, body)


_MODES = (b"100644", b"100755", b"120000", b"160000", b"40000")


def _tree_entry(raw: bytes, name: bytes, places: gitindex.Places | None = None) -> tuple[bytes, str, int] | None:
    """(mode, id, where the id starts) of entry `name` in a tree's bytes, without parsing them all.

    An entry is `mode SP name NUL id20`; a match counts only where an entry starts (the
    tree's start, or right after the previous entry's NUL and 20-byte id). `places`: where
    names were in earlier versions of a big tree, checked before searching.
    """
    key = b" " + name + b"\0"
    at = places.get(name) if places is not None else -1
    found = _entry_at(raw, at, key) if at >= 0 and raw.startswith(key, at) else None
    if found is not None:
        return found
    if places is not None:
        places.searched(lambda: _tree_places(raw))
    at = raw.find(key)
    while at >= 0:
        found = _entry_at(raw, at, key)
        if found is not None:
            return found
        at = raw.find(key, at + 1)
    return None


def _entry_at(raw: bytes, at: int, key: bytes) -> tuple[bytes, str, int] | None:
    """The entry whose ` name NUL` (`key`) is at `at`, if an entry starts there."""
    for mode in _MODES:
        start = at - len(mode)
        if start >= 0 and raw[start:at] == mode and (start == 0 or (start >= 21 and raw[start - 21] == 0)):
            ident = at + len(key)
            return mode, raw[ident : ident + 20].hex(), ident
    return None


def _tree_places(raw: bytes) -> dict[bytes, int]:
    """Where each entry's ` name NUL` starts in a tree's bytes."""
    places, pos = {}, 0
    while pos < len(raw):
        space = raw.index(b" ", pos)
        end = raw.index(b"\0", space)
        places[raw[space + 1 : end]] = space
        pos = end + 21
    return places


def _stored_zlib(data: bytes, adler: int) -> list[bytes | memoryview]:
    """`data` as a zlib stream of stored (uncompressed) deflate blocks, whose Adler-32 is `adler`.

    What `zlib.compress(data, 0)` makes, without its pass over the data (0.34 ms for the
    0.4 MB blocks tree of 10,000 blocks, a third of what such an edit costs beyond one
    among 10): a two-byte header, blocks of at most 65,535 bytes each behind a five-byte
    header (RFC 1950, 1951), and the checksum. Checked by git's own reading (`git fsck`).
    """
    view, parts = memoryview(data), [b"\x78\x01"]
    for pos in range(0, max(len(data), 1), 0xFFFF):
        size = min(0xFFFF, len(data) - pos)
        parts += (struct.pack("<BHH", pos + size >= len(data), size, size ^ 0xFFFF), view[pos : pos + size])
    parts.append(struct.pack(">I", adler))
    return parts
