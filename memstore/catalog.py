"""Which file holds which block: lookups by id, file name and label without a full scan.

A scan of `blocks/` parses every file, which is slow with thousands of blocks, so its
result is kept and reused while `.memstore/catalog.gen` (appended to by every create,
delete and relabel, in any process) has not grown. Callers verify what they read, and a
lookup that misses or finds a stale entry rescans, so hand-made files are found too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .blockfile import block_from_file
from .gitrepo import blob_id
from .errors import FileFormatError
from .models import Block

log = logging.getLogger(__name__)


@dataclass
class CatalogEntry:
    name: str
    id: str
    label: str


@dataclass
class _Snapshot:
    token: int
    entries: dict[str, CatalogEntry] = field(default_factory=dict)
    problems: list[FileFormatError] = field(default_factory=list)
    by_id: dict[str, str] = field(default_factory=dict)
    by_label: dict[str, list[str]] = field(default_factory=dict)


class Catalog:
    """A cached map of block files to ids and labels, shared by threads of one process."""

    def __init__(self, blocks_dir: Path, gen_file: Path, committed: Callable[[str], bytes | None],
                 head_blob: Callable[[str], str | None], read: Callable[[str], bytes | None]) -> None:
        self._dir = blocks_dir
        self._read = read  # a workspace file, only if it is a regular file inside it
        self._gen = gen_file
        self._committed = committed
        self._head_blob = head_blob
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    def bump(self) -> None:
        """Tell every process that the set of blocks or their labels changed."""
        fd = os.open(self._gen, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)

    def _token(self) -> int:
        try:
            return os.stat(self._gen).st_size
        except FileNotFoundError:
            return 0

    def snapshot(self, *, rescan: bool = False) -> _Snapshot:
        token = self._token()
        with self._lock:
            if rescan or self._snapshot is None or self._snapshot.token != token:
                self._snapshot = self._scan(token)
            return self._snapshot

    def _scan(self, token: int) -> _Snapshot:
        snap = _Snapshot(token)
        for path in sorted(self._dir.glob("*.md")):
            name = path.name[:-3]
            rel = f"blocks/{path.name}"
            try:
                data = self._read(rel)
                if data is None:
                    continue
                block = block_from_file(data, rel, name)
                block = self._unless_id_changed(rel, name, data, block)
            except FileFormatError as exc:
                snap.problems.append(exc)
                block = self._last_good(rel, name)
                if block is None:
                    continue
            except OSError:
                continue
            snap.entries[name] = CatalogEntry(name, block.id, block.label)
            if block.id not in snap.by_id or not self._is_committed(f"blocks/{snap.by_id[block.id]}.md"):
                snap.by_id[block.id] = name  # a hand-made copy never takes an id from its committed original
            snap.by_label.setdefault(block.label, []).append(name)
        self._drop_copies(snap)
        return snap

    def _drop_copies(self, snap: _Snapshot) -> None:
        """A hand-made copy of a block file (same id, never committed) is invalid: it names nothing."""
        for name, entry in list(snap.entries.items()):
            owner = snap.by_id.get(entry.id)
            if owner is not None and owner != name and not self._is_committed(f"blocks/{name}.md"):
                del snap.entries[name]
                snap.by_label[entry.label].remove(name)
                snap.problems.append(FileFormatError(
                    f"blocks/{name}.md", None, f"the id {entry.id} already belongs to blocks/{owner}.md; a copied "
                                               "block needs its own id — delete the `id:` line and memstore adds one"))

    def _is_committed(self, rel: str) -> bool:
        try:
            data = self._read(rel)
        except (OSError, FileFormatError):
            return False
        return data is not None and self._head_blob(rel) == blob_id(data)

    def _unless_id_changed(self, rel: str, name: str, data: bytes, block: Block) -> Block:
        """A hand edit that changed the id is invalid: keep finding the block by its committed id."""
        if self._head_blob(rel) in (None, blob_id(data)):
            return block
        committed = self._last_good(rel, name)
        return committed if committed is not None and committed.id != block.id else block

    def _last_good(self, rel: str, name: str) -> Block | None:
        """The committed version of a file broken on disk, so lookups still find it."""
        data = self._committed(rel)
        try:
            return block_from_file(data, rel, name) if data is not None else None
        except FileFormatError:
            return None

    def name_of_id(self, block_id: str, *, rescan: bool = False) -> str | None:
        return self.snapshot(rescan=rescan).by_id.get(block_id)

    def names_of_label(self, label: str, *, rescan: bool = False) -> list[str]:
        return list(self.snapshot(rescan=rescan).by_label.get(label, []))
