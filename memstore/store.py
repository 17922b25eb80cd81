"""Blocks and agents: create, read, update, delete, the memory edits, history and revert.

`Store` is the one public entry to a workspace; the CLI, the MCP server, the agent
runtime and the watcher all call it. Every change runs through `Committer`, so it is
applied to the current file under that file's lock and becomes one commit authored by
the acting agent or person.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from . import edits, handedits, history
from .agents.messages import Message, TurnResult
from .blockfile import (agent_from_file, block_from_file, block_meta, load_block, render_agent, render_block,
                        with_body)
from .cache import LRU
from .catalog import Catalog, CatalogEntry
from .commits import Committer, SavedMeanwhile, commit_message
from .errors import (
    AmbiguousNameError,
    ConflictError,
    FileFormatError,
    InvalidInputError,
    InvalidNameError,
    MemstoreError,
    NotAllowedError,
    NotFoundError,
    PreconditionFailedError,
    ReadOnlyError,
)
from .gitrepo import Ident, blob_id
from .models import (
    BlameLine,
    DEFAULT_LIMIT,
    Actor,
    Agent,
    Block,
    EditResult,
    HistoryEntry,
    file_name_for,
    file_name_free,
    is_name,
    validate_agent_name,
    validate_name,
)
from .blockfile import value_first_line
from .prompt import render_memory_blocks
from .validation import (
    check_bool,
    check_count,
    check_limit_arg,
    check_metadata,
    check_optional_text,
    check_text,
    check_tools,
    check_unique_labels,
)
from .workspace import Workspace, init_workspace, open_workspace

DEFAULT_SYSTEM = "You are a helpful assistant with a persistent, shared memory."
_UNREAD = object()  # `_read_block`'s default: read the file itself
_MAINTAIN_EVERY = 250
_WAITING = "an edit is written and its commit waits (see `memstore status`); the next memstore operation makes it"
_NAME_TRIES = 10  # a writer racing others for free file names (or for an agent list) tries again
_SAVE_TRIES = 5  # an edit met by a person's save (`SavedMeanwhile`) is made again on top of it, this many times
_MAINTAIN_GAP = 10.0  # seconds: housekeeping starts at most this often, however fast commits come
_PARSED_CACHE = 512  # parsed block (and agent) files kept, by content


class Store:
    """A memstore workspace, opened once and shared by threads."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.commits = Committer(ws, on_commit=self._after_commit, check=self._check_merge)
        self.last_change = history.LastChange(ws.git)
        self._parsed: LRU[tuple[str, str], tuple[Block, dict[str, Any]]] = LRU(_PARSED_CACHE)
        self._agents: LRU[tuple[str, str], Agent] = LRU(_PARSED_CACHE)
        self._agent_names: dict[str, str] = {}  # agent id -> the file name it was last read from
        self.catalog = Catalog(ws.blocks_dir, ws.state_dir / "catalog.gen", self._committed,
                               self.commits.head_blob, self.commits.read)
        self.commits.finish_all()  # edits a git command held up, or whose writer was killed

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Store:
        return cls(open_workspace(path))

    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> Store:
        return cls(init_workspace(path))

    def _committed(self, rel: str) -> bytes | None:
        return self.commits.committed(rel)

    @property
    def person(self) -> Actor:
        return Actor(self.ws.person.name, self.ws.person.email)

    # -- reading blocks ----------------------------------------------------------------

    def list_blocks(self, *, actor: Actor | None = None) -> list[Block]:
        """Every readable block, by file name (an agent: its attached blocks, in its order)."""
        if actor is not None and actor.agent_id:
            return self.agent_blocks(actor.agent_id)
        snap = self.catalog.snapshot(rescan=True)
        if self._adopt_new_files(snap.problems):
            snap = self.catalog.snapshot(rescan=True)
        return [b for b in (self._read_block(name) for name in snap.entries) if b is not None]

    def _adopt_new_files(self, problems: list[FileFormatError]) -> bool:
        """Commit new hand-made block files (plain text, or without an id) as the watcher would.

        So a file a person drops into blocks/ is the same block to every command, whether or
        not a watcher runs. True if any was adopted.
        """
        adopted = False
        for problem in problems:
            rel = problem.path
            if rel.startswith("blocks/") and self.commits.head_blob(rel) is None:
                try:
                    adopted |= handedits.pick_up(self, rel).action == "created"
                except MemstoreError:  # refused (a hook, a merge under way): it stays a listed problem
                    continue
        return adopted

    def problems(self) -> list[FileFormatError]:
        """Block files that do not parse, each naming its file and line."""
        snap = self.catalog.snapshot(rescan=True)
        if self._adopt_new_files(snap.problems):
            snap = self.catalog.snapshot(rescan=True)
        return list(snap.problems)

    def get_block(self, ref: str, version: str | None = None, *, actor: Actor | None = None) -> Block:
        """A block by id, file name or unambiguous label; as of `version` if given."""
        name = self.resolve_block(ref, actor)
        rel = f"blocks/{name}.md"
        if version is not None:
            data = history.content_at(self.ws.git, rel, version)
            return block_from_file(data, rel, name).model_copy(
                update={"version": history.resolve_version(self.ws.git, version)})
        data: bytes | None | object
        try:
            data = self.commits.read(rel)
        except FileFormatError:  # a file memstore does not read (a symbolic link…): _read_block says so
            data = _UNREAD
        if isinstance(data, bytes) and self.commits.hand_edited(rel, data) and not self.ws.git.unmerged(rel):
            handedits.pick_up(self, rel)  # a person's valid edit is committed, as the watcher would, so the
            data = _UNREAD  # version given is the commit that holds what is read (an invalid one is not read)
        block = self._read_block(name, strict=True, data=data)
        assert block is not None
        if self.commits.has_pending(rel):  # no version while the value's commit is still pending
            return block.model_copy(update={"version": None, "pending": _WAITING})
        return block.model_copy(update={"version": self.last_change.get(rel)})

    def _read_block(self, name: str, *, strict: bool = False, data: bytes | None | object = _UNREAD) -> Block | None:
        """The block in `blocks/<name>.md` (`data`: the file's bytes when the caller has just read them)."""
        rel = f"blocks/{name}.md"
        if data is _UNREAD:
            try:
                data = self.commits.read(rel)
            except FileFormatError:  # not a file memstore reads (a symbolic link, …): as last committed, if ever
                return self._last_good(rel, name, None, strict=strict)
        assert data is None or isinstance(data, bytes)
        if data is None:
            if strict:
                raise NotFoundError(f"Block file {rel} no longer exists.")
            return None
        if self.commits.hand_edited(rel, data) and handedits.check(self, rel, data, has_head=True)[0]:
            return self._last_good(rel, name, data, strict=strict)
        try:
            return self._load(data, rel, name)[0]
        except FileFormatError:
            return self._last_good(rel, name, data, strict=strict)

    def _check_merge(self, rel: str, merged: bytes, base: bytes, by_person: bool) -> None:
        """Raise if an edit merged onto a git command's commit (`base`: what the edit was made on) makes an
        invalid file, or is an agent's edit of a block that commit made read-only."""
        handedits.require_valid(self, rel, merged)
        if by_person or not rel.startswith("blocks/"):
            return
        name = rel[len("blocks/"):-len(".md")]
        block = self._load(merged, rel, name)[0]
        if block.read_only and not self._load(base, rel, name)[0].read_only:
            raise ReadOnlyError(block.label)

    def _load(self, data: bytes, rel: str, name: str) -> tuple[Block, dict[str, Any]]:
        """Parse a block file, remembering recent results: an edit reads the same bytes twice."""
        block, meta = self._parsed.get_or_make((name, blob_id(data)), lambda: load_block(data, rel, name))
        return block, dict(meta)

    def _last_good(self, rel: str, name: str, data: bytes | None, *, strict: bool) -> Block | None:
        """An invalid hand edit is not memory yet: readers get the block as last committed."""
        committed = self._committed(rel)
        try:
            if committed is not None:
                return block_from_file(committed, rel, name)
            if strict:  # never committed, and invalid: say why
                if data is None:
                    self.commits.read(rel)  # raises why the file is refused
                handedits.require_valid(self, rel, data)
                return block_from_file(data, rel, name)
        except FileFormatError:
            if strict:
                raise
        return None

    def resolve_block(self, ref: str, actor: Actor | None = None) -> str:
        """The file name of the block `ref` names: among an agent's blocks when acting as one."""
        if not isinstance(ref, str) or not ref:
            raise InvalidInputError("Name a block by its id, file name or label.")
        if actor is not None and actor.agent_id:
            return self._resolve_for_agent(ref, actor.agent_id)
        if ref.startswith("block-"):
            for rescan in (False, True):
                name = self.catalog.name_of_id(ref, rescan=rescan)
                if name and self._verify(name, lambda b: b.id == ref):
                    return name
            raise NotFoundError(f"No block with id {ref}.")
        validate_name(ref, "block name")
        for rescan in (False, True):
            names = self.catalog.names_of_label(ref, rescan=rescan)
            if names and all(self._verify(n, lambda b: b.label == ref) for n in names):
                break
        if len(names) > 1 and ref in names:  # a file name always names its own block
            return ref
        if len(names) > 1:
            raise AmbiguousNameError(ref, [f"{n} ({self.catalog.snapshot().entries[n].id})" for n in names])
        if names:
            return names[0]
        rel = f"blocks/{ref}.md"
        if (self.ws.blocks_dir / f"{ref}.md").exists():
            if self.commits.head_blob(rel) is None:  # a new hand-made file: adopt it as the watcher would
                handedits.pick_up(self, rel)
            return ref
        raise NotFoundError(f"No block named '{ref}' (by label or file name). `memstore block list` shows them.")

    def _verify(self, name: str, check: Callable[[Block], bool]) -> bool:
        block = self._read_block(name)
        return block is not None and check(block)

    def _resolve_for_agent(self, label: str, agent_id: str) -> str:
        return self._agent_entry(self.get_agent(agent_id), label).name

    def _agent_entry(self, agent: Agent, label: str) -> CatalogEntry:
        """The attached block `label` (or id) names, with Letta's error when there is none."""
        snap = self.catalog.snapshot()
        for block_id in agent.blocks:  # the catalog's answer, verified by reading the one file it names
            known = snap.entries.get(snap.by_id.get(block_id, ""))
            if known is not None and label in (known.label, known.id):
                entry = self._entry_by_id(block_id)
                if entry is not None and label in (entry.label, entry.id):
                    return entry
                break
        entries = [e for e in (self._entry_by_id(i) for i in agent.blocks) if e is not None]
        for entry in entries:
            if label in (entry.label, entry.id):
                return entry
        for entry in entries:  # a file name, as resources and listings show it
            if label == entry.name:
                return entry
        available = ", ".join(e.label for e in entries)
        raise NotFoundError(f"Block field {label} does not exist (available sections = {available})")

    def _entry_by_id(self, block_id: str) -> CatalogEntry | None:
        """Where block `block_id` lives, verified against the file (a broken file: as last committed)."""
        for rescan in (False, True):
            name = self.catalog.name_of_id(block_id, rescan=rescan)
            block = self._read_block(name) if name else None
            if block is not None and block.id == block_id:
                return CatalogEntry(name, block.id, block.label)
        return None

    def _block_by_id(self, block_id: str) -> Block | None:
        entry = self._entry_by_id(block_id)
        return self._read_block(entry.name) if entry else None

    # -- changing blocks ---------------------------------------------------------------

    def create_block(
        self, label: str, value: str = "", *, limit: int | None = None, read_only: bool = False,
        description: str | None = None, metadata: dict[str, Any] | None = None, actor: Actor | None = None,
    ) -> Block:
        """Create a block in `blocks/<label>.md` (or `<label>-2.md`, … when taken)."""
        return self._create_block(new_block(label, value, limit=limit, read_only=read_only, description=description,
                                            metadata=metadata), actor or self.person)

    def _create_block(self, block: Block, actor: Actor) -> Block:
        for _ in range(_NAME_TRIES):  # the name chosen may be taken before its lock is held: chosen again
            ((rel, block),) = self._new_block_files([block]).items()
            with self.commits.locked(rel) as current:
                if current is not None or self._taken(rel):
                    continue
                saved = self.commits.write(rel, render_block(block), None, _ident(actor),
                                           self._message("create_block", block, actor))
            self.catalog.bump()
            return block.model_copy(update={"version": saved.version, "pending": saved.pending})
        raise ConflictError(f"Other writers kept taking the file names for '{block.label}'; try again.")

    def _taken(self, rel: str) -> bool:
        """Whether a new file `rel` (its lock held) is taken after all: on the branch, or by a case twin that
        another writer made since it was chosen."""
        folder, name = os.path.split(rel)
        return self.commits.head_blob(rel) is not None or any(
            other != name and other.lower() == name.lower() for other in os.listdir(self.ws.root / folder))

    def _new_block_files(self, blocks: list[Block]) -> dict[str, Block]:
        """A free file for each new block (no file, nor one on the branch), the block named after it.

        Free when chosen: the caller checks again once it holds the files' locks.
        """
        taken = {p.name[:-3].lower() for p in self.ws.blocks_dir.glob("*.md")}
        chosen: dict[str, Block] = {}
        for block in blocks:
            for n in range(1, 10_000):
                name = file_name_for(block.label, n)  # skipping a case twin or a name Windows reserves
                if file_name_free(name, taken) and self.commits.head_blob(f"blocks/{name}.md") is None:
                    break
            else:
                raise ConflictError(f"Too many blocks are labelled '{block.label}'.")
            taken.add(name.lower())
            chosen[f"blocks/{name}.md"] = block.model_copy(update={"name": name})
        return chosen

    def update_block(
        self, ref: str, *, label: str | None = None, description: str | None = None, limit: int | None = None,
        read_only: bool | None = None, metadata: dict[str, Any] | None = None, value: str | None = None,
        actor: Actor | None = None, expected_version: str | None = None,
    ) -> EditResult:
        """Change a block's fields in one commit: an administrative change, as Letta's block update.

        `value` replaces the whole value (agents' own edits go through the memory tools, which
        read-only binds); every other field is the block's settings.
        """
        changes: dict[str, Any] = {}
        if value is not None:
            changes["value"] = check_text(value, "value")
        if label is not None:
            changes["label"] = validate_name(label)
        if description is not None:
            changes["description"] = check_optional_text(description) or None
        if limit is not None:
            changes["limit"] = check_limit_arg(limit)
        if read_only is not None:
            changes["read_only"] = check_bool(read_only, "read_only")
        if metadata is not None:
            changes["metadata"] = check_metadata(metadata)

        actor = actor or self.person

        def change(block: Block) -> Block:
            _check_policy_change(actor, block, changes)
            if actor.is_agent and block.read_only and "value" in changes:
                raise ReadOnlyError(block.label)
            edits.check_limit(block.label, changes.get("value", block.value), changes.get("limit", block.limit))
            if changes.get("label", block.label) != block.label:
                self._check_relabel(block, changes["label"])
            return block.model_copy(update=changes)

        if "label" not in changes:
            return self._change_block(ref, actor, "update_block", change, enforce_read_only=False,
                                      expected_version=expected_version)
        # a new label is checked against the blocks of the agents that list this one, whose files are held
        # first (agents before blocks, as `_holding_blocks`): an attach meanwhile cannot bring a twin label
        listing = [a.path for a in self.block_agents(self.get_block(ref, actor=actor).id)]
        with self.commits.locks.files(listing):
            result = self._change_block(ref, actor, "update_block", change, enforce_read_only=False,
                                        expected_version=expected_version)
        self.catalog.bump()
        return result

    def _check_relabel(self, block: Block, label: str) -> None:
        for agent in self.list_agents():
            if block.id not in agent.blocks:
                continue
            for other in (self._block_by_id(i) for i in agent.blocks if i != block.id):
                if other is not None and other.label == label:
                    raise ConflictError(
                        f"Agent '{agent.name}' already has a block labelled '{label}' ({other.id}); "
                        "labels are unique among one agent's blocks."
                    )

    def delete_block(self, ref: str, *, actor: Actor | None = None, expected_version: str | None = None) -> Block:
        """Delete a block (its history stays in git) and detach it from every agent, in one commit."""
        actor = actor or self.person
        name = self.resolve_block(ref, actor)
        rel = f"blocks/{name}.md"
        for _ in range(_NAME_TRIES):  # an agent that attached the block meanwhile is held too, on the next try
            seen = self._read_block(name)
            if seen is None:
                raise NotFoundError(f"Block file {rel} no longer exists.")
            agents = [a.path for a in self.block_agents(seen.id)]
            with self.commits.locked_files([rel, *agents]) as now:  # the agents' files first, as every writer
                current = now[rel]
                if current is None:
                    raise NotFoundError(f"Block file {rel} no longer exists.")
                block = block_from_file(current, rel, name)
                if {a.path for a in self.block_agents(block.id)} - set(agents):
                    continue
                if actor.is_agent and block.read_only:
                    raise ReadOnlyError(block.label)
                if expected_version is not None:
                    self._check_version(rel, current, block, expected_version)
                if self._check_hand_edit(rel, current, block):
                    self._adopt_hand_edit(rel, current, block)
                files: dict[str, tuple[bytes | None, bytes | None]] = {rel: (None, current)}
                for path in agents:
                    agent = self._agent_as_held(path, now[path])
                    if agent is not None and block.id in agent.blocks:
                        detached = agent.model_copy(update={"blocks": [i for i in agent.blocks if i != block.id]})
                        files[path] = (render_agent(detached), now[path])
                saved = self.commits.write_files(files, _ident(actor), self._message("delete_block", block, actor),
                                                 exact={rel} if expected_version not in (None, "*") else ())
            self.catalog.bump()
            return block.model_copy(update={"version": saved.version, "pending": saved.pending})
        raise ConflictError(f"Agents kept attaching block '{name}' while it was being deleted; try again.")

    # -- the memory edits ----------------------------------------------------------------

    # Every edit takes `expected_version`: when given, the edit applies only if the block's
    # current version is that commit (else PreconditionFailedError, nothing written).

    def memory_insert(self, label: str, new_str: str, insert_line: int = -1, *, actor: Actor | None = None,
                      expected_version: str | None = None) -> EditResult:
        """Insert `new_str` after line `insert_line` (0: top, -1: end); additive under concurrency."""
        check_text(new_str, "new_str")
        return self._edit(label, actor, "memory_insert", lambda b: edits.memory_insert(b.value, new_str, insert_line),
                          expected_version)

    def memory_replace(self, label: str, old_str: str, new_str: str, *, actor: Actor | None = None,
                       expected_version: str | None = None) -> EditResult:
        """Replace the one occurrence of `old_str` in the current value."""
        check_text(new_str, "new_str")
        return self._edit(label, actor, "memory_replace",
                          lambda b: edits.memory_replace(b.value, old_str, new_str, b.label), expected_version)

    def memory_rethink(self, label: str, new_memory: str, *, actor: Actor | None = None,
                       expected_version: str | None = None) -> EditResult:
        """Overwrite the whole value; the old one stays in history."""
        check_text(new_memory, "new_memory")
        return self._edit(label, actor, "memory_rethink", lambda b: edits.memory_rethink(b.value, new_memory),
                          expected_version)

    def core_memory_append(self, label: str, content: str, *, actor: Actor | None = None,
                           expected_version: str | None = None) -> EditResult:
        check_text(content, "content")
        return self._edit(label, actor, "core_memory_append", lambda b: edits.core_memory_append(b.value, content),
                          expected_version)

    def core_memory_replace(
        self, label: str, old_content: str, new_content: str, *, actor: Actor | None = None,
        expected_version: str | None = None,
    ) -> EditResult:
        check_text(new_content, "new_content")
        return self._edit(label, actor, "core_memory_replace",
                          lambda b: edits.core_memory_replace(b.value, old_content, new_content, b.label),
                          expected_version)

    def _edit(self, label: str, actor: Actor | None, op: str, new_value: Callable[[Block], str],
              expected_version: str | None) -> EditResult:
        def change(block: Block) -> Block:
            value = new_value(block)
            edits.check_limit(block.label, value, block.limit)
            return block.model_copy(update={"value": value})

        return self._change_block(label, actor or self.person, op, change, enforce_read_only=True,
                                  expected_version=expected_version)

    def revert_block(self, ref: str, version: str, *, actor: Actor | None = None,
                     expected_version: str | None = None) -> EditResult:
        """Make a block as it was at `version`, in a new commit (history is never rewritten)."""
        actor = actor or self.person
        name = self.resolve_block(ref, actor)
        rel = f"blocks/{name}.md"
        old = block_from_file(history.content_at(self.ws.git, rel, version), rel, name)

        def change(block: Block) -> Block:
            if old.id != block.id:
                raise ConflictError(f"{rel} held another block ({old.id}) at version {version}.")
            _check_policy_change(actor, block, {"limit": old.limit, "read_only": old.read_only})
            return old

        return self._change_block(ref, actor, "revert_block", change, enforce_read_only=True,
                                  subject_suffix=f" to {version[:12]}", expected_version=expected_version)

    def _change_block(
        self, ref: str, actor: Actor, op: str, change: Callable[[Block], Block], *,
        enforce_read_only: bool, subject_suffix: str = "", expected_version: str | None = None,
    ) -> EditResult:
        """Apply `change` to the block as it is now, under its lock, and commit it. A person's editor, which takes
        no lock, may save the file while the change is made: then the change is made again on top of their save
        (committed first, as theirs), as if it had come a moment later."""
        for attempt in range(_SAVE_TRIES):
            try:
                return self._change_block_once(ref, actor, op, change, enforce_read_only=enforce_read_only,
                                               subject_suffix=subject_suffix, expected_version=expected_version)
            except SavedMeanwhile:
                if attempt == _SAVE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _change_block_once(
        self, ref: str, actor: Actor, op: str, change: Callable[[Block], Block], *,
        enforce_read_only: bool, subject_suffix: str = "", expected_version: str | None = None,
    ) -> EditResult:
        name = self.resolve_block(ref, actor)
        rel = f"blocks/{name}.md"
        with self.commits.locked(rel) as current:
            if current is None:
                raise NotFoundError(f"Block '{ref}' was deleted (no file {rel}).")
            block, meta = self._load(current, rel, name)
            if enforce_read_only and actor.is_agent and block.read_only:
                raise ReadOnlyError(block.label)
            if expected_version is not None:
                self._check_version(rel, current, block, expected_version)
            hand_edited = self._check_hand_edit(rel, current, block)
            new = change(block)
            if hand_edited:
                self._adopt_hand_edit(rel, current, block)
            if block_meta(new, meta) == block_meta(block, meta):  # the value alone: the front matter as it is
                data = with_body(current, new.value, rel)
            else:
                data = render_block(new, meta)
            message = self._message(op, new, actor, subject_suffix)
            saved = self.commits.write(rel, data, current, _ident(actor), message,
                                       exact=expected_version not in (None, "*"))
            if saved.merged:  # a person's commit of the block landed meanwhile: the value holds both
                new = self._load(self.commits.committed(rel) or b"", rel, name)[0]
        version = saved.version if saved.version or saved.pending else history.last_version(self.ws.git, rel)
        return EditResult(block=new.model_copy(update={"version": version, "pending": saved.pending}),
                          version=version, op=op, pending=saved.pending)

    def _check_version(self, rel: str, current: bytes, block: Block, expected: str) -> None:
        """Refuse an edit made against a version that is no longer the block's current one.

        `expected` is a commit id or a prefix of at least 7 hex digits; `*` matches any
        version. An uncommitted hand edit means the block has changed since every version.
        """
        expected = check_text(expected, "expected_version").strip()
        if expected == "*":
            return
        if len(expected) < 7:
            raise InvalidInputError(f"expected_version '{expected}' is too short: give at least 7 characters of "
                                    "the version (a commit id).")
        now = self.last_change.get(rel)
        if self.commits.hand_edited(rel, current) or self.commits.has_pending(rel):
            raise PreconditionFailedError(
                f"Block '{block.label}' has changed since version {expected[:12]}: it holds a change whose commit "
                "is not made yet (a hand edit, or an edit waiting for a git command). Read the block again and "
                "retry; nothing was written.")
        if now is None or not now.startswith(expected.lower()):
            raise PreconditionFailedError(
                f"Block '{block.label}' has changed since version {expected[:12]}: it is now at version "
                f"{(now or 'none')[:12]}. Read the block again and retry; nothing was written.")

    def _check_hand_edit(self, rel: str, current: bytes, block: Block) -> bool:
        """True if `rel` has an uncommitted (valid) hand edit; refuse an invalid one."""
        if not self.commits.hand_edited(rel, current):
            return False
        handedits.require_valid(self, rel, current)
        return True

    def _adopt_hand_edit(self, rel: str, current: bytes, block: Block) -> None:
        """Commit a person's uncommitted edit of `rel` before an edit lands on top of it."""
        self.commits.adopt_hand_edit(rel, current, f"Hand edit {rel}",
                                     {"Memstore-Op": "hand_edit", "Memstore-Block": block.id,
                                      "Memstore-Author-Kind": "person"})

    def _message(self, op: str, block: Block | Agent, actor: Actor, suffix: str = "") -> str:
        name = block.label if isinstance(block, Block) else block.name
        return commit_message(f"{op} {name}{suffix}", {
            "Memstore-Op": op,
            "Memstore-Block": block.id if isinstance(block, Block) else None,
            "Memstore-Agent": actor.agent_id if isinstance(block, Block) else block.id,
            "Memstore-Author-Kind": actor.kind,
        })

    def _after_commit(self) -> None:
        """About every `_MAINTAIN_EVERY` commits, from whichever process, let git pack and index history.

        Not again within `_MAINTAIN_GAP` seconds: a run costs about 0.1 s of CPU, and started
        every 250 commits of 8 busy writers it took a quarter of a two-core machine and
        doubled the writers' p99 (`benchmarks/edits.py`).
        """
        due = random.random() < 1 / _MAINTAIN_EVERY  # noqa: S311 - a schedule, not a secret
        if due and history.since_maintenance(str(self.ws.root)) >= _MAINTAIN_GAP:
            history.maintain(str(self.ws.root))

    # -- history -------------------------------------------------------------------------

    def block_history(self, ref: str, limit: int = 20, *, actor: Actor | None = None) -> list[HistoryEntry]:
        check_count(limit, "limit")
        name = self.resolve_block(ref, actor)
        block = self._read_block(name)
        return history.file_history(self.ws.git, f"blocks/{name}.md", limit, block.id if block else None)

    def block_blame(self, ref: str, *, actor: Actor | None = None) -> list[BlameLine]:
        """Each line of a block's value with the commit, author and kind that last wrote it."""
        name = self.resolve_block(ref, actor)
        rel = f"blocks/{name}.md"
        data = self.commits.read(rel)
        if data is None:
            raise NotFoundError(f"Block file {rel} no longer exists.")
        unmerged = self.ws.git.unmerged(rel)  # conflict markers: the block as last committed, as every reader gets it
        if unmerged:
            data = self.commits.committed(rel) or b""
        blamed = history.blame(self.ws.git, rel, value_first_line(data), committed=unmerged)
        if not blamed and data:  # never committed: every line is the file's own, not committed yet
            block = self.get_block(ref, actor=actor)
            return [BlameLine(line=n, text=text, version=None, author_name="(not committed yet)", author_email="",
                              author_kind="person", date=None) for n, text in enumerate(block.value.split("\n"), 1)
                    if block.value]
        return blamed

    def workspace_history(self, limit: int = 20) -> list[HistoryEntry]:
        """Recent commits of the whole workspace, newest first."""
        check_count(limit, "limit")
        return history.file_history(self.ws.git, ".", limit)

    def block_diff(self, ref: str, from_version: str, to_version: str | None = None, *,
                   actor: Actor | None = None) -> str:
        return history.diff(self.ws.git, f"blocks/{self.resolve_block(ref, actor)}.md", from_version, to_version)

    # -- agents --------------------------------------------------------------------------

    def list_agents(self) -> list[Agent]:
        """Every agent whose file can be read; a broken one is skipped (`agent_problems` says why)."""
        return [a for a in (self._try_agent(name) for name in self._agent_file_names()) if a is not None]

    def agent_problems(self) -> list[FileFormatError]:
        """Agent files that cannot be read and have no committed version to fall back on, with the reason."""
        problems = []
        for name in self._agent_file_names():
            try:
                self._read_agent(name)
            except FileFormatError as exc:
                problems.append(exc)
        return problems

    def _agent_file_names(self) -> list[str]:
        return sorted(p.name[:-3] for p in self.ws.agents_dir.glob("*.md") if is_name(p.name[:-3]))

    def _try_agent(self, name: str) -> Agent | None:
        try:
            return self._read_agent(name)
        except (FileFormatError, NotFoundError):
            return None

    def get_agent(self, ref: str) -> Agent:
        """An agent by id or name."""
        if not isinstance(ref, str) or not ref:
            raise InvalidInputError("Name an agent by its id or name.")
        if ref.startswith("agent-"):
            return self._agent_by_id(ref)
        validate_name(ref, "agent name")
        if not (self.ws.agents_dir / f"{ref}.md").exists():
            raise NotFoundError(f"No agent named '{ref}'. `memstore agent list` shows them.")
        return self._read_agent(ref)

    def _agent_by_id(self, agent_id: str) -> Agent:
        """The agent with `agent_id`: from the file it was last seen in, else by a scan of agents/."""
        hint = self._agent_names.get(agent_id)
        if hint is not None:
            try:
                agent = self._read_agent(hint)
            except (NotFoundError, FileFormatError):
                pass
            else:
                if agent.id == agent_id:
                    return agent
        found = next((a for a in self.list_agents() if a.id == agent_id), None)
        if found is None:
            raise NotFoundError(f"No agent with id {agent_id}.")
        return found

    def _read_agent(self, name: str) -> Agent:
        """An agent's file; a broken one as last committed (like blocks), else the reason it is refused."""
        rel = f"agents/{name}.md"
        try:
            data = self.commits.read(rel)
            if data is None:
                raise NotFoundError(f"No agent named '{name}'.")
            agent = self._agents.get_or_make((name, blob_id(data)), lambda: self._parse_agent(data, rel, name))
        except FileFormatError:
            committed = self._committed(rel)
            if committed is None:
                raise
            agent = self._agents.get_or_make((name, blob_id(committed)),
                                             lambda: self._parse_agent(committed, rel, name))
        self._agent_names[agent.id] = name
        return agent

    @staticmethod
    def _parse_agent(data: bytes, rel: str, name: str) -> Agent:
        try:
            validate_agent_name(name)
        except InvalidNameError as exc:  # a hand-made file, say agents/agent1.md.md
            raise FileFormatError(rel, None, str(exc)) from None
        agent = agent_from_file(data, rel)
        if agent.name != name:
            raise FileFormatError(rel, None, f"`name: {agent.name}` differs from the file name; an agent's name is "
                                             f"its file name")
        return agent

    def create_agent(
        self, name: str, model: str, *, block_ids: list[str] | None = None, tools: list[str] | None = None,
        system: str | None = None, description: str | None = None, api_base: str | None = None,
        include_base_tools: bool = True, new_blocks: list[Block] | None = None, actor: Actor | None = None,
    ) -> Agent:
        """Register an agent with its model, tools, persona and attached blocks.

        As in Letta, the agent has the base memory tools unless `include_base_tools` is
        False; `tools` adds to them. `new_blocks` (made with `new_block`) are created and
        attached first, as Letta's `memory_blocks`; everything is checked before anything is
        written, so a refusal leaves no half-made agent or stray block.
        """
        validate_agent_name(name)
        actor = actor or self.person
        check_agent_admin(actor, "create_agent")
        self._check_agent_name_free(name)
        existing = [self.get_block(ref) for ref in (block_ids or [])]
        check_unique_labels(name, [*(new_blocks or []), *existing])  # refused before anything is locked
        agent = Agent(
            id=f"agent-{uuid.uuid4()}", name=name, model=_check_model(model), tools=check_tools(tools, include_base_tools),
            blocks=[], description=check_optional_text(description),
            system=check_text(DEFAULT_SYSTEM if system is None else system, "system"),
            api_base=check_optional_text(api_base),
        )
        log_rel = _log_rel(agent)
        for _ in range(_NAME_TRIES):  # a name chosen for a new block may be taken before its lock is held
            made = self._new_block_files(new_blocks or [])
            rels = [agent.path, log_rel, *made, *(b.path for b in existing)]
            with self.commits.locked_files(rels) as now:  # the agent's file first, then its blocks'
                self._check_agent_name_free(name)  # again: the file's lock is its case twin's too
                if any(now[rel] is not None or self._taken(rel) for rel in made):
                    continue
                held = self._fresh_blocks(existing)
                check_unique_labels(name, [*made.values(), *held])  # as the blocks are now
                agent = agent.model_copy(update={"blocks": list(dict.fromkeys(b.id for b in [*made.values(),
                                                                                               *held]))})
                files: dict[str, tuple[bytes | None, bytes | None]] = {
                    rel: (render_block(block), None) for rel, block in made.items()}
                files[log_rel] = (None, now[log_rel])  # an earlier agent's of this name: a new agent starts empty
                files[agent.path] = (render_agent(agent), None)
                saved = self.commits.write_files(files, _ident(actor),
                                                 self._message("create_agent", agent, actor))
            if made:
                self.catalog.bump()
            return agent.model_copy(update={"version": saved.version, "pending": saved.pending})
        raise ConflictError(f"Other writers kept taking the file names for agent '{name}'s new blocks; try again.")

    def _check_agent_name_free(self, name: str) -> None:
        """Refuse a name taken, also in another case: the files would collide on macOS and Windows."""
        taken = next((n for n in self._agent_file_names() if n.lower() == name.lower()), None)
        if taken is not None:
            raise ConflictError(f"An agent named '{name}' already exists." if taken == name else
                                f"An agent named '{taken}' exists; names that differ only in case would collide "
                                "on macOS and Windows.")

    @contextlib.contextmanager
    def _holding_blocks(self, blocks: list[Block]) -> Iterator[list[Block]]:
        """Hold the files of `blocks` (sorted: no two writers wait for each other); yield them as they are
        now. A writer of an agent's block list holds the agent's file first, then these, until it has
        written: a block deleted or relabelled meanwhile is seen, never listed stale."""
        with self.commits.locks.files(b.path for b in blocks):
            yield self._fresh_blocks(blocks)

    def _fresh_blocks(self, blocks: list[Block]) -> list[Block]:
        """`blocks` as they are now (their files held by the caller); NotFoundError for one deleted since."""
        now = []
        for block in blocks:
            fresh = self._block_by_id(block.id)
            if fresh is None:
                raise NotFoundError(f"No block with id {block.id} (it was deleted).")
            now.append(fresh)
        return now

    def update_agent(
        self, ref: str, *, model: str | None = None, system: str | None = None, description: str | None = None,
        tools: list[str] | None = None, block_ids: list[str] | None = None, api_base: str | None = None,
        actor: Actor | None = None,
    ) -> Agent:
        """Change an agent's model, persona, description, tools or attached blocks, in one commit.

        `tools` is the whole list (the base tools are not added back); `block_ids` replaces the
        attached blocks, in that order, with labels unique among them.
        """
        changes: dict[str, Any] = {}
        if model is not None:
            changes["model"] = _check_model(model)
        if system is not None:
            changes["system"] = check_text(system, "system")
        if description is not None:
            changes["description"] = check_optional_text(description) or None
        if tools is not None:
            changes["tools"] = check_tools(tools, include_base_tools=False)
        if api_base is not None:
            changes["api_base"] = check_optional_text(api_base) or None
        agent = self.get_agent(ref)
        blocks = [self.get_block(b) for b in block_ids] if block_ids is not None else []

        def change(current: Agent, held: list[Block]) -> Agent:
            if block_ids is not None:
                check_unique_labels(agent.name, held)
                changes["blocks"] = list(dict.fromkeys(b.id for b in held))
            return current.model_copy(update=changes)

        return self._change_agent(agent.name, actor or self.person, "update_agent", change,
                                  subject=f"update_agent {agent.name}", hold=blocks)

    def agent_block(self, agent_ref: str, label: str) -> Block:
        """The block attached to an agent under `label` (Letta's error when there is none)."""
        entry = self._agent_entry(self.get_agent(agent_ref), label)
        return self.get_block(entry.name)  # its version as get_block gives it: none while a commit is pending

    def delete_agent(self, ref: str, *, actor: Actor | None = None) -> Agent:
        """Delete an agent and its conversation log (git's history keeps both), in one commit: a new agent of
        that name starts with no conversation, as in Letta, never with a deleted agent's."""
        actor = actor or self.person
        check_agent_admin(actor, "delete_agent")
        agent = self.get_agent(ref)
        log_rel = _log_rel(agent)
        with self.commits.locked_files([agent.path, log_rel]) as now:
            current = now[agent.path]
            if current is None or agent_from_file(current, agent.path).id != agent.id:
                raise NotFoundError(f"Agent '{agent.name}' ({agent.id}) was deleted meanwhile.")
            saved = self.commits.write_files({agent.path: (None, now[agent.path]), log_rel: (None, now[log_rel])},
                                             _ident(actor), self._message("delete_agent", agent, actor))
        return agent.model_copy(update={"version": saved.version, "pending": saved.pending})

    def attach_block(self, agent_ref: str, block_ref: str, *, actor: Actor | None = None) -> Agent:
        """Attach a block to an agent; its label must be new among the agent's blocks."""
        block = self.get_block(block_ref)

        def change(agent: Agent, held: list[Block]) -> Agent:
            if block.id in agent.blocks:
                return agent
            others = [b for b in (self._block_by_id(i) for i in agent.blocks) if b is not None]
            check_unique_labels(agent.name, [*others, *held])
            return agent.model_copy(update={"blocks": [*agent.blocks, block.id]})

        agent = self.get_agent(agent_ref)
        return self._change_agent(agent.name, actor or self.person, "attach_block", change,
                                  subject=f"attach_block {agent.name} {block.label}", hold=[block])

    def detach_block(self, agent_ref: str, block_ref: str, *, actor: Actor | None = None) -> Agent:
        agent = self.get_agent(agent_ref)
        block_id = block_ref if block_ref.startswith("block-") else self._resolve_for_agent_id(agent, block_ref)

        def change(current: Agent, _: list[Block]) -> Agent:
            if block_id not in current.blocks:
                raise NotFoundError(f"Block {block_ref} is not attached to agent '{current.name}'.")
            return current.model_copy(update={"blocks": [i for i in current.blocks if i != block_id]})

        return self._change_agent(agent.name, actor or self.person, "detach_block", change,
                                  subject=f"detach_block {agent.name} {block_ref}")

    def _resolve_for_agent_id(self, agent: Agent, ref: str) -> str:
        return self._agent_entry(agent, ref).id

    def agent_blocks(self, agent_ref: str) -> list[Block]:
        """The blocks attached to an agent, in its order (the files as they are now)."""
        agent = self.get_agent(agent_ref)
        return [b for b in (self._block_by_id(i) for i in agent.blocks) if b is not None]

    def memory_context(self, agent_ref: str, *, actor: Actor | None = None) -> str:
        """An agent's blocks in Letta's `<memory_blocks>` format, read from disk now."""
        self._check_own_agent(agent_ref, actor, "read the memory of")
        return render_memory_blocks(self.agent_blocks(agent_ref))

    def send_message(self, agent_ref: str, message: str, *, actor: Actor | None = None, **options: Any) -> TurnResult:
        """Run one turn of a built-in agent through litellm (see `memstore.agents.runtime`)."""
        from .agents import send_message

        self._check_own_agent(agent_ref, actor, "send messages to")
        return send_message(self, agent_ref, message, **options)

    def list_messages(self, agent_ref: str, limit: int = 50, *, actor: Actor | None = None) -> list[Message]:
        """The agent's last `limit` logged messages, oldest first."""
        from .agents import list_messages

        self._check_own_agent(agent_ref, actor, "read the conversation of")
        return list_messages(self, agent_ref, limit)

    def _check_own_agent(self, agent_ref: str, actor: Actor | None, what: str) -> None:
        """An agent-bound caller talks to and reads only its own agent (unless admin)."""
        if actor is None or not actor.agent_id or actor.admin:
            return
        agent = self.get_agent(agent_ref)
        if agent.id != actor.agent_id:
            raise NotAllowedError(f"Agent '{actor.name}' may not {what} agent '{agent.name}'.")

    def block_agents(self, block_ref: str, *, actor: Actor | None = None) -> list[Agent]:
        """The agents a block is attached to."""
        block_id = self.get_block(block_ref, actor=actor).id if actor or not block_ref.startswith("block-") \
            else block_ref
        return [a for a in self.list_agents() if block_id in a.blocks]

    def _change_agent(self, name: str, actor: Actor, op: str, change: Callable[[Agent, list[Block]], Agent], *,
                      subject: str, hold: list[Block] | None = None) -> Agent:
        """One commit of agent `name`'s file; `hold`: blocks it comes to list, held meanwhile (`_holding_blocks`)."""
        check_agent_admin(actor, op)
        rel = f"agents/{name}.md"
        with self.commits.locked(rel) as current, self._holding_blocks(hold or []) as held:
            if current is None:
                raise NotFoundError(f"No agent named '{name}'.")
            agent = self._agent_as_held(rel, current)
            assert agent is not None
            new = change(agent, held)
            message = commit_message(subject, {"Memstore-Op": op, "Memstore-Agent": actor.agent_id or agent.id,
                                               "Memstore-Author-Kind": actor.kind})
            saved = self.commits.write(rel, render_agent(new), current, _ident(actor), message)
            if saved.merged:  # a person's commit of the agent file landed meanwhile: the agent holds both
                new = agent_from_file(self.commits.committed(rel) or b"", rel)
        return new.model_copy(update={"version": saved.version, "pending": saved.pending})

    def _agent_as_held(self, rel: str, current: bytes | None) -> Agent | None:
        """The agent in file `rel`, which the caller holds (None: no file); a person's uncommitted edit of it
        is committed first, under their name, so the change lands on top of it."""
        if current is None:
            return None
        agent = agent_from_file(current, rel)
        if self.commits.hand_edited(rel, current):
            handedits.require_valid(self, rel, current)
            self.commits.adopt_hand_edit(rel, current, f"Hand edit {rel}",
                                         {"Memstore-Op": "hand_edit", "Memstore-Author-Kind": "person"})
        return agent


