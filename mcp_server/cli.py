"""The `memstore` command: the core's CLI plus `memstore serve`.

The console script points here so that `memstore/` never refers to the MCP layer; the MCP
SDK itself is imported only when `serve` runs, so other commands start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from memstore.cli import handle_errors, main, workspace_option
from memstore.store import Store

ENV_TOKEN = "MEMSTORE_TOKEN"


@main.command("serve")
@click.option("--http", "use_http", is_flag=True,
              help="Serve HTTP instead of stdio: MCP (streamable HTTP) at /mcp and Letta's REST API at /v1.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (with --http).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (with --http; 0 picks a free one).")
@click.option("--token", envvar=ENV_TOKEN, metavar="SECRET",
              help=f"Bearer token HTTP clients must send (default: ${ENV_TOKEN}); required beyond loopback.")
@click.option("--as", "as_agent", metavar="AGENT",
              help="Act as this agent: its blocks only, its read-only rules, commits authored by it.")
@click.option("--admin", is_flag=True, help="Let the host change blocks' read_only flag and limit.")
@click.option("--no-watch", is_flag=True, help="Do not watch for hand edits (no commits of them, no notifications).")
@workspace_option
@handle_errors
def serve(use_http: bool, host: str, port: int, token: str | None, as_agent: str | None, admin: bool,
          no_watch: bool, workspace: str | None) -> None:
    """Run the MCP server on this workspace (stdio unless --http, which adds Letta's API at /v1)."""
    from .run import check_http_options, serve_http, serve_stdio
    from .server import ServerConfig

    if use_http:
        check_http_options(host, token)
    store = Store.open(workspace)
    config = ServerConfig(as_agent=as_agent, admin=admin)
    try:
        if use_http:
            serve_http(store, config, host=host, port=port, token=token, watch=not no_watch)
        else:
            serve_stdio(store, config, watch=not no_watch)
    except KeyboardInterrupt:  # Ctrl-C is how a person stops a server: a normal end, not "Aborted!"
        pass


@main.command("demo-server")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", default=8283, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (8283: where Letta's clients look by default).")
@handle_errors
def demo_server(directory: Path | None, port: int) -> None:
    """Serve Letta's API on a new workspace (DIRECTORY, default a temp folder) with the agents' model
    scripted offline, for Letta's tutorial programs in examples/.

    \b
    Then, in another terminal:
      python examples/letta_tutorial_v1.py     (letta-client 1.x)
      python examples/letta_tutorial.py        (letta-client 0.1.x)
    With a provider key, `memstore serve --http --port 8283` runs them on the real model.
    """
    from memstore.agents.demo import TUTORIAL_MODEL, new_demo_folder, tutorial_replies
    from memstore.agents.scripted import ScriptedModel

    from .run import serve_http
    from .server import ServerConfig

    store = Store.init(new_demo_folder(directory))
    with ScriptedModel() as model:
        model.enqueue(TUTORIAL_MODEL, *tutorial_replies())
        # litellm reaches it as the provider of openai/ models; no key leaves this process
        os.environ.update(OPENAI_API_BASE=model.api_base, OPENAI_API_KEY="scripted-local-model")
        where = "" if port == 8283 else f"LETTA_BASE_URL=http://127.0.0.1:{port or '<port below>'} "
        click.echo(f"Workspace: {store.ws.root}\n"
                   f"The agents' model (openai/{TUTORIAL_MODEL}) is a scripted local model: it plays the three turns "
                   "of Letta's tutorial once, in order.\n"
                   f"Run the tutorial in another terminal: {where}python examples/letta_tutorial_v1.py\n"
                   "Ctrl-C stops the server.")
        try:
            serve_http(store, ServerConfig(), host="127.0.0.1", port=port, token=None)
        except KeyboardInterrupt:
            pass


HOST_NAMES = {"claude-desktop": "Claude Desktop", "claude-code": "Claude Code", "cursor": "Cursor",
              "vscode": "VS Code"}


@main.command("setup")
@click.argument("host", type=click.Choice(list(HOST_NAMES)))
@click.option("--as", "as_agent", metavar="AGENT",
              help="The host acts as this agent: its blocks only, commits authored by it.")
@click.option("--name", default="memstore", show_default=True, help="The server's name in the host's list.")
@click.option("--folder", type=click.Path(file_okay=False),
              help="VS Code only: the folder whose .vscode/mcp.json gets the server (default: the current one).")
@click.option("--print", "print_only", is_flag=True, help="Show the entry and where it goes; change nothing.")
@workspace_option
@handle_errors
def setup_command(host: str, as_agent: str | None, name: str, folder: str | None, print_only: bool,
                  workspace: str | None) -> None:
    """Add memstore's MCP server to HOST's configuration (merged, backed up, idempotent).

    \b
    Examples:
      memstore setup claude-desktop -w ~/my-memory
      memstore setup cursor --as agent1
      memstore setup vscode --print
    """
    from .setup import config_path, launch, setup, snippet

    store = Store.open(workspace)
    if as_agent:
        store.get_agent(as_agent)  # an unknown agent is refused now, not when the host starts
    where = Path(folder) if folder else None
    if print_only:
        server = launch(store.ws.root, as_agent)
        target = "Run:" if host == "claude-code" else f"Add to {config_path(host, folder=where)}:"
        click.echo(f"{target}\n{snippet(host, server, name)}")
        return
    outcome = setup(host, store.ws.root, as_agent=as_agent, name=name, folder=where)
    click.echo(outcome.message)
    if outcome.changed:
        click.echo(f"Restart {HOST_NAMES[host]} (or reload its MCP servers) to start using memstore.")


__all__ = ["demo_server", "main", "serve", "setup_command"]
