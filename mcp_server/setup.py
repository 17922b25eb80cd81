"""`memstore setup HOST`: install memstore's MCP server where a host reads its servers.

Claude Desktop, Cursor and VS Code read a JSON file; Claude Code keeps its own list,
changed through `claude mcp add`. The entry launches this installation's `memstore serve`
by absolute path, so it works from a host that starts with little more than HOME and PATH.
A file is merged, never replaced: every other server and key stays, a backup of the old
file is written first, and running setup again changes nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstore import MemstoreError
from memstore.fsutil import write_atomic

HOSTS = ("claude-desktop", "claude-code", "cursor", "vscode")
SERVER_NAME = "memstore"


class SetupError(MemstoreError):
    """A host's configuration cannot be changed as asked (a broken file, a failed `claude mcp add`)."""


@dataclass(frozen=True)
class Launch:
    """How a host starts the server: a program and its arguments, all absolute."""

    command: str
    args: list[str]


@dataclass(frozen=True)
class Outcome:
    """What setup did, in words for the person running it."""

    message: str
    changed: bool


def launch(workspace: Path, as_agent: str | None = None) -> Launch:
    """This installation's `memstore serve` for `workspace`, by absolute path."""
    here = Path(sys.executable).parent
    script = next((here / n for n in ("memstore", "memstore.exe") if (here / n).is_file()), None)
    serve = ["serve", "--workspace", str(workspace.resolve())]
    if as_agent:
        serve += ["--as", as_agent]
    if script is not None:
        return Launch(str(script.absolute()), serve)
    return Launch(str(Path(sys.executable).absolute()), ["-m", "mcp_server", *serve])


def config_path(host: str, *, platform: str = sys.platform, env: Mapping[str, str] | None = None,
                home: Path | None = None, folder: Path | None = None) -> Path:
    """Where `host` reads its MCP servers on `platform` (VS Code: the opened folder's `.vscode/`)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if host == "claude-desktop":
        if platform == "darwin":
            return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
        if platform == "win32":
            appdata = env.get("APPDATA") or str(home / "AppData" / "Roaming")
            return Path(appdata) / "Claude" / "claude_desktop_config.json"
        return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "Claude" / "claude_desktop_config.json"
    if host == "cursor":
        return home / ".cursor" / "mcp.json"
    if host == "vscode":
        return (folder or Path.cwd()) / ".vscode" / "mcp.json"
    raise SetupError(f"Unknown host '{host}'; choose one of {', '.join(HOSTS)}.")


def entry(host: str, server: Launch) -> tuple[str, dict[str, Any]]:
    """The section of the host's file that holds servers, and memstore's entry in it."""
    if host == "vscode":
        return "servers", {"type": "stdio", "command": server.command, "args": server.args}
    return "mcpServers", {"command": server.command, "args": server.args}


def snippet(host: str, server: Launch, name: str = SERVER_NAME) -> str:
    """What setup would add, as the JSON a person would paste (Claude Code: the command)."""
    if host == "claude-code":
        return shell_line(claude_add_command("claude", server, name))
    section, value = entry(host, server)
    return json.dumps({section: {name: value}}, indent=2)


def shell_line(argv: list[str]) -> str:
    """A command line to paste into this platform's shell."""
    return subprocess.list2cmdline(argv) if sys.platform == "win32" else shlex.join(argv)


def install_file(host: str, path: Path, server: Launch, name: str = SERVER_NAME) -> Outcome:
    """Merge memstore's entry into the host's JSON file, backing up the old file first."""
    section, value = entry(host, server)
    path = path.resolve()  # a config kept as a symbolic link (dotfiles) is changed where it lives
    config = _read_config(path)
    servers = config.setdefault(section, {})
    if not isinstance(servers, dict):
        raise SetupError(f"{path}: `{section}` is not a JSON object; fix or remove it, then run setup again.")
    old = servers.get(name)
    if isinstance(old, dict):
        value = {**old, **value}  # keys a person added to the entry (`env`, `disabled`, …) stay
    if old == value:
        return Outcome(f"{path} already starts memstore as '{name}'; nothing changed.", changed=False)
    servers[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    backup = _backup(path) if path.exists() else None
    write_atomic(path, (json.dumps(config, indent=2) + "\n").encode(), path.parent)
    if backup is not None:
        os.chmod(path, stat.S_IMODE(backup.stat().st_mode))  # a private config (0600) stays private
    said = f"{'Updated' if old is not None else 'Added'} the MCP server '{name}' in {path}"
    return Outcome(said + (f" (the old file is kept as {backup.name})." if backup else "."), changed=True)


def _backup(path: Path) -> Path:
    """A copy of the file beside it, under a name no earlier backup has."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        backup = path.with_name(f"{path.name}.{stamp}{f'-{n}' if n else ''}.bak")
        try:
            with open(backup, "xb") as out:
                out.write(path.read_bytes())
        except FileExistsError:
            continue
        shutil.copymode(path, backup)
        return backup
    raise SetupError(f"Could not find a free name for a backup of {path}; nothing was changed.")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise SetupError(f"{path} is not valid JSON ({exc}); fix it, then run setup again. Nothing was "
                         "changed.") from None
    if not isinstance(data, dict):
        raise SetupError(f"{path} does not hold a JSON object; nothing was changed.")
    return data


def claude_add_command(claude: str, server: Launch, name: str = SERVER_NAME) -> list[str]:
    return [claude, "mcp", "add", "--scope", "user", name, "--", server.command, *server.args]


def install_claude_code(server: Launch, name: str = SERVER_NAME) -> Outcome:
    """Run `claude mcp add` when Claude Code's CLI is on PATH, else say the exact command."""
    claude = shutil.which("claude")
    if claude is None:
        command = shell_line(claude_add_command("claude", server, name))
        return Outcome(f"Claude Code's `claude` command is not on PATH. Run this where it is:\n{command}",
                       changed=False)
    existing = subprocess.run([claude, "mcp", "get", name], capture_output=True, text=True, check=False)
    if existing.returncode == 0:  # replaced as a whole, so the entry is exactly this one however it read
        subprocess.run([claude, "mcp", "remove", "--scope", "user", name], capture_output=True, text=True,
                       check=False)
    added = subprocess.run(claude_add_command(claude, server, name), capture_output=True, text=True, check=False)
    if added.returncode != 0:
        raise SetupError(f"`claude mcp add` failed: {(added.stderr or added.stdout).strip()[:500]}")
    said = "Replaced" if existing.returncode == 0 else "Added"
    return Outcome(f"{said} the MCP server '{name}' in Claude Code (user scope).", changed=True)


def setup(host: str, workspace: Path, *, as_agent: str | None = None, name: str = SERVER_NAME,
          folder: Path | None = None) -> Outcome:
    """Install memstore's server for `host`; idempotent."""
    server = launch(workspace, as_agent)
    if host == "claude-code":
        return install_claude_code(server, name)
    return install_file(host, config_path(host, folder=folder), server, name)