def _log_rel(agent: Agent) -> str:
    from .agents.log import log_path  # the agents package imports this module

    return log_path(agent)


def check_agent_admin(actor: Actor, op: str) -> None:
    """An agent (or a host acting as one) may not create, delete or rewire agents, itself included."""
    if actor.agent_id and not actor.admin:
        raise NotAllowedError(f"Agent '{actor.name}' may not {op.replace('_', ' ')}: only a person or an admin "
                              "may change which agents exist and which blocks they have.")


def _check_policy_change(actor: Actor, block: Block, changes: dict[str, Any]) -> None:
    """Refuse an agent's change of `read_only` or `limit`: a policy block must stay locked."""
    if not actor.is_agent or actor.admin:
        return
    for key in ("read_only", "limit"):
        if key in changes and changes[key] != getattr(block, key):
            raise NotAllowedError(
                f"Changing `{key}` of block '{block.label}' is not allowed for agent '{actor.name}': "
                "only a person or an admin may change a block's read_only flag or limit."
            )


def new_block(label: str, value: str = "", *, limit: int | None = None, read_only: bool = False,
              description: str | None = None, metadata: dict[str, Any] | None = None) -> Block:
    """A block as `create_block` would make it, checked but not yet written (its file name comes then)."""
    validate_name(label)
    limit = check_limit_arg(DEFAULT_LIMIT if limit is None else limit)
    block = Block(
        id=f"block-{uuid.uuid4()}", label=label, value=check_text(value, "value"), limit=limit,
        read_only=check_bool(read_only, "read_only"), description=check_optional_text(description),
        metadata=check_metadata(metadata), name=label,
    )
    edits.check_limit(label, block.value, limit)
    return block


def _check_model(model: object) -> str:
    if not isinstance(model, str) or not model.strip() or "\n" in model:
        raise InvalidInputError("`model` must be a model name such as 'openai/gpt-4o-mini'.")
    return model.strip()


def _ident(actor: Actor) -> Ident:
    return Ident(actor.name, actor.email)


