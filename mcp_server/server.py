"""memstore's MCP server: every tool and resource is a few lines that call the core.

The server holds one `Store`. Who edits is decided per request: the agent given with
`--as`, or else the host's client name from the MCP handshake. Either way the caller is
an agent to the core, so read-only blocks bind it; `--admin` alone lets it change a
block's `read_only` flag or `limit`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import Resource as MCPResource
from mcp.types import ToolAnnotations
from pydantic import Field

import memstore
from memstore import Actor, Agent, Block, EditResult, HistoryEntry, MemstoreError, Store
from memstore.errors import os_error_text
from memstore.agents.messages import Message, TurnResult
from memstore.blockfile import render_agent, render_block
from memstore.handedits import Status, status

from .notify import Notifier

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_HOST_NAME = "mcp-host"
BLOCK_URI = "memstore://blocks/{name}"
AGENT_URI = "memstore://agents/{name}"

INSTRUCTIONS = """\
memstore is shared memory: blocks of text that several agents and people read and edit.
Every edit is a git commit authored by you. Use memory_insert to add lines (additive,
safe alongside other writers), memory_replace to change text that occurs exactly once,
memory_rethink to rewrite a whole block. Read-only blocks are policies: read, never edit.
"""

BlockRef = Annotated[str, Field(description="A block's id (block-…), file name or unambiguous label.")]
AgentRef = Annotated[str, Field(description="An agent's id (agent-…) or name.")]
Label = Annotated[str, Field(description="The label of the memory block to edit.")]
Version = Annotated[str, Field(description="A commit id (as given by block_history) or a prefix of one.")]
Expected = Annotated[str | None, Field(description=(
    "Optional: apply only if the block is still at this version (the `version` get_block or the last edit "
    "returned); if someone changed it since, the edit is refused and nothing is written."))]

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
ADD = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
CHANGE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
ADD_OPEN = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)
SET = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


@dataclass(frozen=True)
class ServerConfig:
    """How `memstore serve` was started: whom edits are attributed to, and admin rights."""

    as_agent: str | None = None
    admin: bool = False


def core_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a core error into a tool error that carries its message to the client."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MemstoreError as exc:
            raise ToolError(str(exc)) from None
        except OSError as exc:  # the system refused: a full disk, a read-only file system
            raise ToolError(f"memstore could not complete this: {os_error_text(exc)}") from None

    return call


class MemstoreServer(MCPServer[Any]):
    """An MCP server over one memstore workspace."""

    def __init__(self, store: Store, config: ServerConfig | None = None, *, notifications: bool = True) -> None:
        super().__init__("memstore", version=memstore.__version__, instructions=INSTRUCTIONS, log_level="WARNING")
        self.store = store
        self.config = config or ServerConfig()
        self._agent_actor = store.get_agent(self.config.as_agent).actor() if self.config.as_agent else None
        _register_block_tools(self)
        _register_edit_tools(self)
        _register_history_tools(self)
        _register_agent_tools(self)
        _register_resources(self)
        self.notifier = Notifier(self._subscriptions, resource_uri)
        if notifications:  # only a server that watches the workspace can keep the promise
            self.notifier.install(self._lowlevel_server)

    def actor(self, ctx: Context | None) -> Actor:
        """The agent this request acts as: `--as AGENT`, else the host named in the handshake."""
        actor = self._agent_actor or Actor.host(_client_name(ctx))
        return actor.with_admin(self.config.admin)

    async def list_resources(self) -> list[MCPResource]:
        """The static resources plus one per block (the agent's own with --as) and one per agent."""
        return [*await super().list_resources(), *await anyio.to_thread.run_sync(self._workspace_resources)]

    def _workspace_resources(self) -> list[MCPResource]:
        found = [MCPResource(uri=BLOCK_URI.format(name=b.name), name=b.name, title=b.label,
                             description=b.description, mime_type="text/markdown")
                 for b in self.store.list_blocks(actor=self.actor(None))]
        found += [MCPResource(uri=AGENT_URI.format(name=a.name), name=f"agent {a.name}", title=a.name,
                              description=a.description, mime_type="text/markdown")
                  for a in self.store.list_agents()]
        return found


def resource_uri(rel: str) -> str | None:
    """The resource URI of a workspace file (`blocks/x.md` -> `memstore://blocks/x`), if it is one."""
    for folder, template in (("blocks/", BLOCK_URI), ("agents/", AGENT_URI)):
        name = rel.removeprefix(folder).removesuffix(".md")
        if rel.startswith(folder) and rel.endswith(".md") and "/" not in name:
            return template.format(name=name)
    return None


def _client_name(ctx: Context | None) -> str:
    try:
        params = ctx.session.client_params if ctx is not None else None
    except (AttributeError, ValueError):  # no request in flight
        return DEFAULT_HOST_NAME
    info = getattr(params, "client_info", None)
    return getattr(info, "name", None) or DEFAULT_HOST_NAME


def _register_block_tools(server: MemstoreServer) -> None:
    store = server.store

    @server.tool(annotations=READ)
    @core_errors
    def list_blocks(ctx: Context) -> list[Block]:
        """List the memory blocks (id, label, value, limit, read_only, …): all, or the agent's own with --as."""
        return store.list_blocks(actor=server.actor(ctx))

    @server.tool(annotations=READ)
    async def get_block(block: BlockRef, ctx: Context, version: Version | None = None) -> Block:
        """Read one memory block, as it is now or as of an earlier version."""
        read = core_errors(functools.partial(store.get_block, block, version, actor=server.actor(ctx)))
        if version is None:
            return read()  # a file read: cheaper on the event loop than a hop to a worker thread
        return await anyio.to_thread.run_sync(read)  # asks git: keep the loop free

    @server.tool(annotations=ADD)
    @core_errors
    def create_block(
        label: str, ctx: Context, value: str = "", limit: int | None = None, read_only: bool = False,
        description: str | None = None, metadata: dict[str, Any] | None = None,
    ) -> Block:
        """Create a memory block (default limit 20,000 characters). Attach it to agents with attach_block."""
        return store.create_block(label, value, limit=limit, read_only=read_only, description=description,
                                  metadata=metadata, actor=server.actor(ctx))

    @server.tool(annotations=SET)
    @core_errors
    def update_block(
        block: BlockRef, ctx: Context, label: str | None = None, description: str | None = None,
        limit: int | None = None, read_only: bool | None = None, metadata: dict[str, Any] | None = None,
        expected_version: Expected = None,
    ) -> EditResult:
        """Change a block's label, description or metadata (read_only and limit need an admin server)."""
        return store.update_block(block, label=label, description=description, limit=limit, read_only=read_only,
                                  metadata=metadata, actor=server.actor(ctx), expected_version=expected_version)

    @server.tool(annotations=CHANGE)
    @core_errors
    def delete_block(block: BlockRef, ctx: Context) -> Block:
        """Delete a block and detach it from every agent; its history stays in git."""
        return store.delete_block(block, actor=server.actor(ctx))

    @server.tool(annotations=READ)
    @core_errors
    def workspace_status() -> Status:
        """Hand edits not yet committed, invalid block/agent files with the reason, the watcher's last error."""
        return status(store)

    @server.tool(annotations=READ)
    @core_errors
    def list_block_agents(block: BlockRef, ctx: Context) -> list[Agent]:
        """List the agents a block is attached to."""
        return store.block_agents(block, actor=server.actor(ctx))


def _register_edit_tools(server: MemstoreServer) -> None:
    store = server.store

    @server.tool(annotations=ADD)
    @core_errors
    def memory_insert(
        label: Label, new_str: Annotated[str, Field(description="The text to insert.")], ctx: Context,
        insert_line: Annotated[int, Field(description="Insert after this line: 0 for the top, -1 for the end.")] = -1,
        expected_version: Expected = None,
    ) -> EditResult:
        """Insert text into a memory block after a given line. Additive: other writers' text is never lost."""
        return store.memory_insert(label, new_str, insert_line, actor=server.actor(ctx),
                                   expected_version=expected_version)

    @server.tool(annotations=CHANGE)
    @core_errors
    def memory_replace(
        label: Label, old_str: Annotated[str, Field(description="Text that occurs exactly once in the block.")],
        new_str: Annotated[str, Field(description="The text to put in its place (may be empty).")], ctx: Context,
        expected_version: Expected = None,
    ) -> EditResult:
        """Replace text that occurs exactly once in a memory block; refused if it is missing or repeated."""
        return store.memory_replace(label, old_str, new_str, actor=server.actor(ctx),
                                    expected_version=expected_version)

    @server.tool(annotations=SET)
    @core_errors
    def memory_rethink(
        label: Label, new_memory: Annotated[str, Field(description="The block's whole new value.")], ctx: Context,
        expected_version: Expected = None,
    ) -> EditResult:
        """Rewrite a memory block's whole value (the old value stays in its history)."""
        return store.memory_rethink(label, new_memory, actor=server.actor(ctx), expected_version=expected_version)

    @server.tool(annotations=ADD)
    @core_errors
    def core_memory_append(label: Label, content: str, ctx: Context, expected_version: Expected = None) -> EditResult:
        """Append text to a memory block on a new line (Letta's older tool)."""
        return store.core_memory_append(label, content, actor=server.actor(ctx), expected_version=expected_version)

    @server.tool(annotations=CHANGE)
    @core_errors
    def core_memory_replace(label: Label, old_content: str, new_content: str, ctx: Context,
                            expected_version: Expected = None) -> EditResult:
        """Replace every occurrence of old_content in a memory block (Letta's older tool)."""
        return store.core_memory_replace(label, old_content, new_content, actor=server.actor(ctx),
                                         expected_version=expected_version)


def _register_history_tools(server: MemstoreServer) -> None:
    store = server.store

    @server.tool(annotations=READ)
    @core_errors
    def block_history(block: BlockRef, ctx: Context,
                      limit: Annotated[int, Field(ge=1, le=1000)] = 20) -> list[HistoryEntry]:
        """A block's changes, newest first: version (commit id), author, date, operation, message."""
        return store.block_history(block, limit, actor=server.actor(ctx))

    @server.tool(annotations=READ)
    @core_errors
    def block_diff(block: BlockRef, from_version: Version, ctx: Context, to_version: Version | None = None) -> str:
        """A unified diff of a block between two versions (to_version omitted: the block as it is now)."""
        return store.block_diff(block, from_version, to_version, actor=server.actor(ctx)) or "(no changes)"

    @server.tool(annotations=SET)
    @core_errors
    def revert_block(block: BlockRef, version: Version, ctx: Context, expected_version: Expected = None) -> EditResult:
        """Set a block back to its value at an earlier version, as a new commit."""
        return store.revert_block(block, version, actor=server.actor(ctx), expected_version=expected_version)


def _register_agent_tools(server: MemstoreServer) -> None:
    store = server.store

    @server.tool(annotations=READ)
    @core_errors
    def list_agents() -> list[Agent]:
        """List the registered agents, with their models, tools and attached block ids."""
        return store.list_agents()

    @server.tool(annotations=READ)
    @core_errors
    def get_agent(agent: AgentRef) -> Agent:
        """Read one agent: model, tools, attached block ids, persona."""
        return store.get_agent(agent)

    @server.tool(annotations=ADD)
    @core_errors
    def create_agent(
        name: str, model: Annotated[str, Field(description="A litellm model name, e.g. openai/gpt-4o-mini.")],
        ctx: Context, block_ids: list[str] | None = None, tools: list[str] | None = None,
        system: str | None = None, description: str | None = None, include_base_tools: bool = True,
    ) -> Agent:
        """Register a built-in agent with its model, tools, persona and attached blocks.

        As in Letta, it has the base memory tools (memory_insert, memory_replace,
        conversation_search) unless include_base_tools is false; `tools` adds to them.
        """
        return store.create_agent(name, model, block_ids=block_ids, tools=tools, system=system,
                                  description=description, include_base_tools=include_base_tools,
                                  actor=server.actor(ctx))

    @server.tool(annotations=CHANGE)
    @core_errors
    def delete_agent(agent: AgentRef, ctx: Context) -> Agent:
        """Delete an agent (its blocks stay)."""
        return store.delete_agent(agent, actor=server.actor(ctx))

    @server.tool(annotations=SET)
    @core_errors
    def attach_block(agent: AgentRef, block: BlockRef, ctx: Context) -> Agent:
        """Attach a block to an agent; its label must not clash with the agent's other blocks."""
        return store.attach_block(agent, block, actor=server.actor(ctx))

    @server.tool(annotations=SET)
    @core_errors
    def detach_block(agent: AgentRef, block: BlockRef, ctx: Context) -> Agent:
        """Detach a block from an agent (the block itself stays)."""
        return store.detach_block(agent, block, actor=server.actor(ctx))

    @server.tool(annotations=ADD_OPEN)
    @core_errors
    def send_message(agent: AgentRef, message: str, ctx: Context) -> TurnResult:
        """Send a message to a built-in agent; returns its turn: reasoning, tool calls and returns, reply, usage."""
        return store.send_message(agent, message, actor=server.actor(ctx))

    @server.tool(annotations=READ)
    @core_errors
    def list_messages(agent: AgentRef, ctx: Context,
                      limit: Annotated[int, Field(ge=1, le=1000)] = 50) -> list[Message]:
        """Read a built-in agent's conversation log, oldest first (the last `limit` messages)."""
        return store.list_messages(agent, limit, actor=server.actor(ctx))


def _register_resources(server: MemstoreServer) -> None:
    store = server.store

    @server.resource(BLOCK_URI, mime_type="text/markdown", description="A memory block file: front matter and value.")
    def block_resource(name: str) -> str:
        return _resource(lambda: render_block(store.get_block(name, actor=server.actor(None))).decode())

    @server.resource(AGENT_URI, mime_type="text/markdown", description="An agent file: settings and persona.")
    def agent_resource(name: str) -> str:
        return _resource(lambda: render_agent(store.get_agent(name)).decode())

    @server.prompt(name="memory_context", description="An agent's memory blocks in Letta's <memory_blocks> format.")
    def memory_context(agent: str) -> str:
        try:
            return store.memory_context(agent, actor=server.actor(None))
        except MemstoreError as exc:
            raise ValueError(str(exc)) from None


def _resource(read: Callable[[], str]) -> str:
    try:
        return read()
    except MemstoreError as exc:
        raise ResourceNotFoundError(str(exc)) from None
