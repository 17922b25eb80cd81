"""`memstore …`: the command line over the core. Errors print one line and exit 1."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from .errors import InvalidInputError, MemstoreError, os_error_text
from .handedits import file_problem
from .models import Actor, Agent, BlameLine, Block, EditResult, HistoryEntry
from .store import Store
from .workspace import ENV_WORKSPACE

F = TypeVar("F", bound=Callable[..., Any])


_WORKSPACE_HELP = (f"The workspace folder (default: ${ENV_WORKSPACE}, else the workspace the current folder "
                   "is in, as git finds its repository).")


def workspace_option(func: F) -> F:
    """Give a command `--workspace DIR`; also accepted before the command (`memstore -w DIR block list`)."""
    return click.option(
        "--workspace", "-w", "workspace", type=click.Path(file_okay=False),  # $MEMSTORE_WORKSPACE: read by the core
        help=_WORKSPACE_HELP, callback=_workspace_value,
    )(func)


def _workspace_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The command's own `-w` wins, then the one given before the command, then $MEMSTORE_WORKSPACE."""
    if ctx.get_parameter_source(param.name or "workspace") == click.core.ParameterSource.COMMANDLINE:
        return value
    given = (ctx.find_root().params or {}).get("workspace")
    return given or value


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def as_option(func: F) -> F:
    return click.option("--as", "as_agent", metavar="AGENT",
                        help="Act as this agent: its blocks only, read-only enforced, authored by it.")(func)


def handle_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MemstoreError as exc:
            _fail(cli_text(exc))
        except OSError as exc:  # the system refused: a full disk, a read-only file system
            _fail(os_error_text(exc))
    return wrapper  # type: ignore[return-value]


def cli_text(exc: MemstoreError) -> str:
    """A refusal as a sentence: Letta's texts open with `Error ` (kept for MCP and the API), not here."""
    return re.sub(r"^Error:? (?=[A-Z])", "", str(exc))


def _fail(message: str) -> NoReturn:
    click.echo(f"memstore: error: {message}", err=True)
    sys.exit(1)


def _actor(store: Store, as_agent: str | None) -> Actor | None:
    return store.get_agent(as_agent).actor() if as_agent else None


