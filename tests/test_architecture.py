"""The boundaries the design fixes: the core never imports MCP; one public surface."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import memstore

CORE = Path(memstore.__file__).parent


def test_core_never_imports_mcp() -> None:
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n == "mcp" or n.startswith(("mcp.", "mcp_server"))]
    assert offenders == []


def test_public_surface_is_exactly_all() -> None:
    public = {name for name in dir(memstore)
              if not name.startswith("_") and not isinstance(getattr(memstore, name), types.ModuleType)}
    assert public == set(memstore.__all__) - {"__version__"}


def test_the_memstore_command_loads_the_mcp_sdk_only_for_serve() -> None:
    code = "import sys, mcp_server.cli; print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_litellm_is_imported_only_when_a_turn_runs() -> None:
    code = ("import sys, memstore, memstore.agents, mcp_server.cli, mcp_server.server; "
            "print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
