"""Letta's API on `memstore serve --http`, through Letta's Python client (1.x): codes, paging, preconditions.

A real server process on 127.0.0.1 and the real client; the agents' model is the scripted
one, reached as a provider (litellm with OPENAI_API_BASE).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import letta_client
import pytest
from letta_client import Letta

from memstore import Store
from memstore.agents.scripted import Reply, ScriptedModel, http_error, text, tool_calls

from .conftest import commit_count, git
from .mcp_helpers import ok
from .test_mcp_transport import authed, http_server

TOKEN = "s3cret-token"


@pytest.fixture
def scripted() -> Iterator[ScriptedModel]:
    with ScriptedModel() as model:
        yield model


@pytest.fixture
def server(ws_path: Path, scripted: ScriptedModel) -> Iterator[str]:
    """A live server with a bearer token; yields its base URL (MCP at /mcp, Letta's API at /v1)."""
    Store.init(ws_path)
    env = {"OPENAI_API_BASE": scripted.api_base, "OPENAI_API_KEY": "sk-scripted"}
    with http_server(ws_path, "--token", TOKEN, env=env) as mcp_url:
        yield mcp_url.removesuffix("/mcp")


@pytest.fixture
def client(server: str) -> Letta:
    return Letta(api_key=TOKEN, base_url=server, max_retries=0)


def head(ws: Path, rel: str) -> str:
    return git(ws, "log", "-1", "--format=%H", "--", rel).strip()


def test_errors_use_letta_codes_and_write_nothing(client: Letta, server: str, ws_path: Path) -> None:
    org = client.blocks.create(label="organization", value="Org", limit=100)
    agent = client.agents.create(name="agent1", model="openai/gpt-4o-mini", block_ids=[org.id])
    before = commit_count(ws_path)

    with pytest.raises(letta_client.AuthenticationError) as wrong:
        Letta(api_key="wrong", base_url=server, max_retries=0).blocks.list()
    assert "bearer token" in str(wrong.value.body)
    with pytest.raises(letta_client.NotFoundError) as unknown:
        client.blocks.retrieve("block-00000000-0000-4000-8000-000000000000")
    assert "No block with id block-00000000" in str(unknown.value.body)
    with pytest.raises(letta_client.NotFoundError):
        client.agents.retrieve("agent-00000000-0000-4000-8000-000000000000")
    with pytest.raises(letta_client.NotFoundError):
        client.agents.messages.create("agent-00000000-0000-4000-8000-000000000000",
                                      messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(letta_client.UnprocessableEntityError) as path_label:
        client.blocks.create(label="../etc", value="x")
    assert "a label is never a path" in str(path_label.value.body)
    with pytest.raises(letta_client.UnprocessableEntityError) as too_long:
        client.blocks.update(org.id, value="x" * 101)
    assert "Exceeds 100 character limit (requested 101)" in str(too_long.value.body)
    with pytest.raises(letta_client.UnprocessableEntityError) as no_model:
        client.agents.create(name="agent2")
    assert "model" in str(no_model.value.body)
    with pytest.raises(letta_client.UnprocessableEntityError) as unsupported:
        client.blocks.create(label="tagged", value="x", tags=["a"])
    assert "does not support the field(s) tags" in str(unsupported.value.body)
    twin = client.blocks.create(label="organization", value="Another org")
    with pytest.raises(letta_client.ConflictError) as clash:
        client.agents.blocks.attach(twin.id, agent_id=agent.id)
    assert "organization" in str(clash.value.body)
    assert commit_count(ws_path) == before + 1  # only the twin's creation
    assert client.blocks.retrieve(org.id).value == "Org"


def test_writes_are_authored_by_the_caller(server: str, ws_path: Path) -> None:
    plain = Letta(api_key=TOKEN, base_url=server, max_retries=0)
    named = Letta(api_key=TOKEN, base_url=server, max_retries=0,
                  default_headers={"X-Memstore-Author": "Ada Lovelace <ada@example.com>"})
    block = plain.blocks.create(label="organization", value="Org")
    assert git(ws_path, "log", "-1", "--format=%an <%ae>").strip() == "Letta <api-letta@agents.memstore>"
    named.blocks.update(block.id, value="Org, edited by Ada")
    assert git(ws_path, "log", "-1", "--format=%an <%ae>|%s").strip() == (
        "Ada Lovelace <ada@example.com>|update_block organization")
    message = git(ws_path, "log", "-1", "--format=%B")
    assert "Memstore-Op: update_block" in message and "Memstore-Author-Kind: host" in message
    Letta(api_key=TOKEN, base_url=server, max_retries=0,
          default_headers={"X-Memstore-Author": "bob@example.com"}).blocks.update(block.id, value="Bob's")
    assert git(ws_path, "log", "-1", "--format=%an <%ae>").strip() == "bob <bob@example.com>"


def test_if_match_refuses_a_stale_version(client: Letta, ws_path: Path) -> None:
    block = client.blocks.create(label="organization", value="Org")
    agent = client.agents.create(name="agent1", model="openai/gpt-4o-mini", block_ids=[block.id])
    read = client.blocks.with_raw_response.retrieve(block.id)
    etag = read.headers["etag"]
    assert etag == f'"{head(ws_path, "blocks/organization.md")}"'

    changed = client.blocks.with_raw_response.update(block.id, value="Org v2", extra_headers={"If-Match": etag})
    assert changed.parse().value == "Org v2"
    assert changed.headers["etag"] == f'"{head(ws_path, "blocks/organization.md")}"' != etag
    before = commit_count(ws_path)
    with pytest.raises(letta_client.APIStatusError) as stale:
        client.blocks.update(block.id, value="clobbered", extra_headers={"If-Match": etag})
    assert stale.value.status_code == 412
    assert "has changed since version" in str(stale.value.body)
    with pytest.raises(letta_client.APIStatusError) as stale_core:
        client.agents.blocks.update("organization", agent_id=agent.id, value="clobbered",
                                    extra_headers={"If-Match": etag})
    assert stale_core.value.status_code == 412
    assert commit_count(ws_path) == before
    assert client.blocks.retrieve(block.id).value == "Org v2"
    fresh = client.agents.blocks.with_raw_response.retrieve("organization", agent_id=agent.id).headers["etag"]
    client.agents.blocks.update("organization", agent_id=agent.id, value="Org v3", extra_headers={"If-Match": fresh})
    assert Store.open(ws_path).get_block("organization").value == "Org v3"


def test_lists_page_with_after_and_before_until_empty(client: Letta) -> None:
    made = {client.blocks.create(label=f"block{i}", value=str(i)).id for i in range(7)}
    walked = [b.id for b in client.blocks.list(limit=3)]  # the client asks again with after=<last id>
    assert len(walked) == 7 and set(walked) == made
    assert walked == sorted(walked)
    newest_first = [b.id for b in client.blocks.list(limit=2, order="desc")]
    assert newest_first == list(reversed(walked))
    assert [b.id for b in client.blocks.list(before=walked[3], limit=2).items] == walked[1:3]
    assert client.blocks.list(after=walked[-1]).items == []
    assert [b.label for b in client.blocks.list(label="block4").items] == ["block4"]


def test_list_filters_are_honoured_or_refused(client: Letta, ws_path: Path) -> None:
    """Each filter Letta's client sends either filters or is a 422 naming it: never ignored, which
    would list what the caller filtered out."""
    shared = client.blocks.create(label="organization", value="Org: Letta", description="Who we are")
    alone = client.blocks.create(label="scratch", value="notes", description="Scratch pad")
    client.blocks.create(label="unused", value="nothing")
    client.agents.create(name="support", model="openai/gpt-4o-mini", block_ids=[shared.id, alone.id])
    client.agents.create(name="sales", model="openai/gpt-4o-mini", block_ids=[shared.id])

    def labels(**filters: object) -> list[str]:
        return sorted(b.label for b in client.blocks.list(**filters))  # type: ignore[arg-type]

    assert labels(description_search="WHO") == ["organization"]
    assert labels(label_search="SCR") == ["scratch"] and labels(value_search="letta") == ["organization"]
    assert labels(connected_to_agents_count_gt=1) == ["organization"]
    assert labels(connected_to_agents_count_lt=1) == ["unused"]
    assert labels(connected_to_agents_count_eq=[0, 1]) == ["scratch", "unused"]
    assert labels(templates_only=False) == ["organization", "scratch", "unused"]  # its default: no filter
    assert [a.name for a in client.agents.list(query_text="SAL")] == ["sales"]
    by_id = [a.id for a in client.agents.list(ascending=True)]
    assert by_id == sorted(by_id) and [a.id for a in client.agents.list(ascending=False)] == by_id[::-1]
    assert len(client.agents.list(include=["agent.blocks"]).items) == 2  # which fields to send: all are

    before = commit_count(ws_path)
    for refused, call in (("tags", lambda: client.agents.list(tags=["worker"])),
                          ("project_id", lambda: client.blocks.list(project_id="proj-1")),
                          ("identity_id", lambda: client.blocks.list(identity_id="identity-1")),
                          ("order_by", lambda: client.agents.list(order_by="updated_at"))):
        with pytest.raises(letta_client.UnprocessableEntityError) as exc:
            call()
        assert refused in str(exc.value.body), refused
    assert commit_count(ws_path) == before


def test_two_turns_at_once_lose_nothing(client: Letta, scripted: ScriptedModel, ws_path: Path) -> None:
    block = client.blocks.create(label="organization", value="Org")
    for name in ("agent-a", "agent-b"):
        scripted.enqueue(name, Reply(tool_calls((
            "memory_insert", {"label": "organization", "new_str": f"{name} was here"})).body, delay=0.3),
            text("done"))
    agents = [client.agents.create(name=n.replace("-", ""), model=f"openai/{n}", block_ids=[block.id])
              for n in ("agent-a", "agent-b")]
    errors: list[BaseException] = []

    def turn(agent_id: str) -> None:
        try:
            client.agents.messages.create(agent_id, messages=[{"role": "user", "content": "Sign the block."}])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=turn, args=(a.id,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    lines = client.blocks.retrieve(block.id).value.splitlines()
    assert sorted(lines) == ["Org", "agent-a was here", "agent-b was here"]
    authors = git(ws_path, "log", "--format=%an", "-2", "--", "blocks/organization.md").split()
    assert sorted(authors) == ["agenta", "agentb"]


def test_stream_sends_the_turn_in_lettas_chunks(client: Letta, scripted: ScriptedModel) -> None:
    block = client.blocks.create(label="organization", value="Org")
    agent = client.agents.create(name="agent1", model="openai/streamer", block_ids=[block.id])
    scripted.enqueue("streamer", tool_calls(("memory_insert", {"label": "organization", "new_str": "streamed"})),
                     text("Done."))
    scripted.enqueue("streamer", text("Again."))
    chunks = list(client.agents.messages.create(agent.id, messages=[{"role": "user", "content": "Go."}],
                                                streaming=True))
    kinds = [c.message_type for c in chunks]
    assert kinds == ["tool_call_message", "tool_return_message", "assistant_message", "stop_reason",
                     "usage_statistics"]
    assert chunks[1].status == "success" and chunks[2].content == "Done."
    assert chunks[3].stop_reason == "end_turn"
    with pytest.warns(DeprecationWarning):  # the older route, /messages/stream
        older = list(client.agents.messages.stream(agent.id, messages=[{"role": "user", "content": "Again?"}]))
    assert [c.message_type for c in older] == ["assistant_message", "stop_reason", "usage_statistics"]
    logged = client.agents.messages.list(agent.id, order="asc")
    assert [m.message_type for m in logged.items] == ["user_message", "tool_call_message", "tool_return_message",
                                                      "assistant_message", "user_message", "assistant_message"]


def test_a_failed_turn_is_a_502_that_says_why(client: Letta, scripted: ScriptedModel) -> None:
    agent = client.agents.create(name="agent1", model="openai/broken")
    scripted.enqueue("broken", http_error(500, "the provider is down"))
    with pytest.raises(letta_client.APIStatusError) as failed:
        client.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502
    assert "model openai/broken" in str(failed.value.body) and "HTTP 500" in str(failed.value.body)


def test_openapi_document_and_health(server: str) -> None:
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        doc = http.get("/v1/openapi.json").json()
        assert "/v1/blocks/{block_id}" in doc["paths"] and "/v1/agents/{agent_id}/messages" in doc["paths"]
        assert http.get("/v1/health/").json()["status"] == "ok"
        assert http.get("/v1/health/", headers={"Authorization": "Bearer nope"}).status_code == 401
        rebound = http.get("/v1/health/", headers={"Host": "attacker.example:80"})  # DNS rebinding
        assert rebound.status_code == 421 and "127.0.0.1" in rebound.json()["detail"]


@pytest.mark.anyio
async def test_an_mcp_host_and_the_api_see_each_others_writes(server: str, ws_path: Path) -> None:
    client = Letta(api_key=TOKEN, base_url=server, max_retries=0)
    block = client.blocks.create(label="organization", value="From the API")
    async with authed(f"{server}/mcp", TOKEN) as host:
        assert (await ok(host, "get_block", block="organization"))["value"] == "From the API"
        await ok(host, "memory_insert", label="organization", new_str="From the MCP host")
        assert client.blocks.retrieve(block.id).value == "From the API\nFrom the MCP host"
        client.blocks.update(block.id, value="Rewritten by the API")
        assert (await ok(host, "get_block", block=block.id))["value"] == "Rewritten by the API"


def test_an_agent_with_inline_blocks_is_checked_whole_before_anything_is_written(client: Letta,
                                                                                ws_path: Path) -> None:
    before = commit_count(ws_path)
    with pytest.raises(letta_client.ConflictError):
        client.agents.create(name="agent1", model="openai/gpt-4o-mini", memory_blocks=[
            {"label": "human", "value": "Ada"}, {"label": "human", "value": "Bob"}])
    with pytest.raises(letta_client.UnprocessableEntityError):
        client.agents.create(name="agent1", model="openai/gpt-4o-mini", memory_blocks=[
            {"label": "persona", "value": "fine"}, {"label": "human", "value": "x" * 50, "limit": 10}])
    with pytest.raises(letta_client.UnprocessableEntityError):
        client.agents.create(name="agent1", model="openai/gpt-4o-mini", tools=["no_such_tool"],
                             memory_blocks=[{"label": "persona", "value": "fine"}])
    assert commit_count(ws_path) == before and client.blocks.list().items == []
    agent = client.agents.create(name="agent1", model="openai/gpt-4o-mini", memory_blocks=[
        {"label": "persona", "value": "I am agent1."}, {"label": "human", "value": "Ada", "read_only": True}])
    assert [(b.label, b.value, b.read_only) for b in agent.memory.blocks] == [
        ("persona", "I am agent1.", False), ("human", "Ada", True)]
    with pytest.raises(letta_client.ConflictError):
        client.agents.create(name="agent1", model="openai/gpt-4o-mini", memory_blocks=[{"label": "x", "value": ""}])
    assert len(client.blocks.list().items) == 2


def test_a_model_endpoint_needs_a_server_with_a_token(store_server_without_token: str) -> None:
    client = Letta(api_key="unused", base_url=store_server_without_token, max_retries=0)
    with pytest.raises(letta_client.PermissionDeniedError) as refused:
        client.agents.create(name="agent1", llm_config={"model": "gpt-4o-mini", "model_endpoint_type": "openai",
                                                        "model_endpoint": "http://attacker.example/v1",
                                                        "context_window": 128000})
    assert "provider key" in str(refused.value.body)
    assert client.agents.list().items == []


@pytest.fixture
def store_server_without_token(ws_path: Path) -> Iterator[str]:
    Store.init(ws_path)
    with http_server(ws_path) as mcp_url:
        yield mcp_url.removesuffix("/mcp")


def test_delete_honours_if_match(client: Letta, ws_path: Path) -> None:
    block = client.blocks.create(label="notes", value="one")
    stale = client.blocks.with_raw_response.retrieve(block.id).headers["etag"]
    client.blocks.update(block.id, value="two")
    with pytest.raises(letta_client.APIStatusError) as refused:
        client.blocks.delete(block.id, extra_headers={"If-Match": stale})
    assert refused.value.status_code == 412 and (ws_path / "blocks/notes.md").exists()


def test_odd_bodies_and_headers_get_clear_answers_never_a_500(client: Letta, server: str, ws_path: Path) -> None:
    block = client.blocks.create(label="organization", value="Org")
    agent = client.agents.create(name="agent1", model="openai/gpt-4o-mini", block_ids=[block.id])
    before = commit_count(ws_path)
    http = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
    for method, path, raw in (("POST", "/v1/blocks/", '{"label": "x", "limit": NaN}'),
                              ("PATCH", f"/v1/blocks/{block.id}", '{"limit": Infinity}'),
                              ("POST", f"/v1/agents/{agent.id}/messages",
                               '{"messages": [{"role": "user", "content": "x"}], "max_steps": NaN}'),
                              ("POST", "/v1/blocks/", "[" * 5000 + "]" * 5000),
                              ("POST", "/v1/blocks/", '{"label": "x", "limit": ' + "9" * 5000 + "}")):
        answer = http.request(method, path, content=raw)
        assert answer.status_code == 422 and "Invalid request" in answer.json()["detail"], (path, answer.text)
    for path in (f"/v1/agents/{agent.id}/messages/stream", f"/v1/agents/{agent.id}/messages"):
        answer = http.post(path, json={"messages": [{"role": "user", "content": "a\x00b"}], "streaming": True})
        assert answer.status_code == 422 and "NUL" in answer.json()["detail"]  # before any stream starts
    assert commit_count(ws_path) == before
    http.patch(f"/v1/blocks/{block.id}", json={"value": "Zoë's"},
               headers={"X-Memstore-Author": "Zoë Ümlaut <zoe@example.com>".encode()})
    assert git(ws_path, "log", "-1", "--format=%an").strip() == "Zoë Ümlaut"  # UTF-8 in a header, as sent


def test_a_body_over_the_limit_gets_413_declared_or_chunked_and_writes_nothing(server: str, ws_path: Path) -> None:
    before = commit_count(ws_path)
    http = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"}, timeout=60)
    big = b'{"label": "big", "limit": 1000000, "value": "' + b"\\ud83d\\ude00" * 500_000 + b'"}'  # 6 MB
    assert len(big) > 4 * 1024 * 1024
    answer = http.post("/v1/blocks/", content=big)
    assert answer.status_code == 413 and "4 MiB" in answer.json()["detail"], answer.text

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    answer = http.post("/v1/blocks/", content=chunked())
    assert answer.status_code == 413 and "4 MiB" in answer.json()["detail"], answer.text
    assert commit_count(ws_path) == before and not list((ws_path / "blocks").glob("big*"))

    def small() -> Iterator[bytes]:  # a chunked body under the limit is read whole and served
        yield b'{"label": "small", '
        yield b'"value": "fits"}'

    answer = http.post("/v1/blocks/", content=small())
    assert answer.status_code == 200 and answer.json()["value"] == "fits", answer.text


def test_if_match_takes_a_list_of_versions(client: Letta, ws_path: Path) -> None:
    block = client.blocks.create(label="organization", value="Org")
    etag = client.blocks.with_raw_response.retrieve(block.id).headers["etag"]
    other = '"0123456789abcdef0123456789abcdef01234567"'
    assert client.blocks.update(block.id, value="Org v2", extra_headers={"If-Match": f"{other}, {etag}"}).value \
        == "Org v2"
    with pytest.raises(letta_client.APIStatusError) as stale:  # neither is the version now
        client.blocks.update(block.id, value="clobbered", extra_headers={"If-Match": f"{other}, {etag}"})
    assert stale.value.status_code == 412


def test_a_core_memory_read_names_no_version_while_its_commit_waits(client: Letta, ws_path: Path) -> None:
    block = client.blocks.create(label="organization", value="Org")
    agent = client.agents.create(name="agent1", model="openai/gpt-4o-mini", block_ids=[block.id])
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")  # a person's `git add -p`
    try:
        written = client.blocks.with_raw_response.update(block.id, value="Org v2")
        assert "etag" not in written.headers and "index.lock" in written.headers["x-memstore-pending"]
        read = client.agents.blocks.with_raw_response.retrieve("organization", agent_id=agent.id)
        assert read.parse().value == "Org v2" and "etag" not in read.headers  # not the old version's
        assert "commit waits" in read.headers["x-memstore-pending"]
        made = client.blocks.with_raw_response.create(label="policy", value="Be kind")
        assert "etag" not in made.headers and "index.lock" in made.headers["x-memstore-pending"]
        attached = client.agents.blocks.with_raw_response.attach(made.parse().id, agent_id=agent.id)
        assert "index.lock" in attached.headers["x-memstore-pending"]
    finally:
        lock.unlink()
    deadline = time.monotonic() + 30
    while "etag" not in (read := client.agents.blocks.with_raw_response.retrieve("organization",
                                                                             agent_id=agent.id)).headers:
        assert time.monotonic() < deadline, "the server's watcher never committed the waiting edit"
        time.sleep(0.1)
    assert read.headers["etag"] == f'"{head(ws_path, "blocks/organization.md")}"'


def test_a_new_agent_never_inherits_a_deleted_agents_conversation(client: Letta, scripted: ScriptedModel,
                                                                ws_path: Path) -> None:
    old = client.agents.create(name="bot", model="openai/bot-model")
    scripted.enqueue("bot-model", text("Noted."), text("Hello."))
    client.agents.messages.create(old.id, messages=[{"role": "user", "content": "my password is hunter2"}])
    client.agents.delete(old.id)
    assert not (ws_path / "agents/bot/messages.jsonl").exists()
    assert "hunter2" in git(ws_path, "log", "-p", "--", "agents/bot/messages.jsonl")  # history keeps it
    new = client.agents.create(name="bot", model="openai/bot-model")
    assert list(client.agents.messages.list(new.id)) == []
    client.agents.messages.create(new.id, messages=[{"role": "user", "content": "hello"}])
    sent = scripted.requests["bot-model"][-1]["messages"]
    assert "hello" in str(sent) and "hunter2" not in str(sent)


HOLDER = """
import pathlib, sys, time
from memstore.locks import Locks
with Locks(pathlib.Path(sys.argv[1])).hold(sys.argv[2], "a test"):
    print("held", flush=True)
    while not pathlib.Path(sys.argv[3]).exists():
        time.sleep(0.01)
"""


def test_a_block_write_held_up_by_another_writer_does_not_hold_up_the_server(
        client: Letta, server: str, ws_path: Path, tmp_path: Path) -> None:
    """Block PATCHes run on the event loop when nothing can hold them up; one whose lock another process
    holds goes to a worker thread, so every other request is still answered meanwhile."""
    import subprocess
    import sys

    block = client.blocks.create(label="organization", value="Org")
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ws_path / ".memstore/locks"),
                               "blocks__organization.md.lock", str(release)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        done: list[object] = []
        patch = threading.Thread(target=lambda: done.append(client.blocks.update(block.id, value="Org v2")))
        patch.start()
        time.sleep(0.3)  # the PATCH reaches the server and waits for the lock
        health = httpx.get(f"{server}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert health.json()["status"] == "ok"  # answered meanwhile
        assert client.blocks.retrieve(block.id).value == "Org" and not done  # still waiting: nothing written
    finally:
        release.write_text("")
        holder.wait(timeout=30)
    patch.join(timeout=30)
    assert done and client.blocks.retrieve(block.id).value == "Org v2"
    assert git(ws_path, "log", "-1", "--format=%s").startswith("update_block organization")
