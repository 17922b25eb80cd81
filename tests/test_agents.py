"""The built-in agent loop, driven through litellm against a scripted model on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from memstore import Store
from memstore.agents import AgentTurnError
from memstore.agents.log import read_log
from memstore.agents.scripted import Reply, ScriptedModel, http_error, text, tool_calls

from .conftest import commit_count, git

MEMSTORE = str(Path(sys.executable).with_name("memstore"))


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedModel]:
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "EXA_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-local")
    with ScriptedModel() as server:
        yield server


def make_agent(store: Store, model: ScriptedModel, name: str, blocks: list[str], tools: list[str] | None = None) -> str:
    ids = [store.get_block(b).id for b in blocks]
    return store.create_agent(name, f"openai/{name}", block_ids=ids, tools=tools, api_base=model.api_base,
                              system=f"You are {name}.").id


def system_of(request: dict[str, Any]) -> str:
    return request["messages"][0]["content"]


def insert(label: str, line: str) -> Reply:
    return tool_calls(("memory_insert", {"label": label, "new_str": line}))


# -- one turn ----------------------------------------------------------------------------


def test_a_turn_calls_tools_then_ends_with_an_assistant_message(store: Store, model: ScriptedModel,
                                                                ws_path: Path) -> None:
    store.create_block("organization", "Org: Letta", limit=4000, description="Shared.")
    agent_id = make_agent(store, model, "agent1", ["organization"])
    model.enqueue("agent1", tool_calls(("memory_insert", {"label": "organization", "new_str": "agent1: fact"}),
                                       content="Saving it."), text("Done."))

    result = store.send_message("agent1", "Research Letta.")

    kinds = [m.message_type for m in result.messages]
    assert kinds == ["reasoning_message", "tool_call_message", "tool_return_message", "assistant_message"]
    call, ret = result.messages[1], result.messages[2]
    assert call.tool_call.name == "memory_insert" and json.loads(call.tool_call.arguments)["new_str"] == "agent1: fact"
    assert ret.status == "success" and ret.tool_call_id == call.tool_call.tool_call_id
    assert result.messages[3].content == "Done."
    assert all(m.id.startswith("message-") and m.date for m in result.messages)
    assert result.stop_reason.stop_reason == "end_turn"
    assert (result.usage.step_count, result.usage.total_tokens) == (2, 220)
    assert store.get_block("organization").value == "Org: Letta\nagent1: fact"

    first = model.requests["agent1"][0]
    assert [t["function"]["name"] for t in first["tools"]] == ["memory_insert", "memory_replace",
                                                              "conversation_search"]
    assert "<memory_blocks>" in system_of(first) and "<organization>" in system_of(first)
    assert first["messages"][-1] == {"role": "user", "content": "Research Letta."}
    authors = git(ws_path, "log", "-2", "--format=%ae %s").splitlines()
    assert authors == [f"{agent_id}@agents.memstore send_message agent1",
                       f"{agent_id}@agents.memstore memory_insert organization"]


def test_memory_is_read_again_before_every_step(store: Store, model: ScriptedModel) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    hand_edit = Reply(**vars(insert("organization", "agent1: one")))
    hand_edit.before = lambda: store.memory_insert("organization", "a person added this")
    model.enqueue("agent1", hand_edit, text("ok"))

    store.send_message("agent1", "go")

    first, second = (system_of(r) for r in model.requests["agent1"])
    assert "a person added this" not in first
    assert "Org\na person added this\nagent1: one" in second


def test_a_tool_error_goes_back_to_the_model_and_the_loop_goes_on(store: Store, model: ScriptedModel) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    model.enqueue("agent1",
                  tool_calls(("memory_replace", {"label": "organization", "old_str": "nope", "new_str": "x"})),
                  tool_calls(("memory_rethink", {"label": "organization", "new_memory": "x"})),
                  tool_calls(("memory_insert", {"label": "organization"})),
                  text("I could not do it."))

    result = store.send_message("agent1", "edit")

    errors = [m.tool_return for m in result.messages if m.message_type == "tool_return_message"]
    assert errors[0] == ("Error: No replacement was performed, old_str `nope` did not appear verbatim in memory "
                         "block with label `organization`.")
    assert "no tool named 'memory_rethink'" in errors[1]
    assert "missing argument `new_str`" in errors[2]
    assert result.stop_reason.stop_reason == "end_turn"
    second = model.requests["agent1"][1]["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["content"] == errors[0]
    assert store.get_block("organization").value == "Org"


def test_max_steps_bounds_a_turn(store: Store, model: ScriptedModel) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    model.enqueue("agent1", *(insert("organization", f"line {i}") for i in range(3)))
    result = store.send_message("agent1", "loop", max_steps=3)
    assert result.stop_reason.stop_reason == "max_steps" and result.usage.step_count == 3
    assert "within 3 steps" in (result.error or "")


# -- the tutorial ------------------------------------------------------------------------


def test_the_shared_memory_tutorial(store: Store, model: ScriptedModel, ws_path: Path) -> None:
    store.create_block("organization", "Organization: Letta", limit=4000, description="Shared information.")
    store.create_block("policies", "Be kind.", read_only=True)
    agent1 = make_agent(store, model, "agent1", ["organization"])
    agent2 = make_agent(store, model, "agent2", ["policies"])
    model.enqueue("agent1", insert("organization", "agent1: Letta was founded in 2023."), text("Saved."))
    store.send_message("agent1", "Research Letta's founding; insert it prefixed with your name.")

    store.attach_block("agent2", "organization")
    model.enqueue("agent2", insert("organization", "agent2: Letta builds stateful agents."),
                  insert("policies", "agent2 was here"), text("Done; policies are read-only."))
    before = commit_count(ws_path)
    result = store.send_message("agent2", "Research Letta's product; insert it prefixed with your name.")

    assert "agent1: Letta was founded in 2023." in system_of(model.requests["agent2"][0])
    value = store.get_block("organization").value
    assert value == "Organization: Letta\nagent1: Letta was founded in 2023.\nagent2: Letta builds stateful agents."
    refusal = [m for m in result.messages if m.message_type == "tool_return_message"][1]
    assert refusal.status == "error"
    assert refusal.tool_return.startswith("Error This block is read-only and cannot be edited.")
    assert store.get_block("policies").value == "Be kind."
    assert commit_count(ws_path) == before + 2  # agent2's insert and its log; nothing for policies
    inserts = git(ws_path, "log", "--format=%an <%ae>", "--", "blocks/organization.md").splitlines()
    assert inserts[:2] == [f"agent2 <{agent2}@agents.memstore>", f"agent1 <{agent1}@agents.memstore>"]


# -- provider faults ---------------------------------------------------------------------

FAULTS = {
    "401": (http_error(401, "Incorrect API key"), "llm_api_error", "refused the API key"),
    "429": (http_error(429, "Rate limit reached"), "llm_api_error", "rate-limited"),
    "500": (http_error(500, "boom"), "llm_api_error", "HTTP 500"),
    "timeout": (Reply(text("late").body, delay=3.0), "llm_api_error", "did not answer within 1 s"),
    "malformed": (tool_calls(("memory_insert", '{"label": "organization", "new_str": ')), "invalid_tool_call",
                  "malformed tool call"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_provider_faults_end_the_turn_clearly_and_keep_the_log_consistent(
    fault: str, store: Store, model: ScriptedModel
) -> None:
    reply, reason, words = FAULTS[fault]
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    model.enqueue("agent1", insert("organization", "kept"), reply)

    with pytest.raises(AgentTurnError) as caught:
        store.send_message("agent1", "go", timeout=1.0)

    assert words in str(caught.value) and "Traceback" not in str(caught.value)
    assert caught.value.result.stop_reason.stop_reason == reason
    assert store.get_block("organization").value == "Org\nkept"  # the edit before the fault stays
    log = read_log(store, store.get_agent("agent1"))
    assert log[0].message_type == "user_message"
    assert log[-1].message_type == "error_message" and log[-1].error_type == reason  # the log says why
    assert words in log[-1].message
    calls = {m.tool_call.tool_call_id for m in log if m.message_type == "tool_call_message"}
    returns = {m.tool_call_id for m in log if m.message_type == "tool_return_message"}
    assert calls == returns  # every logged call has its answer: the log replays cleanly

    model.enqueue("agent1", text("back"))
    assert store.send_message("agent1", "again").messages[-1].content == "back"
    replay = model.requests["agent1"][-1]["messages"]
    assert replay[1] == {"role": "user", "content": "go"} and replay[-1] == {"role": "user", "content": "again"}


# -- tools beyond memory -----------------------------------------------------------------


def test_tools_add_to_the_base_tools_as_in_letta(store: Store, model: ScriptedModel, ws_path: Path) -> None:
    """The tutorial's `tools=["web_search"]` agent still writes the shared block."""
    store.create_block("organization", "Org: Letta")
    agent_id = make_agent(store, model, "agent1", ["organization"], tools=["web_search"])
    assert store.get_agent("agent1").tools == ["memory_insert", "memory_replace", "conversation_search", "web_search"]
    model.enqueue("agent1", insert("organization", "agent1: fact"), text("Saved."))
    result = store.send_message("agent1", "Research Letta.")
    assert result.messages[1].status == "success"
    assert store.get_block("organization").value == "Org: Letta\nagent1: fact"
    assert git(ws_path, "log", "-2", "--format=%ae", "--", "blocks/organization.md").split()[0] == \
        f"{agent_id}@agents.memstore"
    offered = [t["function"]["name"] for t in model.requests["agent1"][0]["tools"]]
    assert offered == ["memory_insert", "memory_replace", "conversation_search", "web_search"]


