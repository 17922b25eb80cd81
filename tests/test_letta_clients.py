"""Letta's tutorial, as Letta publishes it, through Letta's own clients against `memstore serve --http`.

Three real clients run the programs in `examples/`: the Python client of both generations
(1.x from the test extras, 0.1.x that `.ci/run` installs beside it) and the TypeScript
client's 0.1.x line, which checks every response against Letta's schema. The agents'
model is the scripted one on 127.0.0.1, reached the way a real provider is: litellm with
`OPENAI_API_BASE` set. Elsewhere the 0.1.x and TypeScript runs are skipped unless
MEMSTORE_REQUIRE_LETTA_CLIENTS is set, which turns a missing client into a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from memstore import Store
from memstore.agents.demo import TUTORIAL_LINE1, TUTORIAL_LINE2, TUTORIAL_MODEL, tutorial_replies
from memstore.agents.scripted import ScriptedModel, text, tool_calls

from .conftest import git
from .test_mcp_transport import MEMSTORE, _read_line, http_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# Read at import: the autouse fixture clears MEMSTORE_* variables before each test.
TS_DIR = os.environ.get("MEMSTORE_LETTA_TS_DIR", str(ROOT / ".ci/letta-ts"))
PY01_DIR = os.environ.get("MEMSTORE_LETTA_PY01_DIR", str(ROOT / ".ci/letta-py01"))
NODE_DIR = os.environ.get("MEMSTORE_INSPECTOR_DIR", str(ROOT / ".ci/inspector"))
REQUIRE = bool(os.environ.get("MEMSTORE_REQUIRE_LETTA_CLIENTS"))

AGENT1_LINE, AGENT2_LINE = TUTORIAL_LINE1, TUTORIAL_LINE2
MODEL = TUTORIAL_MODEL  # the tutorial's model: openai/gpt-4o-mini


def missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"{what} is not installed; .ci/run installs it")
    pytest.skip(f"{what} is not installed (.ci/run installs it)")


@pytest.fixture
def scripted() -> Iterator[ScriptedModel]:
    with ScriptedModel() as model:
        model.enqueue(MODEL, *tutorial_replies())
        yield model


@pytest.fixture
def letta_url(ws_path: Path, scripted: ScriptedModel) -> Iterator[str]:
    """A live `memstore serve --http` whose agents reach the scripted model as a provider."""
    Store.init(ws_path)
    env = {"OPENAI_API_BASE": scripted.api_base, "OPENAI_API_KEY": "sk-scripted"}
    with http_server(ws_path, env=env) as mcp_url:
        yield mcp_url.removesuffix("/mcp")


def run_example(command: list[str], url: str, tmp_path: Path, **env: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path,
                            env={**os.environ, "LETTA_BASE_URL": url, "LETTA_API_KEY": "unused", **env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failed to validate" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.stdout


def check_tutorial(ws: Path, out: str, scripted: ScriptedModel | None, client: str) -> None:
    """What the tutorial promises, read from the workspace and git rather than from the client (and, given the
    scripted model, from the prompts it was sent)."""
    store = Store.open(ws)
    assert store.get_block("organization").value == f"Organization: Letta\n{AGENT1_LINE}\n{AGENT2_LINE}"
    authors = git(ws, "log", "--reverse", "--format=%an|%ae|%s", "--", "blocks/organization.md").splitlines()
    agent1, agent2 = store.get_agent("agent1"), store.get_agent("agent2")
    assert authors[1:] == [f"agent1|{agent1.id}@agents.memstore|memory_insert organization",
                           f"agent2|{agent2.id}@agents.memstore|memory_insert organization"]
    assert authors[0].startswith(f"{client}|api-") and authors[0].endswith("|create_block organization")
    assert blame_authors(ws, "blocks/organization.md")[AGENT1_LINE] == "agent1"
    assert blame_authors(ws, "blocks/organization.md")[AGENT2_LINE] == "agent2"
    # the read-only block refused agent3, and is unchanged
    assert "This block is read-only and cannot be edited." in out
    assert store.get_block("policies").value == "Company policies: cite a source for every fact."
    assert git(ws, "log", "--format=%s", "--", "blocks/policies.md").splitlines() == ["create_block policies"]
    if scripted is not None:  # agent2 saw agent1's line in its memory before it wrote its own
        assert AGENT1_LINE in scripted.requests[MODEL][2]["messages"][0]["content"]
        assert scripted.pending(MODEL) == 0
    assert store.get_agent("agent1").tools == ["memory_insert", "memory_replace", "conversation_search", "web_search"]


def blame_authors(ws: Path, rel: str) -> dict[str, str]:
    """Each line of a file and who wrote it, as `git blame` says."""
    authors, author = {}, ""
    for line in git(ws, "blame", "--line-porcelain", rel).splitlines():
        if line.startswith("author "):
            author = line.removeprefix("author ")
        elif line.startswith("\t"):
            authors[line[1:]] = author
    return authors


def test_tutorial_through_the_python_client_1x(letta_url: str, ws_path: Path, scripted: ScriptedModel,
                                               tmp_path: Path) -> None:
    out = run_example([sys.executable, str(EXAMPLES / "letta_tutorial_v1.py")], letta_url, tmp_path)
    assert "Attached block to agent2: ['organization']" in out
    check_tutorial(ws_path, out, scripted, "Letta")


def test_demo_server_runs_the_tutorial_programs_offline(tmp_path: Path) -> None:
    """`memstore demo-server`: a new workspace and the scripted model, in one command, for a person trying the
    examples without a provider key."""
    ws = tmp_path / "demo"
    proc = subprocess.Popen([MEMSTORE, "demo-server", str(ws), "--port", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")})
    try:
        line = _read_line(proc)
        assert "Letta's API on " in line, line
        url = line.split("Letta's API on ", 1)[1].split()[0].removesuffix("/v1")
        out = run_example([sys.executable, str(EXAMPLES / "letta_tutorial_v1.py")], url, tmp_path)
        proc.send_signal(signal.SIGINT)
        said, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"Workspace: {ws}" in said and "python examples/letta_tutorial_v1.py" in said
    check_tutorial(ws, out, None, "Letta")


def test_tutorial_through_the_python_client_0_1(letta_url: str, ws_path: Path, scripted: ScriptedModel,
                                                tmp_path: Path) -> None:
    if not (Path(PY01_DIR) / "letta_client").is_dir():
        missing("letta-client 0.1.x")
    out = run_example([sys.executable, str(EXAMPLES / "letta_tutorial.py")], letta_url, tmp_path,
                      PYTHONPATH=PY01_DIR)
    check_tutorial(ws_path, out, scripted, "letta-client")


def test_tutorial_through_the_typescript_client(letta_url: str, ws_path: Path, scripted: ScriptedModel,
                                                tmp_path: Path) -> None:
    modules = Path(TS_DIR) / "node_modules"
    node = Path(NODE_DIR) / "node_modules" / "node" / "bin" / "node"
    if not (modules / "@letta-ai" / "letta-client").is_dir() or not node.exists():
        missing("@letta-ai/letta-client 0.1.x with Node 22")
    program = tmp_path / "letta_tutorial.ts"  # beside node_modules, where Node's ES module resolution looks
    program.write_text((EXAMPLES / "letta_tutorial.ts").read_text())
    (tmp_path / "node_modules").symlink_to(modules, target_is_directory=True)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    out = run_example([str(node), "--experimental-strip-types", "--no-warnings", str(program)], letta_url, tmp_path)
    assert "Attached block to agent2: organization" in out
    check_tutorial(ws_path, out, scripted, "@letta-ai/letta-client")

    # Every shape the tutorial touches, parsed strictly by the client's own schemas.
    scripted.enqueue(MODEL, tool_calls(("conversation_search", {"query": "Letta"})), text("Checked."))
    checked = run_example([str(node), str(ROOT / "tests/ts/conformance.cjs"), str(modules / "@letta-ai/letta-client")],
                          letta_url, tmp_path)
    assert checked.count("ok ") == 14, checked
