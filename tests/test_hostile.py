"""Hostile files and names: nothing from outside leaks in, nothing hangs, one bad file never stops the rest."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_server import MemstoreServer
from memstore import Store
from memstore.cli import main
from memstore.errors import ConflictError, InvalidNameError, MemstoreError
from memstore.handedits import pick_up, status

from .conftest import assert_clean_repo, git
from .mcp_helpers import error, ok
from .test_mcp_transport import MEMSTORE, authed, http_server

SECRET = "root:x:0:0:the secret outside the workspace\n"
unix_only = pytest.mark.skipif(sys.platform == "win32", reason="symlinks and FIFOs need privileges on Windows")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    return secret


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMSTORE, *args, "--workspace", str(ws)], capture_output=True, text=True, timeout=120)


def leaked(text: str) -> bool:
    return "the secret outside" in text


# -- symbolic links -------------------------------------------------------------------------


@unix_only
def test_a_symlinked_block_is_refused_by_the_cli_the_watcher_and_status(store: Store, ws_path: Path,
                                                                        outside: Path) -> None:
    store.create_block("org", "Org")
    (ws_path / "blocks/passwd.md").symlink_to(outside)
    (ws_path / "blocks/org.md").unlink()
    (ws_path / "blocks/org.md").symlink_to(outside)  # a committed block replaced by a link
    result = pick_up(store, "blocks/passwd.md")
    assert result.action == "invalid" and "symbolic link" in (result.problem or "")
    assert pick_up(store, "blocks/org.md").action == "invalid"
    assert "passwd" not in git(ws_path, "ls-tree", "-r", "--name-only", "HEAD")
    report = status(store)
    assert {p.path for p in report.invalid} == {"blocks/passwd.md", "blocks/org.md"}
    assert all("symbolic link" in (p.problem or "") for p in report.invalid)
    shown = cli(ws_path, "block", "show", "org")
    assert shown.returncode == 0 and "Org" in shown.stdout and not leaked(shown.stdout + shown.stderr)
    assert "symbolic link" in shown.stderr  # a warning: the last committed version is shown
    listed = cli(ws_path, "block", "list", "--json")
    assert not leaked(listed.stdout) and "passwd" not in listed.stdout
    missing = cli(ws_path, "block", "show", "passwd")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and not leaked(missing.stderr)
    edit = cli(ws_path, "block", "insert", "org", "more")
    assert edit.returncode == 1 and "symbolic link" in edit.stderr
    assert outside.read_text() == SECRET  # never written through


@unix_only
def test_symlinks_are_never_served_over_mcp(store: Store, ws_path: Path, outside: Path) -> None:
    import anyio

    store.create_block("org", "Org")
    agent = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[store.get_block("org").id])
    (ws_path / "blocks/creds.md").symlink_to(outside)
    log_dir = ws_path / "agents" / "agent1"
    log_dir.mkdir(exist_ok=True)
    (log_dir / "messages.jsonl").symlink_to(outside)

    async def run() -> None:
        async with Client(MemstoreServer(store), cache=None) as client:
            assert not leaked(await error(client, "get_block", block="creds"))
            listed = await ok(client, "list_blocks")
            assert [b["label"] for b in listed] == ["org"]
            assert not leaked(await error(client, "list_messages", agent="agent1"))
            report = await ok(client, "workspace_status")
            assert {p["path"] for p in report["invalid"]} >= {"blocks/creds.md"}
            with pytest.raises(Exception) as caught:
                await client.read_resource("memstore://blocks/creds")
            assert not leaked(str(caught.value))

    anyio.run(run)
    assert agent.id and "creds" not in git(ws_path, "ls-tree", "-r", "--name-only", "HEAD")


@unix_only
def test_a_symlinked_folder_and_a_pulled_symlink_are_refused(store: Store, ws_path: Path, outside: Path,
                                                             tmp_path: Path) -> None:
    store.create_agent("agent1", "openai/gpt-4o-mini")
    (ws_path / "agents" / "agent1").symlink_to(outside.parent, target_is_directory=True)
    (outside.parent / "messages.jsonl").write_text('{"secret": "the secret outside"}\n')
    with pytest.raises(Exception) as caught:
        store.list_messages("agent1")
    assert "symbolic link" in str(caught.value) and not leaked(str(caught.value))
    (ws_path / "agents" / "agent1").unlink()

    other = tmp_path / "collaborator"
    git(tmp_path, "clone", "-q", str(ws_path), str(other))
    (other / "blocks/pulled.md").symlink_to(outside)
    git(other, "add", "blocks/pulled.md")
    git(other, "-c", "user.name=C", "-c", "user.email=c@x", "commit", "-qm", "a link")
    git(ws_path, "pull", "-q", "--no-rebase", str(other), "main")
    fresh = Store.open(ws_path)
    with pytest.raises(MemstoreError, match="symbolic link") as caught:
        fresh.get_block("pulled")
    assert not leaked(str(caught.value))
    assert [b.label for b in fresh.list_blocks()] == []


# -- YAML bombs ---------------------------------------------------------------------------------


def bomb(depth: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "---\nid: block-00000000-0000-0000-0000-00000000b0b0\n" + "\n".join(lines) + "\n---\nboom\n"


@pytest.mark.skipif(sys.platform == "win32", reason="memory limits through setrlimit")
@pytest.mark.parametrize("depth", [3, 7, 9])
def test_yaml_bombs_are_refused_in_bounded_memory_and_other_blocks_stay_served(store: Store, ws_path: Path,
                                                                              depth: int) -> None:
    store.create_block("org", "Org: Letta")
    (ws_path / "blocks/bomb.md").write_text(bomb(depth))
    limited = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"
    for args in (["status"], ["block", "list"], ["block", "show", "org"], ["block", "show", "bomb", "--json"]):
        proc = subprocess.run([sys.executable, "-c", f"{limited}\nfrom mcp_server.cli import main\nmain()",
                               *args, "--workspace", str(ws_path)], capture_output=True, text=True, timeout=60)
        out = proc.stdout + proc.stderr
        assert "MemoryError" not in out and "Traceback" not in out and len(out) < 5000, args
    assert "anchors and aliases" in subprocess.run([MEMSTORE, "status", "-w", str(ws_path)], capture_output=True,
                                                   text=True).stdout
    assert pick_up(store, "blocks/bomb.md").action == "invalid"  # never committed
    assert store.get_block("org").value == "Org: Letta"
    assert store.memory_insert("org", "still works").version


# -- names -------------------------------------------------------------------------------------


def test_agent_names_are_never_paths_md_files_or_reserved(store: Store) -> None:
    for bad in ("evil.md", "Evil.MD", "con", "nul.txt", "COM1", "../x", "a/b"):
        with pytest.raises(InvalidNameError):
            store.create_agent(bad, "openai/gpt-4o-mini")
    with pytest.raises(InvalidNameError, match="'a/b': an agent name is never a path"):
        store.create_agent("a/b", "openai/gpt-4o-mini")
    store.create_agent("agent1", "openai/gpt-4o-mini")
    with pytest.raises(ConflictError, match="differ only in case"):
        store.create_agent("Agent1", "openai/gpt-4o-mini")


@pytest.mark.anyio
async def test_mcp_refuses_an_md_agent_name(store: Store) -> None:
    async with Client(MemstoreServer(store), cache=None) as client:
        assert "may not end in '.md'" in await error(client, "create_agent", name="evil.md", model="m/x")
        assert (await ok(client, "list_agents")) == []


def test_a_folder_left_by_an_md_agent_name_breaks_nothing(store: Store, ws_path: Path) -> None:
    store.create_agent("agent1", "openai/gpt-4o-mini")
    (ws_path / "agents/evil.md").mkdir()  # as an older memstore let a host make
    assert [a.name for a in store.list_agents()] == ["agent1"]
    assert "folder" in str(store.agent_problems()[0])
    out = cli(ws_path, "agent", "list")
    assert out.returncode == 0 and "agent1" in out.stdout
    assert cli(ws_path, "status").returncode == 0


def test_case_twins_and_reserved_names_get_portable_file_names(store: Store, ws_path: Path) -> None:
    assert store.create_block("org", "a").name == "org"
    twin = store.create_block("Org", "b")
    assert twin.label == "Org" and twin.name == "Org-2"
    reserved = store.create_block("con", "c")
    assert reserved.label == "con" and reserved.name == "con-2"
    assert store.create_block("aux.notes", "d").name == "aux-2.notes"
    files = sorted(p.name.lower() for p in (ws_path / "blocks").glob("*.md"))
    assert len(files) == len(set(files))
    assert store.get_block("Org").value == "b" and store.get_block("con").value == "c"


# -- isolation and text ------------------------------------------------------------------------


def test_one_undecodable_agent_file_does_not_stop_the_others(store: Store, ws_path: Path) -> None:
    block = store.create_block("org", "Org")
    store.create_agent("good", "openai/gpt-4o-mini", block_ids=[block.id])
    (ws_path / "agents/bad.md").write_bytes(b"---\nid: agent-\xff\n---\n")  # never committed
    assert [a.name for a in store.list_agents()] == ["good"]
    out = cli(ws_path, "agent", "list")
    assert out.returncode == 0 and "good" in out.stdout
    assert cli(ws_path, "block", "insert", "org", "by good", "--as", "good").returncode == 0
    refused = cli(ws_path, "block", "insert", "org", "by bad", "--as", "bad")
    assert refused.returncode == 1 and "not valid UTF-8" in refused.stderr
    assert any(p.path == "agents/bad.md" for p in status(store).invalid)


def test_an_agent_broken_by_hand_is_read_as_last_committed(store: Store, ws_path: Path) -> None:
    agent = store.create_agent("good", "openai/gpt-4o-mini")
    path = ws_path / "agents/good.md"
    path.write_bytes(path.read_bytes() + b"\xff")
    assert store.get_agent("good").id == agent.id
    assert any(p.path == "agents/good.md" for p in status(store).invalid)


def test_a_nul_byte_written_by_hand_is_invalid_and_never_committed(store: Store, ws_path: Path) -> None:
    store.create_block("org", "Org")
    path = ws_path / "blocks/org.md"
    path.write_bytes(path.read_bytes().replace(b"Org\n", b"O\x00rg\n"))
    result = pick_up(store, "blocks/org.md")
    assert result.action == "invalid" and "NUL" in (result.problem or "")
    assert store.get_block("org").value == "Org"
    assert "Binary" not in git(ws_path, "log", "-p", "--", "blocks/org.md")


# -- one-line errors ---------------------------------------------------------------------------


def test_cli_errors_are_one_line_for_bad_files_and_a_failing_system(store: Store, ws_path: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\r\n")
    runner = CliRunner()
    env = {"MEMSTORE_WORKSPACE": str(ws_path)}
    out = runner.invoke(main, ["block", "create", "x", "--file", str(latin1)], env=env)
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "not UTF-8" in out.output
    assert runner.invoke(main, ["block", "create", "y", "--file", str(crlf)], env=env).exit_code == 0
    assert store.get_block("y").value == store.create_block("z", "one\r\ntwo\r\n").value  # as the API keeps it

    import errno

    import memstore.locks as locks

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(ws_path / ".memstore/locks/x.lock"))

    monkeypatch.setattr(locks.Locks, "hold", read_only)
    out = runner.invoke(main, ["block", "insert", "y", "more"], env=env)
    assert out.exit_code == 1 and out.output.count("\n") == 1
    assert out.output.startswith("memstore: error: the file system is read-only")


@pytest.mark.anyio
async def test_mcp_tool_errors_carry_the_reason_of_a_failing_system(store: Store,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import memstore.locks as locks

    store.create_block("org", "Org")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks.Locks, "hold", full)
    async with Client(MemstoreServer(store), cache=None) as client:
        assert "the disk is full" in await error(client, "memory_insert", label="org", new_str="x")


# -- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_bearer_scheme_is_accepted_in_any_case(store: Store, ws_path: Path) -> None:
    store.create_block("organization", "Org")
    with http_server(ws_path, "--token", "s3cret") as url:
        for scheme in ("bearer", "BEARER", "Bearer"):
            http = httpx2.AsyncClient(headers={"Authorization": f"{scheme} s3cret"})
            async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
                await ok(client, "get_block", block="organization")
        async with httpx2.AsyncClient() as raw:
            response = await raw.post(url, json={}, headers={"Authorization": "bearer wrong"})
            assert response.status_code == 401
        async with authed(url, "s3cret") as client:
            await ok(client, "memory_insert", label="organization", new_str="ok")
    assert_clean_repo(ws_path)


def test_a_copied_block_file_does_not_make_its_label_ambiguous(store: Store, ws_path: Path) -> None:
    store.create_block("org", "Org")
    (ws_path / "blocks/orgcopy.md").write_bytes((ws_path / "blocks/org.md").read_bytes())
    assert store.memory_insert("org", "still one block").block.name == "org"
    assert [b.name for b in store.list_blocks()] == ["org"]
    assert any("already belongs to blocks/org.md" in str(p) for p in store.problems())


def test_a_file_name_names_its_block_even_when_its_label_is_shared(store: Store) -> None:
    store.create_block("organization", "first")
    second = store.create_block("organization", "second")
    assert second.name == "organization-2"
    assert store.get_block("organization").value == "first"  # the file name wins over the shared label
    assert store.get_block("organization-2").value == "second"


def test_a_hand_made_md_agent_file_is_refused_not_crashed_on(store: Store, ws_path: Path) -> None:
    good = store.create_agent("agent1", "openai/gpt-4o-mini")
    text = (ws_path / "agents/agent1.md").read_text().replace("name: agent1", "name: agent1.md")
    (ws_path / "agents/agent1.md.md").write_text(text.replace(good.id, "agent-00000000-0000-0000-0000-0000000000a1"))
    assert [a.name for a in store.list_agents()] == ["agent1"]
    out = cli(ws_path, "agent", "send", "agent1.md", "hello")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "may not end in '.md'" in out.stderr


@unix_only
def test_the_running_watcher_refuses_symlinks_in_blocks_and_agents(store: Store, ws_path: Path,
                                                                 outside: Path) -> None:
    import queue

    from memstore.watcher import Watcher

    store.create_agent("agent1", "openai/gpt-4o-mini")
    before = git(ws_path, "rev-parse", "HEAD")
    picked: queue.Queue = queue.Queue()
    with Watcher(store, on_pick_up=picked.put) as watcher:
        assert watcher.ready.wait(15)
        (ws_path / "blocks/passwd.md").symlink_to(outside)
        (ws_path / "agents/evil.md").symlink_to(outside)
        results = {}
        while len(results) < 2:
            result = picked.get(timeout=15)
            results[result.path] = result
    assert {r.action for r in results.values()} == {"invalid"}
    assert all("symbolic link" in (r.problem or "") for r in results.values())
    assert git(ws_path, "rev-parse", "HEAD") == before  # nothing committed
    assert [a.name for a in store.list_agents()] == ["agent1"]
    assert not leaked(str(store.agent_problems()))


def test_two_writers_creating_case_twin_agents_at_once_make_only_one(store: Store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`Bob` and `bob` would be one file on macOS and Windows: of two writers racing to make them, one is refused,
    also on Linux, where the two files could both be made."""
    import threading

    listed = Store._agent_file_names
    seen: set[int] = set()

    def slow_first_look(self: Store) -> list[str]:
        names = listed(self)
        if threading.get_ident() not in seen:  # each writer's first look, then a pause: both look before either writes
            seen.add(threading.get_ident())
            time.sleep(0.3)
        return names

    monkeypatch.setattr(Store, "_agent_file_names", slow_first_look)
    outcomes: dict[str, object] = {}

    def create(name: str) -> None:
        try:
            outcomes[name] = store.create_agent(name, "openai/gpt-4o-mini")
        except ConflictError as exc:
            outcomes[name] = exc

    writers = [threading.Thread(target=create, args=(name,)) for name in ("Bob", "bob")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    refused = [o for o in outcomes.values() if isinstance(o, ConflictError)]
    assert len(refused) == 1 and "differ only in case" in str(refused[0])
    assert len([p for p in (store.ws.root / "agents").glob("*.md") if p.stem.lower() == "bob"]) == 1


def test_two_writers_creating_case_twin_blocks_at_once_make_two_portable_files(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels `Org` and `org` at once: two blocks, in files that are not case twins (one is `org-2.md`)."""
    import threading

    choose = Store._new_block_files
    seen: set[int] = set()

    def slow_first_choice(self: Store, blocks: list) -> dict:
        chosen = choose(self, blocks)
        if threading.get_ident() not in seen:  # both choose a name before either writes its file
            seen.add(threading.get_ident())
            time.sleep(0.3)
        return chosen

    monkeypatch.setattr(Store, "_new_block_files", slow_first_choice)
    writers = [threading.Thread(target=store.create_block, args=(label, "x")) for label in ("Org", "org")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    names = sorted(p.stem.lower() for p in (store.ws.root / "blocks").glob("*.md"))
    assert len(names) == 2 and len(set(names)) == 2, names
    assert sorted(b.label for b in store.list_blocks()) == ["Org", "org"]
