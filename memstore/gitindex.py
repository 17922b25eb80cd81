"""Patching git's index file (versions 2 and 3) for the path a commit changed.

Kept by hand because libgit2's index write cannot meet the 10,000-block goal (it took
7.9 ms there against 2 ms for a whole edit among 10 blocks; benchmarks/edits.py): a patch
of one entry costs a checksum over the file from that entry on. Entries carry the file's
stat, so `git status` stays clean without re-reading it. A patched index ends with git's
End of Index Entries extension (EOIE), so the next patch, in any process, finds where the
entries end without walking them. Tested against git's own reading.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from typing import Any


class IndexFormatUnsupported(Exception):
    """An index this module does not patch (version 4, split or sparse index)."""


class RequiredExtension(IndexFormatUnsupported):
    """An index extension git requires readers to know (`link`: a split index; `sdir`: a sparse one)."""


_EOIE_SIZE = 8 + 4 + 20  # bytes: signature, size, then the entries' end and a SHA-1


def entries_end(data: bytes | bytearray) -> int | None:
    """Where the entries end, as the index's EOIE extension says (None: no valid one).

    Valid as git checks it: the SHA-1 of the extensions' signatures and sizes between the
    entries and the EOIE matches, and they lead exactly to it.
    """
    at = len(data) - 20 - _EOIE_SIZE
    if at < 12 or data[at : at + 8] != b"EOIE\0\0\0\x18":
        return None
    (end,) = struct.unpack_from(">I", data, at + 8)
    headers, pos = hashlib.sha1(), end
    while 12 <= pos < at:
        headers.update(data[pos : pos + 8])
        pos += 8 + struct.unpack_from(">I", data, pos + 4)[0]
    return end if pos == at and headers.digest() == data[at + 12 : at + 32] else None


def _eoie(end: int) -> bytes:
    """The EOIE extension of an index whose entries end at `end` and that has no other extension."""
    return b"EOIE" + struct.pack(">II", 24, end) + hashlib.sha1(b"").digest()


def _index_entry(path: bytes, blob: str, st: os.stat_result | None) -> bytes:
    """An index entry; without `st` (the file on disk may not hold `blob`) git re-reads the file."""
    m32 = 0xFFFFFFFF
    if st is None:
        fields = struct.pack(">10I", 0, 0, 0, 0, 0, 0, 0o100644, 0, 0, 0)
    else:
        fields = struct.pack(
            ">10I",
            int(st.st_ctime) & m32, st.st_ctime_ns % 1_000_000_000,
            int(st.st_mtime) & m32, st.st_mtime_ns % 1_000_000_000,
            st.st_dev & m32, st.st_ino & m32, 0o100644, st.st_uid & m32, st.st_gid & m32, st.st_size & m32,
        )
    head = fields + bytes.fromhex(blob) + struct.pack(">H", min(len(path), 0xFFF)) + path
    return head + b"\0" * (8 - len(head) % 8)


def _walk_index(data: bytes, version: int, count: int) -> tuple[list[tuple[bytes, int, int, int]], int]:
    """[(path, start, where its name starts, end)] of every entry, and where the entries end."""
    entries, pos = [], 12
    for _ in range(count):
        (flags,) = struct.unpack_from(">H", data, pos + 60)
        head = 64 if version >= 3 and flags & 0x4000 else 62
        name_end = data.index(b"\0", pos + head)
        end = pos + ((name_end - pos) // 8 + 1) * 8
        entries.append((data[pos + head : name_end], pos, pos + head, end))
        pos = end
    return entries, pos


class Places:
    """Where names were last seen in a big file that is patched in place (the index, the blocks tree).

    Kept for the goal "an edit among 10,000 blocks costs at most 2x one among 10": searching
    the 0.8 MB index of 10,000 blocks for a path costs 0.17 ms, and the 0.4 MB blocks tree
    0.05-0.1 ms, a fifth of what such an edit costs beyond one among 10. A patch in place
    moves no entry, so the place a name had in an earlier version, checked first, is
    usually still right. The places are learned all at once by walking every entry
    (3.5 ms), once the searches they would have saved cost about as much.
    """

    WALK_AFTER = 16  # searches

    def __init__(self) -> None:
        self._at: dict[bytes, int] = {}
        self._searches = 0

    def get(self, name: bytes) -> int:
        """Where `name` was (-1: not known); the caller checks it."""
        return self._at.get(name, -1)

    def searched(self, walk: Callable[[], dict[bytes, int]]) -> None:
        """Count a search the places did not save; learn them all once such searches add up."""
        self._searches += 1
        if self._searches >= self.WALK_AFTER:
            try:
                self._at = walk()
            except (ValueError, struct.error):  # entries git would refuse too: searches find what there is
                self._at = {}
            self._searches = 0


def _find_entry(data: bytes, path: bytes, near: int = 0) -> tuple[int, int] | None:
    """Fast path: locate a plain stage-0 entry for `path` by its flags+name bytes (first looked for at `near`)."""
    key = struct.pack(">H", len(path)) + path + b"\0"
    at = data.find(key, near - 2, near - 2 + len(key)) if near > 12 else -1
    if at < 0:
        at = data.find(key, 12)
    if at < 0:
        return None
    start = at - 60
    (mode,) = struct.unpack_from(">I", data, start + 24)
    if start < 12 or mode >> 12 not in (0o10, 0o12, 0o16) or (start > 12 and data[start - 1] != 0):
        return None
    return start, start + ((62 + len(path)) // 8 + 1) * 8


class ResumableSha1:
    """SHA-1 of content that is rewritten again and again with most of it unchanged.

    Keeps the hash state at every 64 KiB of the content hashed last, so the next version,
    equal to it up to some offset, is hashed from the chunk where it changes. Kept because
    the goal "an edit among 10,000 blocks costs at most 2x one among 10" needs it: hashing
    the 0.8 MB index and the 0.4 MB blocks tree in full costs 0.8 ms of such an edit, this
    about half that (benchmarks/edits.py, edit latency by workspace size).
    """

    STEP = 1 << 16

    def __init__(self) -> None:
        self._last = b""  # the digest of the content the states belong to
        self._states: list[Any] = []  # _states[i]: SHA-1 state after i * STEP bytes

    def digest(self, data: bytes | bytearray | memoryview, like: bytes, unchanged: int) -> bytes:
        """SHA-1 of `data`, whose first `unchanged` bytes are those of the content with digest `like`."""
        keep = min(unchanged // self.STEP, len(self._states) - 1) if like == self._last and self._states else 0
        states = self._states[: keep + 1] if keep else [hashlib.sha1()]
        state, view = states[-1].copy(), memoryview(data)
        for pos in range(keep * self.STEP, len(view), self.STEP):
            state.update(view[pos : pos + self.STEP])
            states.append(state.copy())
        self._last, self._states = state.digest(), states
        return self._last


def patch_index(data: bytearray, path: bytes, blob: str | None, st: os.stat_result | None,
                sha1: ResumableSha1 | None = None, near: int = 0) -> bytearray:
    """Index bytes with the entry of `path` replaced, added or removed (`blob` None), in place when it can.

    `st`: the stat of the file on disk when it is known to hold `blob`. The entries' end,
    when the index's EOIE gives it, saves walking every entry: with 10,000 files that walk
    costs more than the rest of an edit. Optional extensions (cache tree, untracked cache,
    …) are dropped, which git allows and rebuilds; a required one (split or sparse index)
    raises IndexFormatUnsupported. `near`: where the path's name was in an earlier version
    of these bytes (`Places`), checked before it is used.
    """
    old_checksum = bytes(data[-20:])
    out, first_changed = _patch_entry(data, path, blob, st, near)
    body = memoryview(out)[:-20]
    out[-20:] = (sha1.digest(body, old_checksum, first_changed) if sha1 is not None
                 else hashlib.sha1(body).digest())
    return out


def unmerged(data: bytes, path: bytes, places: Places | None = None) -> bool:
    """Whether the index holds conflict stages (1-3) for `path`.

    git sorts entries by path, then stage, so only the first entry of `path` and the one
    right after it need looking at (not the rest of a 1 MB index). `places`: where names
    were in earlier versions of this index, checked before searching.
    """
    if data[:4] != b"DIRC":
        return False
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3):
        raise IndexFormatUnsupported(f"index version {version}")
    key, length = path + b"\0", min(len(path), 0xFFF)
    at = places.get(path) if places is not None else -1
    if at < 12 or not data.startswith(key, at) or _entry_named(data, at, version, length) is None:
        if places is not None:
            places.searched(lambda: _first_places(data, version, count))
        at = data.find(key, 12)
    while at >= 0:
        found = _entry_named(data, at, version, length)
        if found is not None:
            stage, end = found
            if stage:
                return True
            nxt = end + (64 if version == 3 and _u16(data, end + 60) & 0x4000 else 62)
            following = _entry_named(data, nxt, version, length) if data.startswith(key, nxt) else None
            return following is not None and following[0] > 0
        at = data.find(key, at + 1)
    return False


def _first_places(data: bytes, version: int, count: int) -> dict[bytes, int]:
    """Where each path's first entry's name starts."""
    places: dict[bytes, int] = {}
    for path, _, name_at, _ in _walk_index(data, version, count)[0]:
        places.setdefault(bytes(path), name_at)
    return places


def _u16(data: bytes, at: int) -> int:
    return struct.unpack_from(">H", data, at)[0] if 0 <= at <= len(data) - 2 else 0


def _entry_named(data: bytes, at: int, version: int, length: int) -> tuple[int, int] | None:
    """(stage, end) of the entry whose name starts at `at`; None if no entry's name starts there."""
    flags, head = _u16(data, at - 2), 62
    if version == 3 and flags & 0xFFF != length:  # an extended entry: flags, then extended flags
        flags, head = _u16(data, at - 4), 64
        if not flags & 0x4000:
            return None
    if flags & 0xFFF != length:
        return None
    start = at - head
    return (flags >> 12) & 3, start + ((head + length) // 8 + 1) * 8


def _patch_entry(data: bytearray, path: bytes, blob: str | None, st: os.stat_result | None,
                 near: int) -> tuple[bytearray, int]:
    """Replace, add or remove one entry, ending with the EOIE; (bytes, first byte changed).

    The checksum is left for the caller.
    """
    if data[:4] != b"DIRC":
        raise IndexFormatUnsupported("not an index")
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3):
        raise IndexFormatUnsupported(f"index version {version}")
    new_entry = _index_entry(path, blob, st) if blob else b""
    end_at = entries_end(data)
    found = _find_entry(data, path, near) if blob and end_at is not None else None
    if found is not None and end_at is not None and found[1] <= end_at:  # an entry, not extension data
        start, end = found
    else:
        entries, end_at = _walk_index(data, version, count)
        match = next(((s, e) for p, s, _, e in entries if p == path), None)
        if match is not None:
            start, end = match
        else:
            start = next((s for p, s, _, _ in entries if p > path), end_at)
            end = start
    _check_extensions(data, end_at)
    if len(new_entry) == end - start:  # the common case: one entry changes in place
        tail = _eoie(end_at)
        out = data if data[end_at:-20] == tail else data[:end_at] + tail + bytes(20)
        out[start:end] = new_entry
        return out, start
    delta = (1 if new_entry else 0) - (1 if end > start else 0)
    new_end = end_at + len(new_entry) - (end - start)
    out = bytearray(data[:4] + struct.pack(">II", version, count + delta) + data[12:start] + new_entry
                    + data[end:end_at] + _eoie(new_end) + bytes(20))
    return out, 0


def _check_extensions(data: bytes, pos: int) -> None:
    end = len(data) - 20
    while pos + 8 <= end:
        sig = data[pos : pos + 4]
        (size,) = struct.unpack_from(">I", data, pos + 4)
        if not sig[:1].isupper():
            raise RequiredExtension(sig.decode("ascii", "replace"))
        pos += 8 + size
