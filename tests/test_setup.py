"""`memstore setup HOST`: the entry lands where each host reads it, merged, backed up, idempotent,
and the command it writes starts a server a real MCP session can use."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from mcp_server.setup import config_path
from memstore import Store

MEMSTORE = str(Path(sys.executable).with_name("memstore"))
OTHER = {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]}


def setup(home: Path, *args: str, cwd: Path | None = None, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "PATH": path or os.environ["PATH"], "GIT_CONFIG_GLOBAL": os.environ["GIT_CONFIG_GLOBAL"],
           "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run([MEMSTORE, "setup", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=60, check=False)


async def list_tools_as_a_host(entry: dict[str, object], home: Path) -> set[str]:
    """Start the configured command exactly as a host does (its command and args, HOME and PATH only)."""
    params = StdioServerParameters(command=str(entry["command"]), args=[str(a) for a in entry["args"]],  # type: ignore[union-attr]
                                   env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    async with Client(params, cache=None) as client:
        return {t.name for t in (await client.list_tools()).tools}


@pytest.mark.parametrize(("host", "relative", "section"), [
    ("claude-desktop", ".config/Claude/claude_desktop_config.json", "mcpServers"),
    ("cursor", ".cursor/mcp.json", "mcpServers"),
])
@pytest.mark.anyio
async def test_setup_merges_backs_up_is_idempotent_and_the_entry_starts(
        host: str, relative: str, section: str, store: Store, ws_path: Path, tmp_path: Path) -> None:
    store.create_block("organization", "Org")
    store.create_agent("agent1", "openai/gpt-4o-mini")
    home = tmp_path / "host-home"
    config = home / relative
    config.parent.mkdir(parents=True)
    original = json.dumps({"theme": "dark", section: {"filesystem": OTHER}}, indent=4)
    config.write_text(original)

    first = setup(home, host, "-w", str(ws_path), "--as", "agent1")
    assert first.returncode == 0, first.stderr
    assert f"Added the MCP server 'memstore' in {config}" in first.stdout
    written = json.loads(config.read_text())
    assert written["theme"] == "dark" and written[section]["filesystem"] == OTHER
    entry = written[section]["memstore"]
    assert Path(entry["command"]).is_absolute()
    assert entry["args"] == ["serve", "--workspace", str(ws_path.resolve()), "--as", "agent1"]
    backups = list(config.parent.glob(f"{config.name}.*.bak"))
    assert [b.read_text() for b in backups] == [original]

    again = setup(home, host, "-w", str(ws_path), "--as", "agent1")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert json.loads(config.read_text()) == written
    assert len(list(config.parent.glob(f"{config.name}.*.bak"))) == 1

    tools = await list_tools_as_a_host(entry, home)
    assert {"memory_insert", "get_block", "list_blocks"} <= tools


@pytest.mark.anyio
async def test_setup_vscode_writes_the_folders_servers_key(store: Store, ws_path: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".vscode").mkdir(parents=True)
    original = json.dumps({"inputs": [{"id": "key", "type": "promptString"}], "servers": {"fs": OTHER}})
    (project / ".vscode" / "mcp.json").write_text(original)
    home = tmp_path / "host-home"
    home.mkdir()
    done = setup(home, "vscode", "-w", str(ws_path), cwd=project)
    assert done.returncode == 0, done.stderr
    written = json.loads((project / ".vscode" / "mcp.json").read_text())
    assert written["inputs"] == [{"id": "key", "type": "promptString"}] and written["servers"]["fs"] == OTHER
    entry = written["servers"]["memstore"]
    assert entry["type"] == "stdio" and entry["args"] == ["serve", "--workspace", str(ws_path.resolve())]
    assert [b.read_text() for b in (project / ".vscode").glob("mcp.json.*.bak")] == [original]
    again = setup(home, "vscode", "-w", str(ws_path), "--folder", str(project))
    assert "nothing changed" in again.stdout and len(list((project / ".vscode").glob("*.bak"))) == 1
    assert "memory_rethink" in await list_tools_as_a_host(entry, home)


def test_setup_claude_code_runs_claude_mcp_add_or_prints_it(store: Store, ws_path: Path, tmp_path: Path) -> None:
    home = tmp_path / "host-home"
    home.mkdir()
    printed = setup(home, "claude-code", "-w", str(ws_path), path="/usr/bin:/bin")
    assert printed.returncode == 0
    assert f"claude mcp add --scope user memstore -- {MEMSTORE} serve --workspace {ws_path.resolve()}" in printed.stdout

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "claude"  # Claude Code's CLI, recording what it was asked
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n[ \"$2\" = get ] && exit 1\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    added = setup(home, "claude-code", "-w", str(ws_path), path=f"{bin_dir}:/usr/bin:/bin")
    assert added.returncode == 0, added.stderr
    assert "Added the MCP server 'memstore' in Claude Code" in added.stdout
    assert calls.read_text().splitlines()[-1] == (
        f"mcp add --scope user memstore -- {MEMSTORE} serve --workspace {ws_path.resolve()}")


def test_setup_refuses_a_broken_config_and_an_unknown_agent(store: Store, ws_path: Path, tmp_path: Path) -> None:
    home = tmp_path / "host-home"
    config = home / ".cursor" / "mcp.json"
    config.parent.mkdir(parents=True)
    config.write_text("{ not json")
    broken = setup(home, "cursor", "-w", str(ws_path))
    assert broken.returncode == 1 and "is not valid JSON" in broken.stderr and "Nothing was changed" in broken.stderr
    assert config.read_text() == "{ not json" and not list(config.parent.glob("*.bak"))
    unknown = setup(home, "cursor", "-w", str(ws_path), "--as", "ghost")
    assert unknown.returncode == 1 and "No agent named 'ghost'" in unknown.stderr
    printed = setup(home, "cursor", "-w", str(ws_path), "--print")
    assert printed.returncode == 0 and json.loads(printed.stdout.split("\n", 1)[1])["mcpServers"]["memstore"]
    assert config.read_text() == "{ not json"


def test_config_paths_per_platform(tmp_path: Path) -> None:
    home = tmp_path
    assert config_path("claude-desktop", platform="darwin", env={}, home=home) == (
        home / "Library/Application Support/Claude/claude_desktop_config.json")
    assert config_path("claude-desktop", platform="win32", env={"APPDATA": str(home / "Roaming")}, home=home) == (
        home / "Roaming/Claude/claude_desktop_config.json")
    assert config_path("claude-desktop", platform="linux", env={}, home=home) == (
        home / ".config/Claude/claude_desktop_config.json")
    assert config_path("cursor", platform="win32", env={}, home=home) == home / ".cursor/mcp.json"
    assert config_path("vscode", folder=home / "p") == home / "p/.vscode/mcp.json"


def test_setup_keeps_a_private_linked_config_private_and_a_persons_keys(store: Store, ws_path: Path,
                                                                       tmp_path: Path) -> None:
    store.create_agent("agent1", "openai/gpt-4o-mini")
    home = tmp_path / "host-home"
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "mcp.json"
    real.write_text(json.dumps({"mcpServers": {"filesystem": {**OTHER, "env": {"TOKEN": "secret"}}}}))
    real.chmod(0o600)
    (home / ".cursor").mkdir(parents=True)
    (home / ".cursor" / "mcp.json").symlink_to(real)  # a config kept in a dotfiles repository

    assert setup(home, "cursor", "-w", str(ws_path)).returncode == 0
    assert (home / ".cursor" / "mcp.json").is_symlink()  # changed where it lives, the link kept
    assert stat.S_IMODE(real.stat().st_mode) == 0o600  # other servers' secrets stay private
    config = json.loads(real.read_text())
    config["mcpServers"]["memstore"]["env"] = {"MEMSTORE_AUTHOR_NAME": "Ada"}  # a person's own key
    real.write_text(json.dumps(config))
    again = setup(home, "cursor", "-w", str(ws_path), "--as", "agent1")
    assert again.returncode == 0 and "Updated the MCP server 'memstore'" in again.stdout
    entry = json.loads(real.read_text())["mcpServers"]["memstore"]
    assert entry["env"] == {"MEMSTORE_AUTHOR_NAME": "Ada"} and entry["args"][-2:] == ["--as", "agent1"]
    assert len(list(dotfiles.glob("mcp.json.*.bak"))) == 2  # each change kept its own backup