def test_include_base_tools_false_gives_only_the_named_tools(store: Store, model: ScriptedModel) -> None:
    store.create_block("organization", "Org")
    bare = store.create_agent("bare", "openai/bare", tools=["web_search"], include_base_tools=False,
                              api_base=model.api_base)
    assert bare.tools == ["web_search"]
    assert store.create_agent("none", "openai/none", include_base_tools=False).tools == []
    model.enqueue("bare", insert("organization", "x"), text("done"))
    result = store.send_message("bare", "try")
    assert result.messages[1].status == "error" and "no tool named 'memory_insert'" in result.messages[1].tool_return
    assert store.get_block("organization").value == "Org"


def test_agent_files_keep_their_tools_and_a_file_without_tools_gets_the_base_set(store: Store,
                                                                                 ws_path: Path) -> None:
    old = store.create_agent("old", "openai/x", tools=["memory_rethink"], include_base_tools=False)
    assert store.get_agent("old").tools == old.tools == ["memory_rethink"]
    (ws_path / "agents" / "hand.md").write_text(
        "---\nid: agent-00000000-0000-0000-0000-000000000001\nname: hand\nmodel: openai/x\n---\nYou help.\n")
    assert store.get_agent("hand").tools == ["memory_insert", "memory_replace", "conversation_search"]


