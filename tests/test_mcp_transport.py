"""`memstore serve` as a real process: stdio and streamable HTTP on 127.0.0.1, two hosts at once."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation

from memstore import Store

from .conftest import commit_count, git
from .mcp_helpers import error, ok

# The 2025 protocol's resources/subscribe, which Claude Desktop and most hosts use, is tested on purpose.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore:resources/subscribe is removed:mcp.shared.exceptions.MCPDeprecationWarning")]

MEMSTORE = str(Path(sys.executable).with_name("memstore"))
STARTUP_TIMEOUT = 30


def host_env() -> dict[str, str]:
    """What an MCP host passes a server it launches: little more than HOME and PATH."""
    keep = ("HOME", "PATH", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM")
    return {k: os.environ[k] for k in keep if k in os.environ}


def stdio_params(ws: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=MEMSTORE, args=["serve", "--workspace", str(ws), *extra], env=host_env())


@contextmanager
def http_server(ws: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `memstore serve --http --port 0`; yield its MCP URL, read from the line it prints."""
    proc = subprocess.Popen([MEMSTORE, "serve", "--http", "--port", "0", "-w", str(ws), *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**host_env(), **(env or {})}, text=True)
    try:
        line = _read_line(proc)
        assert "serving MCP on " in line, line
        yield line.split("serving MCP on ", 1)[1].split()[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        assert proc.stdout.read() == ""  # HTTP mode prints nothing on stdout either


def _read_line(proc: subprocess.Popen[str]) -> str:
    """The server's first stderr line, waiting at most STARTUP_TIMEOUT seconds."""
    assert proc.stderr is not None
    with anyio.from_thread.start_blocking_portal() as portal:
        try:
            return portal.call(_bounded_readline, proc)
        except TimeoutError:
            proc.kill()
            raise


async def _bounded_readline(proc: subprocess.Popen[str]) -> str:
    with anyio.fail_after(STARTUP_TIMEOUT):
        return await anyio.to_thread.run_sync(proc.stderr.readline, abandon_on_cancel=True)  # type: ignore[union-attr]


def authed(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http), cache=None)


# -- stdio -------------------------------------------------------------------------------


async def test_stdio_server_edits_as_the_host_named_in_the_handshake(store: Store, ws_path: Path) -> None:
    store.create_block("organization", "Org")
    host = Implementation(name="Claude Desktop", version="1.0")
    async with Client(stdio_params(ws_path), cache=None, client_info=host) as client:
        done = await ok(client, "memory_insert", label="organization", new_str="From Claude.")
        assert done["block"]["value"] == "Org\nFrom Claude."
        assert "did not appear verbatim" in await error(client, "memory_replace", label="organization",
                                                        old_str="nope", new_str="x")
    assert git(ws_path, "log", "-1", "--format=%an <%ae>").strip() == (
        "Claude Desktop <host-claude-desktop@agents.memstore>")


async def test_stdio_server_as_an_agent_is_bound_by_its_blocks(store: Store, ws_path: Path) -> None:
    org = store.create_block("organization", "Org")
    store.create_block("policies", "Rules", read_only=True)
    agent = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[org.id])
    async with Client(stdio_params(ws_path, "--as", "agent1"), cache=None) as client:
        await ok(client, "memory_insert", label="organization", new_str="agent1: hello")
        assert "Block field policies does not exist" in await error(client, "memory_insert", label="policies",
                                                                    new_str="x")
    assert git(ws_path, "log", "-1", "--format=%ae").strip() == f"{agent.id}@agents.memstore"


