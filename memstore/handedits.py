"""Hand edits: a person's change of a block or agent file, checked and committed under their name.

`pick_up(store, rel)` runs under the file's lock and compares the file with its last
commit. Equal: nothing to do (memstore's own write, or another watcher got there first).
Valid: one commit authored by the person. Invalid (unparsable, not UTF-8, a changed id,
over the limit): nothing is committed and the file is left exactly as written; the
problem is returned and shown by `status`. A new block file without an id is committed as
written, then memstore adds the id in a commit of its own. A deleted file is committed as
a deletion.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from .blockfile import agent_from_file, load_block, parse_document, render_document
from .commits import commit_message
from .gitrepo import blob_id
from .errors import FileFormatError, MemstoreError
from .workspace import COMMITTER

if TYPE_CHECKING:
    from .store import Store

WATCHED = re.compile(r"(blocks|agents)/([A-Za-z0-9_][A-Za-z0-9_.\-]*)\.md")

Action = Literal["unchanged", "committed", "created", "deleted", "invalid", "recovered", "pending"]


class PickUp(BaseModel):
    """What happened to one file the watcher (or `status`) looked at."""

    path: str
    action: Action
    problem: str | None = None
    version: str | None = None
    notice: str | None = None


class Status(BaseModel):
    """`memstore status`: what is on disk but not committed, and why."""

    uncommitted: list[str]
    invalid: list[PickUp]
    notices: list[str]
    watcher_error: str | None = None


def is_watched(rel: str) -> bool:
    """A block or agent file (not an editor's swap, backup or temp file, not a log)."""
    return WATCHED.fullmatch(rel) is not None and ".." not in rel


def pick_up(store: Store, rel: str) -> PickUp:
    """Commit a person's change of `rel` if it is valid; report it if not."""
    if not is_watched(rel):
        return PickUp(path=rel, action="unchanged")
    try:
        return _pick_up(store, rel)
    except FileFormatError as exc:  # not a file memstore reads: a symbolic link, a folder, a FIFO, too big
        return PickUp(path=rel, action="invalid", problem=str(exc))


def _pick_up(store: Store, rel: str) -> PickUp:
    commits = store.commits
    made = commits.made()
    with commits.locked(rel) as current:  # commits what a blocked or killed writer left first
        if not commits.hand_edited(rel, current):  # as memstore last wrote it
            if commits.made() != made:  # waiting edits, now committed under their authors
                return PickUp(path=rel, action="recovered", version=store.last_change.get(rel))
            return PickUp(path=rel, action="unchanged")
        head = commits.head_blob(rel)
        if current is None:
            return _commit_deletion(store, rel)
        problem, missing_id = check(store, rel, current, has_head=head is not None)
        if problem:
            return PickUp(path=rel, action="invalid", problem=problem)
        version = commits.adopt_hand_edit(rel, current, f"Hand edit {rel}", {"Memstore-Op": "hand_edit"})
        if missing_id and version:
            version = _add_id(store, rel, current) or version
    store.catalog.bump()
    if version is None:  # a git command holds a lock: the watcher commits it once it is let go
        return PickUp(path=rel, action="pending", problem="git holds a lock; committed once it is let go")
    return PickUp(path=rel, action="created" if head is None else "committed", version=version)


def check(store: Store, rel: str, data: bytes, *, has_head: bool) -> tuple[str | None, bool]:
    """(the problem with this file, or None; whether it is a new block that memstore must give an id)."""
    error, missing_id = find_problem(store, rel, data, has_head=has_head)
    return (str(error) if error else None), missing_id


def require_valid(store: Store, rel: str, data: bytes) -> None:
    """Raise the problem of an uncommitted hand edit, so no edit commits an invalid file on top of it."""
    if is_watched(rel):
        error, _ = find_problem(store, rel, data, has_head=store.commits.head_blob(rel) is not None)
        if error is not None:
            raise error


def find_problem(store: Store, rel: str, data: bytes, *, has_head: bool) -> tuple[FileFormatError | None, bool]:
    kind, name = WATCHED.fullmatch(rel).groups()  # type: ignore[union-attr]
    if store.ws.git.unmerged(rel):  # conflict markers are never memory: readers get the block as last committed
        return FileFormatError(rel, None, "is unmerged (a merge, rebase or `git stash pop` left conflict markers in "
                                          f"it): resolve it, `git add {rel}` and commit"), False
    try:
        if kind == "agents":
            return _agent_problem(store, rel, name, data, has_head), False
        meta, body = _new_block_document(data, rel) if not has_head else parse_document(data, rel)
        missing_id = "id" not in meta and not has_head
        if missing_id:  # validate it as it will be once memstore adds the id
            data = render_document({"id": f"block-{uuid.uuid4()}", "label": name, **meta}, body)
        return _block_problem(store, rel, name, data, has_head), missing_id
    except FileFormatError as exc:
        return exc, False


def _block_problem(store: Store, rel: str, name: str, data: bytes, has_head: bool) -> FileFormatError | None:
    block, _ = load_block(data, rel, name)
    if len(block.value) > block.limit:
        return FileFormatError(rel, None, f"the value is {len(block.value):,} characters, over its limit of "
                                          f"{block.limit:,}; shorten it or raise `limit`")
    committed_id = _committed_id(store, rel) if has_head else None
    if committed_id and block.id != committed_id:
        return _id_changed(rel, committed_id, block.id)
    if not committed_id:
        twin = next((e.name for e in store.catalog.snapshot().entries.values()
                     if e.id == block.id and e.name != name), None)
        if twin is not None:
            return FileFormatError(rel, None, f"the id {block.id} already belongs to blocks/{twin}.md; a copied "
                                              "block needs its own id — delete the `id:` line and memstore adds one")
    return None


def _agent_problem(store: Store, rel: str, name: str, data: bytes, has_head: bool) -> FileFormatError | None:
    agent = agent_from_file(data, rel)
    if agent.name != name:
        return FileFormatError(rel, None, f"`name: {agent.name}` differs from the file name; an agent's name is its "
                                          f"file name — write `name: {name}` or rename the file")
    committed_id = _committed_id(store, rel) if has_head else None
    return _id_changed(rel, committed_id, agent.id) if committed_id and agent.id != committed_id else None


def _id_changed(rel: str, committed_id: str, found_id: str) -> FileFormatError:
    return FileFormatError(rel, None, f"the id changed from {committed_id} to {found_id}; ids never change — "
                                      f"put back {committed_id}")


def file_problem(store: Store, rel: str) -> str | None:
    """Why the file on disk is not what readers get (an invalid, uncommitted hand edit), or None."""
    try:
        data = store.commits.read(rel)
    except FileFormatError as exc:
        return str(exc)
    head = store.commits.head_blob(rel)
    if data is None or _blob(data) == head:
        return None
    return check(store, rel, data, has_head=head is not None)[0]


def _committed_id(store: Store, rel: str) -> str | None:
    data = store._committed(rel)
    try:
        meta, _ = parse_document(data or b"", rel)
    except FileFormatError:
        return None
    found = meta.get("id")
    return found if isinstance(found, str) else None


def _commit_deletion(store: Store, rel: str) -> PickUp:
    gone_id = _committed_id(store, rel)
    version = store.commits.adopt_hand_edit(rel, None, f"Hand edit {rel}: deleted", {"Memstore-Op": "hand_edit"})
    store.catalog.bump()
    if version is None:
        return PickUp(path=rel, action="pending", problem="git holds a lock; committed once it is let go")
    notice = None
    if rel.startswith("blocks/") and gone_id:
        holders = [a.name for a in store.list_agents() if gone_id in a.blocks]
        if holders:
            notice = f"{rel} was deleted by hand, but {', '.join(holders)} still list {gone_id}"
    return PickUp(path=rel, action="deleted", notice=notice, version=version)


def _add_id(store: Store, rel: str, current: bytes) -> str | None:
    """Give a new hand-written block its id (and a label from its file name if it has none)."""
    meta, body = _new_block_document(current, rel)
    name = WATCHED.fullmatch(rel).group(2)  # type: ignore[union-attr]
    added: dict[str, Any] = {"id": f"block-{uuid.uuid4()}"}
    if "label" not in meta:
        added["label"] = name
    data = render_document({**added, **meta}, body)
    problem, _ = check(store, rel, data, has_head=True)
    if problem:
        return None  # committed as written; `status` shows what still needs fixing
    return store.commits.write(rel, data, current, COMMITTER, commit_message(
        f"Add id to {rel}", {"Memstore-Op": "add_id", "Memstore-Block": added["id"],
                             "Memstore-Author-Kind": "person"})).version


def _new_block_document(data: bytes, rel: str) -> tuple[dict[str, Any], str]:
    """A new block file may be plain text: then it is all value, and memstore adds the front matter."""
    if data.removeprefix(b"\xef\xbb\xbf").startswith(b"---"):
        return parse_document(data, rel)
    try:
        return {}, data.decode("utf-8").removesuffix("\n")
    except UnicodeDecodeError:
        return parse_document(data, rel)  # raises, naming the line of the bad byte


def status(store: Store) -> Status:
    """Files that differ from their last commit (valid or not), and agents listing deleted blocks.

    New hand-made block files are adopted first, as every command does, so what is listed
    as uncommitted is what still is.
    """
    store.problems()
    uncommitted, invalid = [], []
    for rel in _candidates(store):
        try:
            data = store.commits.read(rel)
        except FileFormatError as exc:
            invalid.append(PickUp(path=rel, action="invalid", problem=str(exc)))
            continue
        head = store.commits.head_blob(rel)
        if _blob(data) == head:
            continue
        problem = None if data is None else check(store, rel, data, has_head=head is not None)[0]
        if problem:
            invalid.append(PickUp(path=rel, action="invalid", problem=problem))
        else:
            uncommitted.append(rel)
    return Status(uncommitted=uncommitted, invalid=invalid, notices=_dangling(store),
                  watcher_error=store.ws.read_state("watcher-error"))


def _candidates(store: Store) -> list[str]:
    on_disk = {f"{d}/{p.name}" for d in ("blocks", "agents") for p in (store.ws.root / d).glob("*.md")}
    committed = set(store.ws.git.files_in(("blocks", "agents")))
    return sorted(r for r in on_disk | committed if is_watched(r))


def _dangling(store: Store) -> list[str]:
    known = {b.id for b in store.list_blocks()}
    try:
        agents = store.list_agents()
    except MemstoreError:
        return []
    return [f"agent {a.name} lists {i}, which no longer exists" for a in agents for i in a.blocks if i not in known]


def _blob(data: bytes | None) -> str | None:
    return blob_id(data) if data is not None else None
