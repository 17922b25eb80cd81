"""Every MCP tool, resource and prompt through the SDK's in-memory client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import Implementation

from mcp_server import MemstoreServer, ServerConfig
from memstore import Store
from memstore.agents.scripted import ScriptedModel, http_error, text, tool_calls

from .conftest import commit_count, git
from .mcp_helpers import error, ok

pytestmark = pytest.mark.anyio

TOOLS = {
    "list_blocks", "get_block", "create_block", "update_block", "delete_block", "list_block_agents",
    "memory_insert", "memory_replace", "memory_rethink", "core_memory_append", "core_memory_replace",
    "block_history", "block_diff", "revert_block",
    "list_agents", "get_agent", "create_agent", "delete_agent", "attach_block", "detach_block",
    "send_message", "list_messages", "workspace_status",
}
HOST = Implementation(name="Claude Desktop", version="1.0")

Connect = Callable[..., Any]


@pytest.fixture(params=["legacy", "auto"])
def connect(request: pytest.FixtureRequest, store: Store) -> Connect:
    """Open a client on a server over `store` (both protocol generations)."""

    def make(config: ServerConfig | None = None) -> Client:
        return Client(MemstoreServer(store, config), mode=request.param, cache=None, client_info=HOST)

    return make


@pytest.fixture
async def client(connect: Connect) -> AsyncIterator[Client]:
    async with connect() as c:
        yield c


def author_of_last_commit(ws: Path) -> str:
    return git(ws, "log", "-1", "--format=%an <%ae>").strip()


# -- the tool list ----------------------------------------------------------------------


async def test_the_server_lists_exactly_the_documented_tools_with_annotations(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for name in ("list_blocks", "get_block", "block_history", "block_diff", "list_agents", "get_agent"):
        assert tools[name].annotations.read_only_hint is True
    for name in ("delete_block", "memory_replace", "memory_rethink", "delete_agent"):
        assert tools[name].annotations.read_only_hint is False
        assert tools[name].annotations.destructive_hint is True
    assert tools["memory_insert"].annotations.destructive_hint is False
    assert tools["get_block"].output_schema is not None
    assert set(tools["memory_insert"].input_schema["properties"]) == {"label", "new_str", "insert_line",
                                                                  "expected_version"}
    assert tools["memory_insert"].input_schema["required"] == ["label", "new_str"]


# -- blocks ------------------------------------------------------------------------------


async def test_create_then_get_a_block_returns_every_field(client: Client, ws_path: Path) -> None:
    made = await ok(client, "create_block", label="organization", value="Org: Letta", description="shared",
                    metadata={"team": "core"})
    for ref in (made["id"], "organization"):
        got = await ok(client, "get_block", block=ref)
        assert {k: got[k] for k in ("id", "label", "value", "limit", "read_only", "description", "metadata")} == {
            "id": made["id"], "label": "organization", "value": "Org: Letta", "limit": 20_000,
            "read_only": False, "description": "shared", "metadata": {"team": "core"}}
        assert got["chars_current"] == len("Org: Letta")
        assert got["version"] == git(ws_path, "rev-parse", "HEAD").strip()
    assert author_of_last_commit(ws_path) == "Claude Desktop <host-claude-desktop@agents.memstore>"


async def test_list_blocks_and_get_a_block_at_an_earlier_version(client: Client) -> None:
    first = await ok(client, "create_block", label="notes", value="one")
    await ok(client, "memory_rethink", label="notes", new_memory="two")
    assert [b["label"] for b in await ok(client, "list_blocks")] == ["notes"]
    old = await ok(client, "get_block", block="notes", version=first["version"][:10])
    assert old["value"] == "one"
    assert (await ok(client, "get_block", block="notes"))["value"] == "two"


async def test_block_errors_name_the_problem(client: Client, store: Store) -> None:
    assert "No block named 'ghost'" in await error(client, "get_block", block="ghost")
    assert "never a path" in await error(client, "create_block", label="../escape")
    store.create_block("twin")
    store.create_block("twin-b")
    store.update_block("twin-b", label="twin-a")
    store.update_block("twin", label="twin-a")
    text = await error(client, "get_block", block="twin-a")
    assert "twin" in text and "twin-b" in text
    store.create_block("twin")  # blocks/twin-2.md: a second block labelled as the first's file name
    assert "validation error" in await error(client, "create_block", label=["not", "text"])
    assert "Field required" in await error(client, "create_block")
    assert "No version" in await error(client, "get_block", block="twin-2", version="0" * 40)


async def test_huge_text_is_refused_with_nothing_written(client: Client, ws_path: Path) -> None:
    await ok(client, "create_block", label="big")
    before = commit_count(ws_path)
    text = await error(client, "memory_insert", label="big", new_str="x" * 1_000_001)
    assert "new_str" in text
    assert commit_count(ws_path) == before


async def test_update_block_changes_metadata_but_not_policy_without_admin(client: Client) -> None:
    await ok(client, "create_block", label="policies", value="Be kind.", read_only=True)
    done = await ok(client, "update_block", block="policies", description="house rules", metadata={"v": 2})
    assert done["block"]["description"] == "house rules" and done["block"]["metadata"] == {"v": 2}
    for change in ({"read_only": False}, {"limit": 50}):
        text = await error(client, "update_block", block="policies", **change)
        assert "only a person or an admin" in text
    renamed = await ok(client, "update_block", block="policies", label="rules")
    assert renamed["block"]["label"] == "rules" and renamed["block"]["read_only"] is True


async def test_an_admin_server_may_unlock_a_block_but_still_not_edit_it_locked(connect: Connect) -> None:
    async with connect(ServerConfig(admin=True)) as client:
        await ok(client, "create_block", label="policies", value="Be kind.", read_only=True)
        assert "read-only" in await error(client, "memory_insert", label="policies", new_str="x")
        done = await ok(client, "update_block", block="policies", read_only=False, limit=100)
        assert done["block"]["read_only"] is False and done["block"]["limit"] == 100
        await ok(client, "memory_insert", label="policies", new_str="Be brief.")


async def test_delete_block_and_list_block_agents(client: Client, store: Store) -> None:
    block = store.create_block("team")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id])
    assert [a["name"] for a in await ok(client, "list_block_agents", block="team")] == ["agent1"]
    deleted = await ok(client, "delete_block", block="team")
    assert deleted["id"] == block.id
    assert store.get_agent("agent1").blocks == []
    assert "No block named 'team'" in await error(client, "delete_block", block="team")


# -- edits -------------------------------------------------------------------------------


async def test_every_memory_edit_commits_as_the_host(client: Client, ws_path: Path) -> None:
    await ok(client, "create_block", label="org", value="a\nb")
    steps = [
        ("memory_insert", {"new_str": "top", "insert_line": 0}, "top\na\nb"),
        ("memory_replace", {"old_str": "a", "new_str": "A"}, "top\nA\nb"),
        ("core_memory_append", {"content": "end"}, "top\nA\nb\nend"),
        ("core_memory_replace", {"old_content": "b", "new_content": "B"}, "top\nA\nB\nend"),
        ("memory_rethink", {"new_memory": "fresh"}, "fresh"),
    ]
    for tool, args, value in steps:
        result = await ok(client, tool, label="org", **args)
        assert result["op"] == tool and result["block"]["value"] == value
        assert result["version"] == git(ws_path, "rev-parse", "HEAD").strip()
        assert author_of_last_commit(ws_path) == "Claude Desktop <host-claude-desktop@agents.memstore>"
        assert f"Memstore-Op: {tool}" in git(ws_path, "log", "-1", "--format=%B")


async def test_edit_refusals_use_lettas_wording_and_write_nothing(client: Client, ws_path: Path) -> None:
    await ok(client, "create_block", label="org", value="x\nx", limit=10)
    await ok(client, "create_block", label="policies", value="rule", read_only=True)
    before = commit_count(ws_path)
    cases = [
        ("memory_replace", {"label": "org", "old_str": "y", "new_str": "z"},
         "No replacement was performed, old_str `y` did not appear verbatim in memory block with label `org`."),
        ("memory_replace", {"label": "org", "old_str": "x", "new_str": "z"},
         "No replacement was performed. Multiple occurrences of old_str `x` in lines [1, 2]."),
        ("memory_insert", {"label": "org", "new_str": "y", "insert_line": 9}, "Invalid `insert_line` parameter: 9."),
        ("memory_insert", {"label": "org", "new_str": "y" * 20}, "Edit failed: Exceeds 10 character limit"),
        ("memory_insert", {"label": "policies", "new_str": "y"}, "Error This block is read-only and cannot be edited."),
        ("memory_rethink", {"label": "ghost", "new_memory": "y"}, "ghost"),
        ("core_memory_replace", {"label": "org", "old_content": "q", "new_content": "z"}, "Old content 'q' not found"),
    ]
    for tool, args, expected in cases:
        assert expected in await error(client, tool, **args)
    assert commit_count(ws_path) == before


async def test_as_agent_resolves_labels_among_its_blocks_and_commits_as_it(
    connect: Connect, store: Store, ws_path: Path
) -> None:
    mine = store.create_block("notes", "mine")
    store.create_block("notes", "someone else's")
    store.create_block("secret", "hidden")
    agent = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[mine.id])
    async with connect(ServerConfig(as_agent="agent1")) as client:
        result = await ok(client, "memory_insert", label="notes", new_str="more")
        assert result["block"]["id"] == mine.id
        assert author_of_last_commit(ws_path) == f"agent1 <{agent.id}@agents.memstore>"
        text = await error(client, "memory_insert", label="secret", new_str="x")
        assert text.endswith("Block field secret does not exist (available sections = notes)")


async def test_a_server_for_an_unknown_agent_does_not_start(store: Store) -> None:
    with pytest.raises(Exception, match="No agent named 'ghost'"):
        MemstoreServer(store, ServerConfig(as_agent="ghost"))


# -- history -----------------------------------------------------------------------------


async def test_history_diff_and_revert(client: Client, ws_path: Path) -> None:
    first = await ok(client, "create_block", label="org", value="one")
    await ok(client, "memory_rethink", label="org", new_memory="two")
    history = await ok(client, "block_history", block="org")
    assert [h["op"] for h in history] == ["memory_rethink", "create_block"]
    assert history[0]["author_name"] == "Claude Desktop"
    diff = await ok(client, "block_diff", block="org", from_version=first["version"])
    assert "-one" in diff and "+two" in diff
    reverted = await ok(client, "revert_block", block="org", version=first["version"])
    assert reverted["block"]["value"] == "one" and reverted["op"] == "revert_block"
    assert len(await ok(client, "block_history", block="org", limit=1)) == 1
    assert "No version" in await error(client, "revert_block", block="org", version="nonsense")
    assert "greater than or equal to 1" in await error(client, "block_history", block="org", limit=0)


# -- agents ------------------------------------------------------------------------------


async def test_agent_tools_create_attach_detach_delete(client: Client, store: Store) -> None:
    org = await ok(client, "create_block", label="organization", value="Org")
    made = await ok(client, "create_agent", name="agent1", model="openai/gpt-4o-mini", block_ids=[org["id"]],
                    system="You are agent1.")
    assert made["blocks"] == [org["id"]] and made["tools"] == ["memory_insert", "memory_replace", "conversation_search"]
    await ok(client, "create_agent", name="agent2", model="openai/gpt-4o-mini")
    searcher = await ok(client, "create_agent", name="searcher", model="m", tools=["web_search"],
                        include_base_tools=False)
    assert searcher["tools"] == ["web_search"]
    await ok(client, "delete_agent", agent="searcher")
    attached = await ok(client, "attach_block", agent="agent2", block="organization")
    assert attached["blocks"] == [org["id"]]
    assert [a["name"] for a in await ok(client, "list_agents")] == ["agent1", "agent2"]
    assert (await ok(client, "get_agent", agent=made["id"]))["name"] == "agent1"
    await ok(client, "create_block", label="organization", value="another")
    clash = await error(client, "attach_block", agent="agent2", block="organization-2")
    assert "organization" in clash
    assert (await ok(client, "detach_block", agent="agent2", block="organization"))["blocks"] == []
    assert (await ok(client, "delete_agent", agent="agent2"))["name"] == "agent2"
    assert "No agent named 'agent2'" in await error(client, "get_agent", agent="agent2")
    assert "already exists" in await error(client, "create_agent", name="agent1", model="openai/gpt-4o-mini")
    assert "Unknown tool" in await error(client, "create_agent", name="a3", model="m", tools=["rm_rf"])


async def test_send_message_runs_a_turn_and_list_messages_reads_the_log(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-local")
    block = store.create_block("organization", "Org")
    with ScriptedModel() as model:
        store.create_agent("agent1", "openai/agent1", block_ids=[block.id], api_base=model.api_base)
        model.enqueue("agent1", tool_calls(("memory_insert", {"label": "organization", "new_str": "agent1: hi"})),
                      text("Saved."), http_error(429))
        turn = await ok(client, "send_message", agent="agent1", message="Say hi in memory.")
        assert [m["message_type"] for m in turn["messages"]] == [
            "tool_call_message", "tool_return_message", "assistant_message"]
        assert turn["stop_reason"]["stop_reason"] == "end_turn" and turn["usage"]["step_count"] == 2
        logged = await ok(client, "list_messages", agent="agent1", limit=2)
        assert [m["message_type"] for m in logged] == ["tool_return_message", "assistant_message"]
        assert "rate-limited" in await error(client, "send_message", agent="agent1", message="again")
    assert store.get_block("organization").value == "Org\nagent1: hi"
    assert "No agent named 'ghost'" in await error(client, "send_message", agent="ghost", message="hi")


# -- resources and the prompt ------------------------------------------------------------


async def test_blocks_and_agents_are_listed_and_read_as_resources(client: Client, store: Store) -> None:
    block = store.create_block("organization", "Org: Letta", description="shared")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id])
    listed = {str(r.uri): r for r in (await client.list_resources()).resources}
    assert set(listed) == {"memstore://blocks/organization", "memstore://agents/agent1"}
    assert listed["memstore://blocks/organization"].mime_type == "text/markdown"
    text = (await client.read_resource("memstore://blocks/organization")).contents[0].text
    assert text.startswith("---\n") and f"id: {block.id}" in text and text.endswith("Org: Letta\n")
    agent_text = (await client.read_resource("memstore://agents/agent1")).contents[0].text
    assert "model: openai/gpt-4o-mini" in agent_text
    with pytest.raises(MCPError, match="No block named 'ghost'"):
        await client.read_resource("memstore://blocks/ghost")


async def test_memory_context_prompt_renders_lettas_memory_blocks(client: Client, store: Store) -> None:
    org = store.create_block("organization", "Organization: Letta", description="Shared information.")
    rules = store.create_block("policies", "Be kind.", read_only=True, limit=4000)
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[org.id, rules.id])
    result = await client.get_prompt("memory_context", {"agent": "agent1"})
    text = result.messages[0].content.text
    assert text.startswith("<memory_blocks>\nThe following memory blocks are currently engaged")
    assert "<organization>\n<description>\nShared information.\n</description>" in text
    assert "<metadata>\n- read_only=true\n- chars_current=8\n- chars_limit=4000\n</metadata>" in text
    assert text.index("<organization>") < text.index("<policies>")
    assert text.endswith("</memory_blocks>")


async def test_as_agent_the_host_sees_and_rewires_only_what_the_agent_may(
    connect: Connect, store: Store, ws_path: Path
) -> None:
    mine = store.create_block("notes", "mine")
    store.create_block("secret", "hidden")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[mine.id])
    store.create_agent("agent2", "openai/gpt-4o-mini")
    before = commit_count(ws_path)
    async with connect(ServerConfig(as_agent="agent1")) as client:
        assert [b["label"] for b in await ok(client, "list_blocks")] == ["notes"]
        assert {str(r.uri) for r in (await client.list_resources()).resources} >= {"memstore://blocks/notes"}
        assert "memstore://blocks/secret" not in {str(r.uri) for r in (await client.list_resources()).resources}
        with pytest.raises(MCPError, match="Block field secret does not exist"):
            await client.read_resource("memstore://blocks/secret")
        assert "does not exist" in await error(client, "block_history", block="secret")
        assert "may not attach block" in await error(client, "attach_block", agent="agent1", block="secret")
        assert "may not delete agent" in await error(client, "delete_agent", agent="agent2")
        assert "may not create agent" in await error(client, "create_agent", name="a3", model="openai/x")
        assert "may not send messages to agent 'agent2'" in await error(client, "send_message", agent="agent2",
                                                                          message="hi")
        assert "may not read the conversation of agent 'agent2'" in await error(client, "list_messages",
                                                                                agent="agent2")
    assert commit_count(ws_path) == before


async def test_a_host_revert_may_not_change_limit_or_read_only(client: Client, store: Store) -> None:
    first = store.create_block("rules", "Be kind.", limit=1000)
    store.update_block("rules", limit=100)  # a person tightened it
    assert "only a person or an admin" in await error(client, "revert_block", block="rules",
                                                      version=first.version)
    assert store.get_block("rules").limit == 100


async def test_every_tool_names_what_is_missing(client: Client, store: Store) -> None:
    store.create_block("notes", "a")
    store.create_agent("agent1", "openai/gpt-4o-mini")
    cases = [
        ("update_block", {"block": "ghost", "description": "x"}, "No block named 'ghost'"),
        ("list_block_agents", {"block": "ghost"}, "No block named 'ghost'"),
        ("block_history", {"block": "ghost"}, "No block named 'ghost'"),
        ("block_diff", {"block": "notes", "from_version": "nonsense"}, "No version 'nonsense'"),
        ("delete_agent", {"agent": "ghost"}, "No agent named 'ghost'"),
        ("attach_block", {"agent": "agent1", "block": "ghost"}, "No block named 'ghost'"),
        ("detach_block", {"agent": "agent1", "block": "notes"}, "does not exist"),
        ("list_messages", {"agent": "ghost"}, "No agent named 'ghost'"),
        ("core_memory_append", {"label": "ghost", "content": "x"}, "No block named 'ghost'"),
        ("memory_insert", {"label": "notes"}, "Field required"),
        ("memory_insert", {"label": "notes", "new_str": "x", "insert_line": "top"}, "valid integer"),
    ]
    for tool, args, expected in cases:
        assert expected in await error(client, tool, **args), tool
    assert await ok(client, "workspace_status") == {"uncommitted": [], "invalid": [], "notices": [],
                                                     "watcher_error": None}


async def test_as_agent_reads_its_blocks_by_file_name_and_only_its_own_memory_context(
    connect: Connect, store: Store
) -> None:
    store.create_block("notes", "someone else's")
    mine = store.create_block("notes", "mine")  # file notes-2.md
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[mine.id])
    store.create_agent("agent2", "openai/gpt-4o-mini")
    async with connect(ServerConfig(as_agent="agent1")) as client:
        text = (await client.read_resource("memstore://blocks/notes-2")).contents[0].text
        assert text.endswith("mine\n")
        assert "mine" in (await client.get_prompt("memory_context", {"agent": "agent1"})).messages[0].content.text
        with pytest.raises(MCPError):
            await client.get_prompt("memory_context", {"agent": "agent2"})


async def test_expected_version_refuses_an_edit_against_a_stale_version(client: Client, store: Store,
                                                                        ws_path: Path) -> None:
    first = await ok(client, "create_block", label="notes", value="one")
    done = await ok(client, "memory_insert", label="notes", new_str="two", expected_version=first["version"])
    assert done["version"] == git(ws_path, "rev-parse", "HEAD").strip()
    before = commit_count(ws_path)
    refused = await error(client, "memory_rethink", label="notes", new_memory="clobbered",
                          expected_version=first["version"])
    assert f"has changed since version {first['version'][:12]}" in refused and "nothing was written" in refused
    assert await error(client, "memory_replace", label="notes", old_str="two", new_str="2",
                       expected_version=first["version"][:7])
    assert commit_count(ws_path) == before and store.get_block("notes").value == "one\ntwo"
    await ok(client, "memory_replace", label="notes", old_str="two", new_str="2", expected_version=done["version"])
    assert store.get_block("notes").value == "one\n2"
