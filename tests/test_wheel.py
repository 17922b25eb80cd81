"""The built wheel carries everything: installed into a fresh venv, its `memstore` inits and serves."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from this checkout offline (the build backend comes from the test extras)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("memstore-*.whl"))


def test_the_wheel_holds_the_packages_and_the_workspace_template(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "memstore/store.py" in names and "mcp_server/letta_api.py" in names
    assert "memstore/workspace_template/README.md" in names
    assert not any(n.startswith(("tests/", ".ci/", "benchmarks/")) for n in names)


@pytest.mark.anyio
async def test_a_fresh_venv_with_only_the_wheel_inits_and_serves(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # The dependencies come from the test venv on PYTHONPATH (no network here); memstore itself only
    # from the wheel: PYTHONPATH does not run the test venv's .pth files, so its editable install is unseen.
    env = {"HOME": os.environ["HOME"], "PATH": "/usr/bin:/bin", "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "GIT_CONFIG_GLOBAL": os.environ["GIT_CONFIG_GLOBAL"], "GIT_CONFIG_NOSYSTEM": "1"}
    memstore = str(bin_dir / "memstore")
    where = subprocess.run([str(bin_dir / "python"), "-c", "import memstore; print(memstore.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout
    ws = tmp_path / "ws"
    init = subprocess.run([memstore, "init", str(ws)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert init.returncode == 0, init.stderr
    assert (ws / "README.md").is_file() and (ws / "blocks").is_dir()
    params = StdioServerParameters(command=memstore, args=["serve", "--workspace", str(ws)], env=env, cwd=tmp_path)
    async with Client(params, cache=None) as client:
        created = await client.call_tool("create_block", {"label": "organization", "value": "Org"})
        assert not created.is_error, created.content
        assert created.structured_content["value"] == "Org"
