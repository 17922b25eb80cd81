"""Small pack files: one per group-commit batch, instead of a loose file per object.

Creating a file is the dearest thing an edit does on some disks (0.1-0.6 ms of kernel time
each, here), and a batch of k edits makes 4k blobs, trees and commits. Written as one
pack — the pack and its index, in git's own formats (pack v2, index v2, whole objects, no
deltas) — a batch creates two files whatever its size (objects of 64 KiB and more stay
loose: see `GitStore.write_object`). Git reads such packs like any other; background
maintenance rolls them up (`git repack --geometric`).

`PackReader` finds objects in small packs written by any process, so the next commit,
often by another process, reads the trees it builds on without asking git.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import NamedTuple

from .fastio import write_all

_KINDS = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}
_NAMES = {code: kind for kind, code in _KINDS.items()}
_IDX_MAGIC = b"\377tOc"
_MAX_OFFSET = 1 << 31  # index v2 needs a second offset table past this: such packs are not ours
_READ_INDEX_UP_TO = 1 << 20  # bigger indexes are git's own packs, read through git
_KEEP = 256  # packs whose indexes a process keeps in memory


def _entry_header(code: int, size: int) -> bytes:
    """An object's type and size as the pack format's variable-length header."""
    out = bytearray()
    byte = (code << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


class Built(NamedTuple):
    pack: bytes
    index: bytes
    checksum: str
    offsets: dict[bytes, int]  # object id (raw) -> where its entry starts in the pack


def build_pack(objects: Iterable[tuple[str, bytes, bytes]]) -> Built | None:
    """A pack of objects given as (id, kind, body); None if too big for one."""
    records, entries, offset = [], [], 12
    for sha, kind, body in objects:
        record = _entry_header(_KINDS[kind], len(body)) + zlib.compress(body, 1)
        entries.append((bytes.fromhex(sha), zlib.crc32(record), offset))
        records.append(record)
        offset += len(record)
        if offset >= _MAX_OFFSET:
            return None
    pack = b"".join([b"PACK", struct.pack(">II", 2, len(entries)), *records])
    checksum = hashlib.sha1(pack).digest()
    entries.sort()
    fanout = [0] * 256
    for sha, _, _ in entries:
        fanout[sha[0]] += 1
    for n in range(1, 256):
        fanout[n] += fanout[n - 1]
    index = b"".join([
        _IDX_MAGIC, struct.pack(">I", 2), struct.pack(">256I", *fanout),
        *(sha for sha, _, _ in entries),
        struct.pack(f">{len(entries)}I", *(crc for _, crc, _ in entries)),
        struct.pack(f">{len(entries)}I", *(at for _, _, at in entries)),
        checksum,
    ])
    return Built(pack + checksum, index + hashlib.sha1(index).digest(), checksum.hex(),
                 {sha: at for sha, _, at in entries})


def write_pack(pack_dir: str, objects: dict[str, tuple[bytes, bytes]], flush: bool,
               keep: Callable[[str], None]) -> tuple[str, Built] | None:
    """Write `objects` (id -> (kind, body)) as one pack; (its file name stem, it), None if not packed.

    As git does: each file is written under a temporary name and renamed, the pack before
    its index (a pack without an index is invisible), so a crash leaves no torn pack.
    `keep(keep_file)` makes the pack's `.keep` file before the pack shows: until a ref
    reaches its objects, a `git repack -a -d` would otherwise drop them and delete it.
    """
    built = build_pack((sha, kind, body) for sha, (kind, body) in objects.items())
    if built is None:
        return None
    stem = f"{pack_dir}/pack-{built.checksum}"
    os.makedirs(pack_dir, exist_ok=True)  # a repository whose objects are all loose may have none
    keep(f"{stem}.keep")
    if os.path.exists(f"{stem}.idx"):
        return stem, built
    for data, suffix, kind in ((built.pack, ".pack", "pack"), (built.index, ".idx", "idx")):
        tmp = f"{pack_dir}/tmp_{kind}_{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            write_all(fd, data)
            if flush:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, stem + suffix)
    return stem, built


def parse_index(data: bytes) -> dict[bytes, int] | None:
    """Object id -> offset from a version-2 pack index; None if not one we read."""
    if len(data) < 8 + 1024 + 40 or data[:4] != _IDX_MAGIC or struct.unpack_from(">I", data, 4)[0] != 2:
        return None
    count = struct.unpack_from(">I", data, 8 + 255 * 4)[0]
    shas_at = 8 + 1024
    offsets_at = shas_at + 24 * count  # past the ids (20 bytes each) and crcs (4 each)
    if len(data) < offsets_at + 4 * count + 40:
        return None
    offsets = struct.unpack_from(f">{count}I", data, offsets_at)
    if any(at & 0x80000000 for at in offsets):
        return None  # large offsets: a big pack of git's, read through git
    return {data[shas_at + 20 * n : shas_at + 20 * n + 20]: offsets[n] for n in range(count)}


class PackReader:
    """Reads whole (non-delta) objects from the small packs in `pack_dir`, written by anyone."""

    def __init__(self, pack_dir: str) -> None:
        self._dir = pack_dir
        self.newest: Callable[[], str | None] = lambda: None  # names the pack written last, if known
        self._packs: dict[str, dict[bytes, int] | None] = {}  # stem -> index (None: not ours to read)
        self._seen: tuple[int, int] | None = None  # the folder's (mtime, size) at the last scan
        self._lock = threading.Lock()

    def add(self, stem: str, offsets: dict[bytes, int]) -> None:
        """Know a pack this process just wrote without reading its index back."""
        with self._lock:
            self._packs[stem] = offsets
            while len(self._packs) > _KEEP:  # the oldest go; a scan finds them again if needed
                del self._packs[next(iter(self._packs))]

    def hint(self, name: str) -> bool:
        """Learn of the pack `name` (pack-<checksum>), which another process says it wrote last;
        False if it was known already or is not there.

        Cheaper than a scan of the folder, which holds hundreds of packs between repacks.
        """
        stem = f"{self._dir}/{name}"
        with self._lock:
            if stem in self._packs:
                return False
        index = _load_index(f"{stem}.idx")
        if index is None:
            return False
        self.add(stem, index)
        return True

    def read(self, sha: str) -> tuple[bytes, bytes] | None:
        """(kind, body) of object `sha` if a small pack holds it whole; else None."""
        key = bytes.fromhex(sha)
        for attempt in (0, 1):
            found = self._find(key)
            if found is None and not attempt:
                newest = self.newest()
                if newest is not None and self.hint(newest):
                    found = self._find(key)
            if found is None:
                if attempt or not self._rescan():
                    return None
                continue
            stem, offset = found
            try:
                return _read_at(f"{stem}.pack", offset)
            except FileNotFoundError:  # rolled up by a repack meanwhile
                with self._lock:
                    self._packs.pop(stem, None)
                    self._seen = None
            except (ValueError, zlib.error):
                return None  # let git read it, and say what is wrong
        return None

    def _find(self, key: bytes) -> tuple[str, int] | None:
        with self._lock:
            for stem in reversed(self._packs):  # newest first: a commit builds on the last one
                index = self._packs[stem]
                if index is not None and key in index:
                    return stem, index[key]
        return None

    def _rescan(self) -> bool:
        """Read the indexes of packs new since the last look; False if nothing changed."""
        try:
            st = os.stat(self._dir)
        except FileNotFoundError:
            return False
        shape = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if shape == self._seen:
                return False
            self._seen = shape
            known = dict(self._packs)
        present: dict[str, dict[bytes, int] | None] = {}
        for name in os.listdir(self._dir):
            if not (name.startswith("pack-") and name.endswith(".idx")):
                continue
            stem = f"{self._dir}/{name[:-4]}"
            if stem in known:
                present[stem] = known[stem]
                continue
            present[stem] = _load_index(f"{stem}.idx")
        with self._lock:
            self._packs = present
        return True


def _load_index(path: str) -> dict[bytes, int] | None:
    try:
        if os.path.getsize(path) > _READ_INDEX_UP_TO:
            return None
        with open(path, "rb") as f:
            return parse_index(f.read())
    except FileNotFoundError:
        return None


def _parse_header(data: bytes, at: int) -> tuple[int, int, int]:
    """(type code, size, header length) of the pack entry at `at`."""
    byte = data[at]
    code, size, shift, n = (byte >> 4) & 7, byte & 0x0F, 4, 1
    while byte & 0x80:
        byte = data[at + n]
        size |= (byte & 0x7F) << shift
        shift += 7
        n += 1
    return code, size, n


def _read_at(path: str, offset: int) -> tuple[bytes, bytes] | None:
    """The whole object at `offset` of a pack; None for a delta (git resolves those)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 32, offset)
        code, size, header_len = _parse_header(head, 0)
        if code not in _NAMES:
            return None
        inflater = zlib.decompressobj()
        parts, at = [], offset + header_len
        while not inflater.eof:
            chunk = os.pread(fd, max(4096, size + 64), at)
            if not chunk:
                raise ValueError(f"{path}: object at {offset} is cut short")
            at += len(chunk)
            parts.append(inflater.decompress(chunk))
    finally:
        os.close(fd)
    body = b"".join(parts)
    if len(body) != size:
        raise ValueError(f"{path}: object at {offset} has the wrong size")
    return _NAMES[code], body
