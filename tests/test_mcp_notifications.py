"""Resource notifications: subscribed MCP clients hear about changes from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import Implementation

from mcp_server import MemstoreServer
from memstore import Store
from memstore.watcher import Watcher

from .conftest import PERSON_NAME, commit_count, git

# The 2025 protocol's resources/subscribe, which Claude Desktop and most hosts use, is tested on purpose.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:resources/subscribe is removed:mcp.shared.exceptions.MCPDeprecationWarning")]

MEMSTORE = str(Path(sys.executable).with_name("memstore"))
WAIT = 15.0
URI = "memstore://blocks/notes"


class Inbox:
    """Notifications a client received, waited on as events."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[tuple[str, str | None]](100)

    async def handler(self, message: Any) -> None:
        method = getattr(message, "method", None)
        if method and method.startswith("notifications/resources/"):
            params = getattr(message, "params", None)
            await self.send.send((method, str(getattr(params, "uri", "")) or None))

    async def expect(self, method: str, uri: str | None = None) -> None:
        with anyio.fail_after(WAIT):
            while True:
                got = await self.receive.receive()
                if got[0] == method and (uri is None or got[1] == uri):
                    return


@pytest.fixture
async def watched(store: Store) -> AsyncIterator[tuple[Client, Inbox]]:
    """A server with a running watcher, and a 2025-protocol client subscribed to blocks/notes."""
    store.create_block("notes", "first")
    server = MemstoreServer(store)
    inbox = Inbox()
    with Watcher(store, on_change=server.notifier.changed) as watcher:
        assert watcher.ready.wait(WAIT)
        async with Client(server, mode="legacy", cache=None, message_handler=inbox.handler) as client:
            await client.subscribe_resource(URI)
            yield client, inbox


def run_cli(ws: Path, *args: str) -> None:
    env = {k: os.environ[k] for k in ("HOME", "PATH", "GIT_CONFIG_GLOBAL") if k in os.environ}
    subprocess.run([MEMSTORE, *args, "-w", str(ws)], env=env, check=True, capture_output=True, timeout=60)


async def test_an_edit_by_another_process_notifies_subscribers(watched: tuple[Client, Inbox], ws_path: Path) -> None:
    _, inbox = watched
    await anyio.to_thread.run_sync(run_cli, ws_path, "block", "insert", "notes", "from another process")
    await inbox.expect("notifications/resources/updated", URI)


async def test_a_hand_edit_notifies_subscribers(watched: tuple[Client, Inbox], ws_path: Path) -> None:
    client, inbox = watched
    path = ws_path / "blocks" / "notes.md"
    path.write_text(path.read_text().replace("first", "edited by hand"))
    await inbox.expect("notifications/resources/updated", URI)
    text = (await client.read_resource(URI)).contents[0].text
    assert text.endswith("edited by hand\n")


async def test_this_servers_own_edit_notifies_and_a_new_block_changes_the_list(
    watched: tuple[Client, Inbox]
) -> None:
    client, inbox = watched
    await client.call_tool("memory_insert", {"label": "notes", "new_str": "own edit"})
    await inbox.expect("notifications/resources/updated", URI)
    await client.call_tool("create_block", {"label": "ideas"})
    await inbox.expect("notifications/resources/list_changed")


async def test_a_2026_client_hears_through_listen(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "first")
    server = MemstoreServer(store)
    with Watcher(store, on_change=server.notifier.changed) as watcher:
        assert watcher.ready.wait(WAIT)
        async with Client(server, cache=None) as client:
            async with client.listen(resource_subscriptions=[URI]) as events:
                await client.call_tool("memory_insert", {"label": "notes", "new_str": "x"})
                with anyio.fail_after(WAIT):
                    async for event in events:
                        if getattr(event, "uri", None) == URI:
                            break


async def test_workspace_status_tool_reports_an_invalid_hand_edit(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "first")
    (ws_path / "blocks" / "notes.md").write_text("---\nlabel: [x\n---\nbroken\n")
    async with Client(MemstoreServer(store), mode="legacy", cache=None) as client:
        result = await client.call_tool("workspace_status", {})
    invalid = result.structured_content["invalid"]
    assert [i["path"] for i in invalid] == ["blocks/notes.md"] and "invalid YAML" in invalid[0]["problem"]


async def test_two_servers_watching_one_workspace_commit_a_hand_edit_once(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "first")
    env = {k: os.environ[k] for k in ("HOME", "PATH", "GIT_CONFIG_GLOBAL") if k in os.environ}
    params = StdioServerParameters(command=MEMSTORE, args=["serve", "-w", str(ws_path)], env=env)
    inboxes = [Inbox(), Inbox()]
    async with (
        Client(params, mode="legacy", cache=None, message_handler=inboxes[0].handler,
               client_info=Implementation(name="host-a", version="1")) as a,
        Client(params, mode="legacy", cache=None, message_handler=inboxes[1].handler,
               client_info=Implementation(name="host-b", version="1")) as b,
    ):
        await a.subscribe_resource(URI)
        await b.subscribe_resource(URI)
        before = commit_count(ws_path)
        path = ws_path / "blocks" / "notes.md"
        path.write_text(path.read_text().replace("first", "one hand edit"))
        for inbox in inboxes:  # each server's watcher has handled the edit once this arrives
            await inbox.expect("notifications/resources/updated", URI)
        assert commit_count(ws_path) == before + 1
        assert git(ws_path, "log", "-1", "--format=%an|%s").strip() == f"{PERSON_NAME}|Hand edit blocks/notes.md"