async def test_a_host_closing_a_stdio_session_leaves_nothing_on_stderr(store: Store, ws_path: Path,
                                                                        tmp_path: Path) -> None:
    """A host logs a server's stderr as its errors: a session that ends normally leaves it empty (watchdog
    logged an error of its own at every stop that raced a read of the watched folders)."""
    store.create_block("organization", "Org")
    for run in range(3):
        log_path = tmp_path / f"stderr-{run}.txt"
        with log_path.open("w") as errlog:
            async with stdio_client(stdio_params(ws_path), errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await session.call_tool("memory_insert", {"label": "organization", "new_str": f"line {run}"})
        assert log_path.read_text() == "", log_path.read_text()
    assert store.get_block("organization").value == "Org\nline 0\nline 1\nline 2"


def test_ctrl_c_stops_an_http_server_cleanly(store: Store, ws_path: Path) -> None:
    proc = subprocess.Popen([MEMSTORE, "serve", "--http", "--port", "0", "-w", str(ws_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=host_env(), text=True)
    try:
        assert "serving MCP on " in _read_line(proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=STARTUP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and err == "", err


def test_stdio_stdout_carries_only_protocol_messages(store: Store, ws_path: Path) -> None:
    store.create_block("organization", "Org")
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "memory_insert", "arguments": {"label": "organization", "new_str": "raw"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "get_block", "arguments": {"block": "ghost"}}},
    ]
    proc = subprocess.Popen([MEMSTORE, "serve", "-w", str(ws_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=host_env())
    assert proc.stdin is not None and proc.stdout is not None
    replies = []
    for message in messages:
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        if "id" in message:
            replies.append(json.loads(_stdout_line(proc, deadline=time.monotonic() + STARTUP_TIMEOUT)))
    out, err = proc.communicate(b"", timeout=STARTUP_TIMEOUT)
    assert out == b"" and b"Traceback" not in err
    assert [r.get("id") for r in replies] == [1, 2, 3]
    assert replies[1]["result"]["isError"] is False
    assert replies[2]["result"]["isError"] is True
    assert "No block named 'ghost'" in replies[2]["result"]["content"][0]["text"]


def _stdout_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """One line of the server's stdout, failing the test if none comes before `deadline`."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        proc.kill()
        pytest.fail("the server did not answer in time")
    return proc.stdout.readline()


def test_serve_refuses_a_missing_workspace_with_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run([MEMSTORE, "serve", "-w", str(tmp_path / "nowhere")], capture_output=True, text=True,
                          env=host_env(), timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("memstore: error: ") and "Traceback" not in proc.stderr


# -- HTTP --------------------------------------------------------------------------------


async def test_http_on_loopback_serves_without_a_token(store: Store, ws_path: Path) -> None:
    store.create_block("organization", "Org")
    with http_server(ws_path) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
        async with Client(url, cache=None) as client:
            await ok(client, "memory_insert", label="organization", new_str="over http")
            assert (await ok(client, "get_block", block="organization"))["value"] == "Org\nover http"


async def test_http_with_a_token_refuses_requests_without_it(store: Store, ws_path: Path) -> None:
    store.create_block("organization", "Org")
    before = commit_count(ws_path)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "memory_insert", "arguments": {"label": "organization", "new_str": "sneaky"}}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with http_server(ws_path, "--token", "s3cret") as url:
        async with httpx2.AsyncClient() as http:
            for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = await http.post(url, json=call, headers={**headers, **auth})
                assert response.status_code == 401
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert commit_count(ws_path) == before
        async with authed(url, "s3cret") as client:
            await ok(client, "memory_insert", label="organization", new_str="with token")
    assert commit_count(ws_path) == before + 1


def test_http_beyond_loopback_requires_a_token(store: Store, ws_path: Path) -> None:
    proc = subprocess.run([MEMSTORE, "serve", "--http", "--host", "0.0.0.0", "--port", "0", "-w", str(ws_path)],
                          capture_output=True, text=True, env=host_env(), timeout=60, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "without a bearer token" in proc.stderr and "--token" in proc.stderr


# -- two hosts ---------------------------------------------------------------------------


async def test_two_hosts_editing_one_block_lose_nothing(store: Store, ws_path: Path) -> None:
    store.create_block("organization", "Org", limit=100_000)
    before = commit_count(ws_path)
    per_host = 25

    async def host(name: str) -> None:
        async with Client(stdio_params(ws_path), cache=None, client_info=Implementation(name=name, version="1")) as c:
            for i in range(per_host):
                await ok(c, "memory_insert", label="organization", new_str=f"{name} line {i}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(host, "alpha")
        tg.start_soon(host, "beta")

    lines = store.get_block("organization").value.split("\n")
    for name in ("alpha", "beta"):
        assert sorted(line for line in lines if line.startswith(name)) == sorted(
            f"{name} line {i}" for i in range(per_host))
    assert commit_count(ws_path) == before + 2 * per_host
    authors = git(ws_path, "log", f"-{2 * per_host}", "--format=%an").split()
    assert sorted(set(authors)) == ["alpha", "beta"] and authors.count("alpha") == per_host
    assert subprocess.run(["git", "fsck", "--strict"], cwd=ws_path, capture_output=True, check=False).returncode == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_http_subscribers_hear_about_another_processs_edit(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "a")
    arrived = anyio.Event()

    async def on_message(message: object) -> None:
        if getattr(message, "method", "") == "notifications/resources/updated":
            arrived.set()

    with http_server(ws_path) as url:
        async with Client(url, mode="legacy", cache=None, message_handler=on_message) as client:
            await client.subscribe_resource("memstore://blocks/notes")
            await anyio.to_thread.run_sync(lambda: Store.open(ws_path).memory_insert("notes", "from elsewhere"))
            with anyio.fail_after(STARTUP_TIMEOUT):
                await arrived.wait()