def test_conversation_search_finds_earlier_turns(store: Store, model: ScriptedModel) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"], tools=["memory_insert", "conversation_search"])
    model.enqueue("agent1", text("The launch code word is PELICAN."))
    store.send_message("agent1", "Remember the code word.")
    model.enqueue("agent1", tool_calls(("conversation_search", {"query": "pelican"})), text("Found it."))
    result = store.send_message("agent1", "What was the code word?")
    found = json.loads(result.messages[1].tool_return)
    assert [f["text"] for f in found] == ["The launch code word is PELICAN."]


class _Exa(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Exa.seen.append({"key": self.headers["x-api-key"], **body})
        data = json.dumps({"results": [{"title": "Letta", "url": "https://www.letta.com", "highlights": ["memory"]}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args: Any) -> None:
        return


def test_web_search_needs_a_key_and_calls_exa(store: Store, model: ScriptedModel,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"], tools=["web_search"])
    search = tool_calls(("web_search", {"query": "Letta"}))
    model.enqueue("agent1", search, text("no key"))
    result = store.send_message("agent1", "search")
    assert result.messages[1].status == "error" and "set EXA_API_KEY" in result.messages[1].tool_return

    exa = ThreadingHTTPServer(("127.0.0.1", 0), _Exa)
    Thread(target=exa.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("EXA_API_KEY", "exa-test")
        monkeypatch.setenv("MEMSTORE_EXA_URL", f"http://127.0.0.1:{exa.server_address[1]}/search")
        model.enqueue("agent1", tool_calls(("web_search", {"query": "Letta", "num_results": 2})), text("found"))
        result = store.send_message("agent1", "search again")
    finally:
        exa.shutdown()
        exa.server_close()
    assert json.loads(result.messages[1].tool_return) == [
        {"title": "Letta", "url": "https://www.letta.com", "highlights": ["memory"]}]
    assert _Exa.seen[-1] == {"key": "exa-test", "query": "Letta", "numResults": 2, "contents": {"highlights": True}}


# -- the log, the CLI, concurrency -------------------------------------------------------


def test_the_log_survives_a_restart_and_lists_in_order(store: Store, model: ScriptedModel, ws_path: Path) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    model.enqueue("agent1", text("first answer"), text("second answer"))
    store.send_message("agent1", "one")
    store.send_message("agent1", "two")
    reopened = Store.open(ws_path)
    messages = reopened.list_messages("agent1")
    assert [getattr(m, "content", None) for m in messages] == ["one", "first answer", "two", "second answer"]
    assert [m.content for m in reopened.list_messages("agent1", limit=1)] == ["second answer"]
    assert git(ws_path, "status", "--porcelain") == ""


def test_two_agents_turns_at_once_lose_nothing(store: Store, model: ScriptedModel, ws_path: Path) -> None:
    store.create_block("organization", "Org", limit=100_000)
    per_agent = 15
    for name in ("agent1", "agent2"):
        make_agent(store, model, name, ["organization"])
        model.enqueue(name, *(insert("organization", f"{name} line {i}") for i in range(per_agent)), text("done"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ws_path.parent / "home"), "OPENAI_API_KEY": "sk-test-local",
           "GIT_CONFIG_GLOBAL": str(ws_path.parent / "home" / ".gitconfig")}
    procs = [subprocess.Popen([MEMSTORE, "agent", "send", name, "fill the block", "--max-steps", "30",
                               "-w", str(ws_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("agent1", "agent2")]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = store.get_block("organization").value.split("\n")
    for name in ("agent1", "agent2"):
        assert [line for line in lines if line.startswith(name)] == [f"{name} line {i}" for i in range(per_agent)]
    assert subprocess.run(["git", "fsck", "--strict"], cwd=ws_path, capture_output=True, check=False).returncode == 0


def test_cli_send_and_messages(store: Store, model: ScriptedModel, ws_path: Path) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    model.enqueue("agent1", insert("organization", "from the cli"), text("All set."))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ws_path.parent / "home"), "OPENAI_API_KEY": "sk-test-local"}
    sent = subprocess.run([MEMSTORE, "agent", "send", "agent1", "hello", "-w", str(ws_path)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert sent.returncode == 0, sent.stderr
    assert 'agent1 → memory_insert({"label": "organization", "new_str": "from the cli"})' in sent.stdout
    assert "agent1 › All set." in sent.stdout and "(end_turn; 2 step(s)" in sent.stdout
    shown = subprocess.run([MEMSTORE, "agent", "messages", "agent1", "--json", "-w", str(ws_path)], env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert [m["message_type"] for m in json.loads(shown.stdout)][0] == "user_message"

    model.enqueue("agent1", http_error(401))
    failed = subprocess.run([MEMSTORE, "agent", "send", "agent1", "again", "-w", str(ws_path)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert failed.returncode == 1
    assert failed.stderr.startswith("memstore: error: Agent 'agent1': the provider refused the API key")


def test_demo_runs_the_tutorial_offline(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    done = subprocess.run([MEMSTORE, "demo", str(tmp_path / "demo")], env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "No provider key found" in out and "scripted local model" in out
    assert "agent1: Letta was founded" in out and "agent2: Letta's platform" in out
    assert "The read-only block refused agent2: Error This block is read-only and cannot be edited." in out
    log = git(tmp_path / "demo", "log", "--format=%an %s")
    assert "agent1 memory_insert organization" in log and "agent2 memory_insert organization" in log


def test_an_empty_reply_ends_the_turn_with_a_clear_error(store: Store, model: ScriptedModel) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    empty = text("unused")
    empty.body = {**empty.body, "choices": []}  # type: ignore[dict-item]
    model.enqueue("agent1", empty)
    with pytest.raises(AgentTurnError, match="returned no message"):
        store.send_message("agent1", "hello")
    assert [m.message_type for m in read_log(store, store.get_agent("agent1"))] == ["user_message", "error_message"]


def test_a_malformed_call_is_replayed_with_empty_arguments(store: Store, model: ScriptedModel) -> None:
    store.create_block("organization", "Org")
    make_agent(store, model, "agent1", ["organization"])
    model.enqueue("agent1", tool_calls(("memory_insert", "{not json")))
    with pytest.raises(AgentTurnError):
        store.send_message("agent1", "go")
    model.enqueue("agent1", text("ok"))
    store.send_message("agent1", "again")
    replayed = model.requests["agent1"][-1]["messages"]
    calls = [m for m in replayed if m.get("tool_calls")]
    assert calls and calls[0]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_a_missing_key_is_said_as_such_and_noted_in_the_log(store: Store, ws_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    store.create_agent("agent1", "openai/gpt-4o-mini")
    with pytest.raises(AgentTurnError) as caught:
        store.send_message("agent1", "hello")
    assert "no API key for model openai/gpt-4o-mini: set OPENAI_API_KEY" in str(caught.value)
    assert "HTTP" not in str(caught.value)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ws_path.parent / "home")}
    shown = subprocess.run([MEMSTORE, "agent", "messages", "agent1", "-w", str(ws_path)], env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert shown.stdout.splitlines() == [
        "you › hello",
        "(the turn ended early: llm_api_error: no API key for model openai/gpt-4o-mini: set OPENAI_API_KEY in the "
        "environment of the memstore process (no request was sent).)"]

