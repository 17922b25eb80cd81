"""The command line end to end: real workspace, real git, readable output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from memstore import Actor, Store
from memstore.cli import main

from .conftest import assert_clean_repo, git


@pytest.fixture
def run(ws_path: Path):
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, input: str | None = None) -> str:
        result = runner.invoke(main, list(args), input=input, env={"MEMSTORE_WORKSPACE": str(ws_path)})
        assert result.exit_code == code, result.output
        return result.output

    invoke("init", str(ws_path))
    return invoke


def test_cli_tutorial_flow(run, ws_path: Path) -> None:
    out = run("block", "create", "organization", "Organization: Letta", "--limit", "4000",
              "--description", "Shared information between all agents.")
    assert out.startswith("created organization (block-") and ": committed " in out
    run("block", "create", "policies", "Be kind.", "--read-only")
    assert "created agent agent1" in run("agent", "create", "agent1", "--model", "openai/gpt-4o-mini",
                                         "--block", "organization")
    run("agent", "create", "agent2", "--model", "openai/gpt-4o-mini", "--tool", "web_search")
    assert json.loads(run("agent", "show", "agent2", "--json"))["tools"] == [
        "memory_insert", "memory_replace", "conversation_search", "web_search"]
    run("agent", "create", "bare", "--model", "m/x", "--tool", "web_search", "--no-base-tools")
    assert json.loads(run("agent", "show", "bare", "--json"))["tools"] == ["web_search"]
    run("agent", "delete", "bare")
    run("agent", "attach", "agent2", "organization")
    run("agent", "attach", "agent2", "policies")
    assert "memory_insert organization: committed" in run(
        "block", "insert", "organization", "agent1: Letta is in SF.", "--as", "agent1")
    run("block", "insert", "organization", "agent2: Letta builds agents.", "--as", "agent2")
    shown = run("block", "show", "organization")
    assert shown.endswith("Organization: Letta\nagent1: Letta is in SF.\nagent2: Letta builds agents.\n")
    refused = run("block", "insert", "policies", "x", "--as", "agent2", code=1)
    assert refused.strip().startswith("memstore: error: This block is read-only and cannot be edited.")
    assert len(refused.strip().splitlines()) == 1
    log = run("log", "organization")
    assert [line.split()[3:5] for line in log.splitlines()] == [["agent", "agent2"], ["agent", "agent1"],
                                                                 ["person", "Pat"]]
    assert [line.split()[0] for line in run("block", "agents", "organization").splitlines()] == ["agent1", "agent2"]
    listed = json.loads(run("block", "list", "--json"))
    assert sorted(b["label"] for b in listed) == ["organization", "policies"]
    assert_clean_repo(ws_path)


def test_cli_history_diff_revert_update_delete(run, ws_path: Path) -> None:
    run("block", "create", "notes", "one")
    first = json.loads(run("block", "insert", "notes", "two", "--json"))["version"]
    run("block", "replace", "notes", "two", "three")
    diff = run("block", "diff", "notes", first)
    assert "-two\n+three" in diff and diff.endswith("\n")  # a whole last line: the prompt starts its own
    assert run("block", "diff", "notes", "HEAD", "HEAD") == ""
    run("block", "revert", "notes", first[:8])
    assert run("block", "show", "notes").endswith("---\none\ntwo\n")
    history = json.loads(run("block", "history", "notes", "--json"))
    assert [h["op"] for h in history] == ["revert_block", "memory_replace", "memory_insert", "create_block"]
    run("block", "update", "notes", "--description", "My notes", "--limit", "100", "--read-only")
    assert json.loads(run("block", "show", "notes", "--json"))["read_only"] is True
    run("block", "rethink", "notes", "all new")
    run("block", "append", "notes", "more")
    run("block", "replace-all", "notes", "e", "E")
    assert run("block", "show", "notes").endswith("---\nall nEw\nmorE\n")
    run("block", "delete", "notes")
    assert "(no blocks)" in run("block", "list")
    assert_clean_repo(ws_path)


def test_cli_errors_are_one_line_with_exit_code_one(run, tmp_path: Path) -> None:
    for args in (["block", "show", "nope"], ["block", "create", "../etc"], ["block", "create", "x", "--limit", "0"],
                 ["agent", "show", "ghost"], ["block", "show", "x", "-w", str(tmp_path / "nowhere")],
                 ["block", "insert", "nope", "x", "--as", "ghost"]):
        out = run(*args, code=1)
        assert out.startswith("memstore: error: ") and len(out.strip().splitlines()) == 1, out
        assert "Traceback" not in out


def test_cli_reports_a_hand_broken_file_with_its_line(run, ws_path: Path) -> None:
    run("block", "create", "org", "v")
    path = ws_path / "blocks" / "org.md"
    path.write_text(path.read_text().replace("limit: 20000", "limit: [20000"))
    shown = run("block", "show", "org")
    assert "memstore: warning: blocks/org.md, line" in shown and "Showing the last committed version" in shown
    assert "blocks/org.md, line" in run("block", "insert", "org", "more", code=1)  # edits refuse it


def test_cli_value_from_stdin_keeps_unicode(run, ws_path: Path) -> None:
    run("block", "create", "uni", "--file", "-", input="héllo 🧠\nwörld")
    assert json.loads(run("block", "show", "uni", "--json"))["value"] == "héllo 🧠\nwörld"


def test_memstore_command_runs_as_a_real_process(tmp_path: Path) -> None:
    ws = tmp_path / "real"
    exe = [str(Path(sys.executable).parent / "memstore")]
    subprocess.run([*exe, "init", str(ws)], check=True, capture_output=True)
    done = subprocess.run([*exe, "block", "create", "org", "hello", "--workspace", str(ws)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "created org" in done.stdout
    bad = subprocess.run([*exe, "block", "show", "org", "--workspace", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("memstore: error:") and "Traceback" not in bad.stderr
    assert git(ws, "log", "-1", "--format=%s").strip() == "create_block org"


def test_workspace_before_the_command_and_found_from_a_subfolder(run, ws_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run("block", "create", "organization", "Org")
    runner = CliRunner()
    out = runner.invoke(main, ["-w", str(ws_path), "block", "list"], env={"MEMSTORE_WORKSPACE": ""})
    assert out.exit_code == 0 and "organization" in out.output
    other = tmp_path / "other"
    Store.init(other).create_block("elsewhere", "x")
    out = runner.invoke(main, ["-w", str(ws_path), "block", "list", "-w", str(other)], env={"MEMSTORE_WORKSPACE": ""})
    assert "elsewhere" in out.output  # the command's own -w wins
    monkeypatch.chdir(ws_path / "blocks")
    monkeypatch.delenv("MEMSTORE_WORKSPACE", raising=False)
    out = runner.invoke(main, ["block", "show", "organization"])
    assert out.exit_code == 0 and "Org" in out.output


def test_a_workspace_from_the_environment_is_named_so_in_errors(ws_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["block", "list"], env={"MEMSTORE_WORKSPACE": str(tmp_path / "nope")})
    assert out.exit_code == 1 and f"{tmp_path / 'nope'} ($MEMSTORE_WORKSPACE) does not exist" in out.output
    out = runner.invoke(main, ["block", "list", "-w", str(tmp_path / "given")],
                        env={"MEMSTORE_WORKSPACE": str(tmp_path / "nope")})
    assert out.exit_code == 1 and f"{tmp_path / 'given'} does not exist" in out.output  # -w wins, named as given
    out = runner.invoke(main, ["block", "list"], env={"MEMSTORE_WORKSPACE": str(tmp_path)})
    assert out.exit_code == 1 and "($MEMSTORE_WORKSPACE) is not a memstore workspace" in out.output
    Store.init(ws_path).create_block("organization", "Org")
    out = runner.invoke(main, ["block", "list"], env={"MEMSTORE_WORKSPACE": str(ws_path)})
    assert out.exit_code == 0 and "organization" in out.output


def test_creating_a_block_whose_label_another_block_has_says_how_to_name_it(run) -> None:
    assert "note:" not in run("block", "create", "organization", "Org")
    out = run("block", "create", "organization", "Another org")
    assert "in blocks/organization-2.md" in out
    assert out.splitlines()[1] == ("note: blocks/organization.md has the label 'organization' too; name this block "
                                   "by its id or its file name (organization-2)")
    assert run("block", "show", "organization-2").rstrip().endswith("Another org")


def test_expected_version_on_the_cli(run, ws_path: Path) -> None:
    run("block", "create", "notes", "one")
    version = json.loads(run("block", "show", "notes", "--json"))["version"]
    run("block", "insert", "notes", "two", "--expected-version", version)
    out = run("block", "rethink", "notes", "clobbered", "--expected-version", version, code=1)
    assert f"has changed since version {version[:12]}" in out
    assert json.loads(run("block", "show", "notes", "--json"))["value"] == "one\ntwo"
    now = git(ws_path, "rev-parse", "HEAD").strip()
    run("block", "update", "notes", "--description", "Notes", "--expected-version", now[:7])
    assert "--expected-version VERSION" in run("block", "replace", "--help")


def test_log_aligns_its_columns_and_tells_agent_host_and_person_from_the_commit(run, ws_path: Path) -> None:
    store = Store.open(ws_path)
    store.create_block("organization", "Org")
    agent = store.create_agent("agent1", "openai/x", block_ids=[store.get_block("organization").id])
    store.memory_insert("organization", "from agent1", actor=agent.actor())
    store.memory_insert("organization", "from a host", actor=Actor.host("Ada Person"))  # a host named like a person
    path = ws_path / "blocks/organization.md"
    path.write_text(path.read_text() + "by hand\n")
    store.memory_insert("organization", "from the cli")  # commits the hand edit first, as the person
    lines = run("log").splitlines()
    assert [line.split()[3] for line in lines[:4]] == ["person", "person", "host", "agent"]
    assert lines[2].split()[4:6] == ["Ada", "Person"] and lines[3].split()[4] == "agent1"
    starts = {line.index(line.split()[3]) for line in lines}
    assert len(starts) == 1  # the kind column lines up on every row
    assert [e["author_kind"] for e in json.loads(run("log", "--json"))][:4] == ["person", "person", "host", "agent"]


def test_blame_names_who_wrote_each_line(run, ws_path: Path) -> None:
    store = Store.open(ws_path)
    store.create_block("organization", "Org")
    agent = store.create_agent("agent1", "openai/x", block_ids=[store.get_block("organization").id])
    store.memory_insert("organization", "agent line", actor=agent.actor())
    path = ws_path / "blocks/organization.md"
    path.write_text(path.read_text() + "not committed\n")
    rows = json.loads(run("blame", "organization", "--json"))
    assert [(r["line"], r["text"], r["author_kind"], r["author_name"]) for r in rows] == [
        (1, "Org", "person", "Pat Person"), (2, "agent line", "agent", "agent1"),
        (3, "not committed", "person", "(not committed yet)")]
    assert rows[1]["version"] == git(ws_path, "rev-parse", "HEAD").strip() and rows[2]["version"] is None
    text = run("blame", "organization").splitlines()
    assert text[1].split()[3:5] == ["agent", "agent1"] and text[1].endswith("2  agent line")


def test_refusals_read_naturally_on_the_cli(run, ws_path: Path) -> None:
    store = Store.open(ws_path)
    policy = store.create_block("policies", "Rules", read_only=True)
    store.create_agent("agent1", "openai/x", block_ids=[policy.id])
    out = run("block", "insert", "policies", "x", "--as", "agent1", code=1)
    assert out.strip() == "memstore: error: This block is read-only and cannot be edited. (block `policies`)"



def test_init_in_an_existing_repository_adds_only_its_folders_and_rule(tmp_path: Path) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("# my project\n")
    (repo / ".gitignore").write_text("node_modules/")  # no final newline
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "project")
    (repo / "notes.txt").write_text("wip\n")
    git(repo, "add", "notes.txt")  # staged, not for memstore to commit
    (repo / "README.md").write_text("# my project\nchanged\n")
    runner = CliRunner()
    done = runner.invoke(main, ["init", str(repo)])
    assert done.exit_code == 0, done.output
    assert git(repo, "show", "--name-only", "--format=%s", "HEAD").split() == [
        "Make", "this", "repository", "a", "memstore", "workspace", ".gitignore", "agents/.gitkeep", "blocks/.gitkeep"]
    assert (repo / ".gitignore").read_text() == "node_modules/\n# memstore's local state: never committed.\n.memstore/\n"
    assert git(repo, "status", "--porcelain").splitlines() == [" M README.md", "A  notes.txt"]
    created = runner.invoke(main, ["block", "create", "organization", "Org", "-w", str(repo)])
    assert created.exit_code == 0, created.output
    assert git(repo, "status", "--porcelain").splitlines() == [" M README.md", "A  notes.txt"]
    again = runner.invoke(main, ["init", str(repo)])
    assert again.exit_code == 1 and "already a memstore workspace" in again.output


def test_init_in_a_repository_refuses_what_it_did_not_make_and_changes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "project"
    (repo / "blocks").mkdir(parents=True)
    (repo / "blocks" / "lego.txt").write_text("my own blocks folder\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "project")
    runner = CliRunner()
    refused = runner.invoke(main, ["init", str(repo)])
    assert refused.exit_code == 1 and "blocks already exists and memstore did not make it" in refused.output
    (repo / "blocks" / "lego.txt").rename(repo / "lego.txt")
    (repo / "blocks").rmdir()
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'no commits today' >&2\nexit 1\n")
    hook.chmod(0o755)
    head = git(repo, "rev-parse", "HEAD")
    hooked = runner.invoke(main, ["init", str(repo)])
    assert hooked.exit_code == 1 and "no commits today" in hooked.output
    assert git(repo, "rev-parse", "HEAD") == head
    assert not (repo / "blocks").exists() and not (repo / ".gitignore").exists()
    assert git(repo, "status", "--porcelain").splitlines() == [" D blocks/lego.txt",
                                                               "?? lego.txt"]
    inside = runner.invoke(main, ["init", str(repo / "sub")])
    assert inside.exit_code == 0  # an empty folder inside a repository becomes a new repository of its own


def test_a_plain_text_block_file_is_a_block_to_every_command_without_a_watcher(run, ws_path: Path) -> None:
    (ws_path / "blocks" / "notes.md").write_text("Just notes\nline two\n")
    shown = json.loads(run("block", "show", "notes", "--json"))
    assert (shown["label"], shown["value"]) == ("notes", "Just notes\nline two")
    assert shown["id"].startswith("block-")
    run("block", "insert", "notes", "three")
    assert json.loads(run("block", "show", "notes", "--json"))["value"] == "Just notes\nline two\nthree"
    (ws_path / "blocks" / "todo.md").write_text("buy milk\n")
    listed = run("block", "list")
    assert "todo" in listed and "notes" in listed and "warning" not in listed
    (ws_path / "blocks" / "later.md").write_text("later\n")
    assert "later.md" not in run("status")  # adopted by status itself, so not listed as uncommitted
    subjects = git(ws_path, "log", "--format=%s").splitlines()
    assert subjects[:2] == ["Add id to blocks/later.md", "Hand edit blocks/later.md"]
    assert "Hand edit blocks/notes.md" in subjects and "Add id to blocks/todo.md" in subjects
    assert git(ws_path, "status", "--porcelain") == ""


def test_every_option_has_help_and_the_top_level_help_has_examples() -> None:
    import click

    from mcp_server.cli import main as full_main  # the installed command, `serve` and `setup` included

    def options(command: click.Command, path: str) -> list[str]:
        found = [f"{path} {o.opts[0]}" for o in command.params
                 if isinstance(o, click.Option) and not o.help and not o.hidden]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                found += options(sub, f"{path} {name}")
        return found

    assert options(full_main, "memstore") == []
    shown = CliRunner().invoke(full_main, ["--help"]).output
    assert "Examples:" in shown and "memstore setup claude-desktop" in shown and "memstore blame" in shown


def test_blame_keeps_lines_that_hold_unusual_line_breaks(run, ws_path: Path) -> None:
    store = Store.open(ws_path)
    store.create_block("odd", "alpha\u2028beta\nform\x0cfeed\nend")
    rows = json.loads(run("blame", "odd", "--json"))
    assert [r["text"] for r in rows] == ["alpha\u2028beta", "form\x0cfeed", "end"]