def _emit(data: Any, as_json: bool, text: Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(text())


def _block_text(block: Block) -> str:
    flags = " read-only" if block.read_only else ""
    head = [f"{block.label}  ({block.id}, {block.path}){flags}",
            f"{block.chars_current}/{block.limit} characters" + (f", version {block.version[:12]}" if block.version else "")]
    if block.description:
        head.append(f"description: {block.description}")
    if block.metadata:
        head.append(f"metadata: {json.dumps(block.metadata, ensure_ascii=False, default=str)}")
    return "\n".join(head) + "\n---\n" + block.value


def _agent_text(agent: Agent, store: Store) -> str:
    labels = []
    for block_id in agent.blocks:
        try:
            labels.append(store.get_block(block_id).label)
        except MemstoreError:
            labels.append(f"{block_id} (missing)")
    lines = [f"{agent.name}  ({agent.id})", f"model: {agent.model}", f"tools: {', '.join(agent.tools) or '-'}",
             f"blocks: {', '.join(labels) or '-'}"]
    if agent.description:
        lines.append(f"description: {agent.description}")
    return "\n".join(lines) + "\n---\n" + agent.system


def _commit_text(version: str | None, pending: str | None) -> str:
    """What became of a change's commit, as the edit commands say it."""
    if pending:
        return (f"written, commit pending: {pending}. The next memstore command (or a running `serve`/`watch`) "
                "commits it.")
    return f"committed {version[:12]}" if version else "nothing to commit"


def _edit_text(result: EditResult) -> str:
    size = f"({result.block.chars_current}/{result.block.limit} characters)"
    if result.pending or not result.version:
        return (f"{result.op} {result.block.label}: written, commit pending {size}: {result.pending}. "
                "The next memstore command (or a running `serve`/`watch`) commits it.")
    return f"{result.op} {result.block.label}: committed {result.version[:12]} {size}"


def _history_text(entries: list[HistoryEntry]) -> str:
    """One aligned line per commit: version, date, kind of author, author, message."""
    rows = [(e.version[:12], _short_date(e.date), e.author_kind, _clip(e.author_name, 24), e.message)
            for e in entries]
    return _columns(rows)


def _blame_text(lines: list[BlameLine]) -> str:
    rows = [((b.version or "")[:12] or "-" * 12, _short_date(b.date), b.author_kind, _clip(b.author_name, 24),
             f"{b.line:>3}  {b.text}") for b in lines]
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned columns (the last one unpadded)."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]) for r in rows)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_date(iso: str | None) -> str:
    """`2026-12-04 12:15` from an ISO 8601 date (in the writer's own offset)."""
    return iso[:16].replace("T", " ") if iso else ""


expected_option = click.option(
    "--expected-version", "expected_version", metavar="VERSION",
    help="Apply only if the block is still at VERSION (a commit id, as `block show --json` gives it); "
         "if it changed since, refuse and write nothing.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memstore")
@click.option("--workspace", "-w", "workspace", type=click.Path(file_okay=False), help=_WORKSPACE_HELP)
def main(workspace: str | None) -> None:
    """Shared memory blocks for LLM agents, kept as markdown files in a git repository.

    Every edit is one git commit authored by whoever made it: an agent, a host or you.

    \b
    Examples:
      memstore init ~/my-memory                 a new workspace (or make a git repository one)
      memstore setup claude-desktop -w ~/my-memory
                                                add it to Claude Desktop (or claude-code, cursor, vscode)
      memstore block create organization "Organization: Letta" --limit 4000
      memstore block insert organization "Founded in 2023." --as agent1
      memstore block show organization          the value, its limit and version
      memstore log                              who changed what: agent, host or person
      memstore blame organization               who wrote each line
      memstore agent create agent1 --model openai/gpt-4o-mini --block organization
      memstore agent send agent1 "What do we know about Letta?"
      memstore serve --http                     MCP at /mcp and Letta's REST API at /v1
      memstore demo                             Letta's shared-memory tutorial, offline
    """
    logging.basicConfig(level=logging.WARNING, format="memstore: %(message)s")  # the core's warnings, named


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@handle_errors
def init(directory: str) -> None:
    """Create a new workspace in DIRECTORY (a git repository with its first commit)."""
    store = Store.init(directory)
    click.echo(f"Initialized memstore workspace in {store.ws.root}")


@main.group()
def block() -> None:
    """Create, read, edit and review memory blocks."""


@block.command("list")
@workspace_option
@json_option
@handle_errors
def block_list(workspace: str | None, as_json: bool) -> None:
    """List blocks (and any file that does not parse)."""
    store = Store.open(workspace)
    blocks = store.list_blocks()
    for problem in store.problems():
        click.echo(f"warning: {problem}", err=True)
    _emit([b.model_dump(exclude={"value"}) for b in blocks], as_json, lambda: "\n".join(
        f"{b.label:<24} {b.chars_current:>6}/{b.limit:<6} {'ro' if b.read_only else 'rw'}  {b.id}  {b.path}"
        for b in blocks) or "(no blocks)")


@block.command("show")
@click.argument("ref")
@click.option("--version", "version", help="Show the block as of this commit.")
@workspace_option
@json_option
@handle_errors
def block_show(ref: str, version: str | None, workspace: str | None, as_json: bool) -> None:
    """Show a block by id, file name or label."""
    store = Store.open(workspace)
    found = store.get_block(ref, version)
    problem = None if version else file_problem(store, found.path)
    if problem:
        click.echo(f"memstore: warning: {problem}. Showing the last committed version.", err=True)
    _emit(found.model_dump(), as_json, lambda: _block_text(found))


def _read_value(value: str | None, file: Any) -> str:
    """The value from the argument or `--file`, which is read as UTF-8 exactly (line endings kept, as the API)."""
    if value is not None and file is not None:
        raise click.UsageError("give the value as an argument or with --file, not both")
    if file is None:
        return value or ""
    data = file.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInputError(f"--file {file.name}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line "
                                f"{line}); save it as UTF-8 first.") from None


@block.command("create")
@click.argument("label")
@click.argument("value", required=False)
@click.option("--file", "file", type=click.File("rb"), help="Read the value from a file ('-': stdin).")
@click.option("--limit", type=int, help="Character limit of the value (default 20000).")
@click.option("--read-only", is_flag=True, help="Agents may read but not edit this block.")
@click.option("--description", help="What the block is for (agents see it).")
@click.option("--metadata", help="Free-form metadata as a JSON object.")
@workspace_option
@json_option
@handle_errors
def block_create(label: str, value: str | None, file: Any, limit: int | None, read_only: bool,
                 description: str | None, metadata: str | None, workspace: str | None, as_json: bool) -> None:
    """Create a block LABEL with an optional VALUE."""
    store = Store.open(workspace)
    created = store.create_block(label, _read_value(value, file), limit=limit, read_only=read_only,
                                 description=description, metadata=_json_arg(metadata))
    twins = [f"blocks/{name}.md" for name in store.catalog.snapshot().by_label.get(created.label, [])
             if f"blocks/{name}.md" != created.path]
    shared = (f"\nnote: {', '.join(sorted(twins))} {'has' if len(twins) == 1 else 'have'} the label "
              f"{created.label!r} too; name this block by its id or its file name "
              f"({created.path[len('blocks/'):-len('.md')]})" if twins else "")
    _emit(created.model_dump(), as_json, lambda: f"created {created.label} ({created.id}) in {created.path}: "
                                             f"{_commit_text(created.version, created.pending)}{shared}")


def _json_arg(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--metadata") from None


@block.command("update")
@click.argument("ref")
@click.option("--label", help="A new label (agents see it; unique among each agent's blocks).")
@click.option("--description", help="What the block is for (agents see it; '' removes it).")
@click.option("--limit", type=int, help="A new character limit (not below the value's length).")
@click.option("--read-only/--writable", "read_only", default=None,
              help="Lock the block for agents, or let them edit it again.")
@click.option("--metadata", help="Replace metadata with this JSON object.")
@expected_option
@workspace_option
@json_option
@handle_errors
def block_update(ref: str, label: str | None, description: str | None, limit: int | None,
                 read_only: bool | None, metadata: str | None, expected_version: str | None, workspace: str | None,
                 as_json: bool) -> None:
    """Change a block's label, description, limit, read-only flag or metadata."""
    result = Store.open(workspace).update_block(ref, label=label, description=description, limit=limit,
                                                read_only=read_only, metadata=_json_arg(metadata),
                                                expected_version=expected_version)
    _emit(result.model_dump(), as_json, lambda: _edit_text(result))


@block.command("delete")
@click.argument("ref")
@workspace_option
@handle_errors
def block_delete(ref: str, workspace: str | None) -> None:
    """Delete a block (its history stays in git) and detach it from every agent."""
    gone = Store.open(workspace).delete_block(ref)
    click.echo(f"deleted {gone.label} ({gone.id}): {_commit_text(gone.version, gone.pending)}")


def _edit_command(name: str, help_text: str, *params: Callable[[F], F]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for param in reversed(params):
            func = param(func)
        return block.command(name, help=help_text)(
            json_option(as_option(workspace_option(expected_option(handle_errors(func))))))
    return decorate


@_edit_command("insert", "Insert TEXT after line --line (0: top; default -1: end).",
               click.argument("label"), click.argument("text"),
               click.option("--line", "insert_line", type=int, default=-1,
                            help="Insert after this line: 0 for the top, -1 (default) for the end."))
def block_insert(label: str, text: str, insert_line: int, workspace: str | None, as_agent: str | None,
                expected_version: str | None, as_json: bool) -> None:
    store = Store.open(workspace)
    result = store.memory_insert(label, text, insert_line, actor=_actor(store, as_agent),
                                 expected_version=expected_version)
    _emit(result.model_dump(), as_json, lambda: _edit_text(result))


@_edit_command("replace", "Replace the one occurrence of OLD with NEW.",
               click.argument("label"), click.argument("old"), click.argument("new"))
def block_replace(label: str, old: str, new: str, workspace: str | None, as_agent: str | None,
                expected_version: str | None, as_json: bool) -> None:
    store = Store.open(workspace)
    result = store.memory_replace(label, old, new, actor=_actor(store, as_agent),
                                  expected_version=expected_version)
    _emit(result.model_dump(), as_json, lambda: _edit_text(result))


@_edit_command("rethink", "Overwrite the whole value with TEXT.", click.argument("label"), click.argument("text"))
def block_rethink(label: str, text: str, workspace: str | None, as_agent: str | None,
                expected_version: str | None, as_json: bool) -> None:
    store = Store.open(workspace)
    result = store.memory_rethink(label, text, actor=_actor(store, as_agent),
                                  expected_version=expected_version)
    _emit(result.model_dump(), as_json, lambda: _edit_text(result))


@_edit_command("append", "Append TEXT on a new line (Letta's core_memory_append).",
               click.argument("label"), click.argument("text"))
def block_append(label: str, text: str, workspace: str | None, as_agent: str | None,
                expected_version: str | None, as_json: bool) -> None:
    store = Store.open(workspace)
    result = store.core_memory_append(label, text, actor=_actor(store, as_agent),
                                      expected_version=expected_version)
    _emit(result.model_dump(), as_json, lambda: _edit_text(result))


@_edit_command("replace-all", "Replace every occurrence of OLD with NEW (Letta's core_memory_replace).",
               click.argument("label"), click.argument("old"), click.argument("new"))
def block_replace_all(label: str, old: str, new: str, workspace: str | None, as_agent: str | None,
                expected_version: str | None, as_json: bool) -> None:
    store = Store.open(workspace)
    result = store.core_memory_replace(label, old, new, actor=_actor(store, as_agent),
                                       expected_version=expected_version)
    _emit(result.model_dump(), as_json, lambda: _edit_text(result))


@block.command("history")
@click.argument("ref")
@click.option("-n", "--limit", type=int, default=20, show_default=True, help="How many commits to show, newest first.")
@workspace_option
@json_option
@handle_errors
def block_history(ref: str, limit: int, workspace: str | None, as_json: bool) -> None:
    """List the commits that changed a block, newest first."""
    entries = Store.open(workspace).block_history(ref, limit)
    _emit([e.model_dump() for e in entries], as_json, lambda: _history_text(entries))


@block.command("diff")
@click.argument("ref")
@click.argument("from_version")
@click.argument("to_version", required=False)
@workspace_option
@handle_errors
def block_diff(ref: str, from_version: str, to_version: str | None, workspace: str | None) -> None:
    """Show what changed in a block between two versions (default: up to now)."""
    text = Store.open(workspace).block_diff(ref, from_version, to_version)
    if text:  # git's diff as GitPython gives it, without its last newline: the shell's prompt starts a line
        click.echo(text.rstrip("\n"))


@block.command("revert")
@click.argument("ref")
@click.argument("version")
@expected_option
@workspace_option
@json_option
@handle_errors
def block_revert(ref: str, version: str, expected_version: str | None, workspace: str | None, as_json: bool) -> None:
    """Make a block as it was at VERSION, in a new commit."""
    result = Store.open(workspace).revert_block(ref, version, expected_version=expected_version)
    _emit(result.model_dump(), as_json, lambda: _edit_text(result))


@block.command("agents")
@click.argument("ref")
@workspace_option
@handle_errors
def block_agents(ref: str, workspace: str | None) -> None:
    """List the agents a block is attached to."""
    agents = Store.open(workspace).block_agents(ref)
    click.echo("\n".join(f"{a.name}  ({a.id})" for a in agents) or "(attached to no agent)")


@main.group()
def agent() -> None:
    """Register agents and attach blocks to them."""


@agent.command("list")
@workspace_option
@json_option
@handle_errors
def agent_list(workspace: str | None, as_json: bool) -> None:
    """List agents."""
    agents = Store.open(workspace).list_agents()
    _emit([a.model_dump() for a in agents], as_json, lambda: "\n".join(
        f"{a.name:<20} {a.model:<28} {len(a.blocks)} block(s)  {a.id}" for a in agents) or "(no agents)")


@agent.command("show")
@click.argument("ref")
@workspace_option
@json_option
@handle_errors
def agent_show(ref: str, workspace: str | None, as_json: bool) -> None:
    """Show an agent by name or id."""
    store = Store.open(workspace)
    found = store.get_agent(ref)
    _emit(found.model_dump(), as_json, lambda: _agent_text(found, store))


@agent.command("create")
@click.argument("name")
@click.option("--model", required=True, help="A litellm model name, e.g. openai/gpt-4o-mini.")
@click.option("--block", "blocks", multiple=True, help="Attach this block (repeatable).")
@click.option("--tool", "tools", multiple=True,
              help="Give this tool besides the base tools (repeatable), e.g. web_search or memory_rethink.")
@click.option("--no-base-tools", is_flag=True,
              help="Leave out Letta's base tools (memory_insert, memory_replace, conversation_search).")
@click.option("--system", help="The system prompt / persona.")
@click.option("--description", help="What the agent is for (shown in listings and to Letta clients).")
@click.option("--api-base", help="A provider base URL for this agent's model.")
@workspace_option
@json_option
@handle_errors
def agent_create(name: str, model: str, blocks: tuple[str, ...], tools: tuple[str, ...], no_base_tools: bool,
                 system: str | None, description: str | None, api_base: str | None, workspace: str | None,
                 as_json: bool) -> None:
    """Register agent NAME (with Letta's base memory tools unless --no-base-tools)."""
    created = Store.open(workspace).create_agent(name, model, block_ids=list(blocks), tools=list(tools),
                                                 include_base_tools=not no_base_tools, system=system,
                                                 description=description, api_base=api_base)
    _emit(created.model_dump(), as_json, lambda: f"created agent {created.name} ({created.id}): "
                                             f"{_commit_text(created.version, created.pending)}")


@agent.command("delete")
@click.argument("ref")
@workspace_option
@handle_errors
def agent_delete(ref: str, workspace: str | None) -> None:
    """Delete an agent (its history stays in git)."""
    gone = Store.open(workspace).delete_agent(ref)
    click.echo(f"deleted agent {gone.name} ({gone.id}): {_commit_text(gone.version, gone.pending)}")


@agent.command("attach")
@click.argument("agent_ref")
@click.argument("block_ref")
@workspace_option
@handle_errors
def agent_attach(agent_ref: str, block_ref: str, workspace: str | None) -> None:
    """Attach a block to an agent."""
    changed = Store.open(workspace).attach_block(agent_ref, block_ref)
    click.echo(f"{changed.name} now has {len(changed.blocks)} block(s): "
               f"{_commit_text(changed.version, changed.pending)}")


@agent.command("detach")
@click.argument("agent_ref")
@click.argument("block_ref")
@workspace_option
@handle_errors
def agent_detach(agent_ref: str, block_ref: str, workspace: str | None) -> None:
    """Detach a block from an agent."""
    changed = Store.open(workspace).detach_block(agent_ref, block_ref)
    click.echo(f"{changed.name} now has {len(changed.blocks)} block(s): "
               f"{_commit_text(changed.version, changed.pending)}")


@main.command("log")
@click.argument("ref", required=False)
@click.option("-n", "--limit", type=int, default=20, show_default=True, help="How many commits to show, newest first.")
@workspace_option
@json_option
@handle_errors
def log_command(ref: str | None, limit: int, workspace: str | None, as_json: bool) -> None:
    """Recent changes: of one block (REF), or of the whole workspace."""
    store = Store.open(workspace)
    entries = store.block_history(ref, limit) if ref else store.workspace_history(limit)
    _emit([e.model_dump() for e in entries], as_json, lambda: _history_text(entries) or "(no history)")


@main.command("blame")
@click.argument("ref")
@workspace_option
@json_option
@handle_errors
def blame_command(ref: str, workspace: str | None, as_json: bool) -> None:
    """Who last wrote each line of a block's value, and when: an agent, a host or a person.

    \b
    Example:
      memstore blame organization
    """
    lines = Store.open(workspace).block_blame(ref)
    _emit([b.model_dump() for b in lines], as_json, lambda: _blame_text(lines) or "(the value is empty)")


from . import watch_cli as _watch_commands  # noqa: E402,F401 - registers `status` and `watch`
from .agents import cli as _agent_commands  # noqa: E402,F401 - registers `agent send/messages` and `demo`
