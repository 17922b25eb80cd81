"""Interoperability: the MCP Inspector's CLI (a client nobody here wrote) against `memstore serve`.

`.ci/run` installs the Inspector and Node 22 and sets MEMSTORE_INSPECTOR_DIR; elsewhere the
test is skipped unless MEMSTORE_REQUIRE_INSPECTOR is set, which turns a missing Inspector
into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memstore import Store

from .conftest import git

MEMSTORE = str(Path(sys.executable).with_name("memstore"))
# Read at import: the autouse fixture clears MEMSTORE_* variables before each test.
INSPECTOR_DIR = os.environ.get("MEMSTORE_INSPECTOR_DIR", str(Path(__file__).resolve().parents[1] / ".ci/inspector"))
REQUIRE_INSPECTOR = bool(os.environ.get("MEMSTORE_REQUIRE_INSPECTOR"))


@pytest.fixture
def inspector(tmp_path: Path) -> list[str]:
    """The command line that runs the Inspector's CLI under Node 22."""
    root = Path(INSPECTOR_DIR) / "node_modules"
    node, cli = root / "node" / "bin" / "node", root / ".bin" / "mcp-inspector"
    if not INSPECTOR_DIR or not node.exists() or not cli.exists():
        if REQUIRE_INSPECTOR:
            pytest.fail(f"MCP Inspector not found under {root}")
        pytest.skip("MCP Inspector not installed (.ci/run installs it and sets MEMSTORE_INSPECTOR_DIR)")
    return [str(node), str(cli), "--cli", "--format", "json", "-q"]


def run_inspector(command: list[str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path / "inspector-home")}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_inspector_lists_the_tools_and_calls_one(inspector: list[str], store: Store, ws_path: Path,
                                                 tmp_path: Path) -> None:
    store.create_block("organization", "Org")
    server = [MEMSTORE, "serve", "--workspace", str(ws_path)]

    listed = run_inspector(inspector, tmp_path, *server, "--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    names = {tool["name"] for tool in json.loads(listed.stdout)["result"]["tools"]}
    assert {"memory_insert", "memory_replace", "memory_rethink", "get_block", "list_blocks"} <= names

    called = run_inspector(inspector, tmp_path, *server, "--method", "tools/call", "--tool-name", "memory_insert",
                           "--tool-args-json", json.dumps({"label": "organization", "new_str": "from the Inspector"}))
    assert called.returncode == 0, called.stdout + called.stderr
    result = json.loads(called.stdout)["result"]
    assert result["structuredContent"]["block"]["value"] == "Org\nfrom the Inspector"
    assert git(ws_path, "log", "-1", "--format=%s").strip() == "memory_insert organization"

    refused = run_inspector(inspector, tmp_path, *server, "--method", "tools/call", "--tool-name", "get_block",
                            "--tool-args-json", json.dumps({"block": "ghost"}))
    assert refused.returncode == 5  # the Inspector's exit code for a tool error
