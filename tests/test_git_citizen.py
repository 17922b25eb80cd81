"""Beside a person's git: real git commands in the same repository, and memstore keeps git's contracts."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from memstore import Store
from memstore import fsutil, gitrepo, gittree
from memstore.errors import ConflictError, ReadOnlyError, WorkspaceError

from .conftest import PERSON_NAME, assert_clean_repo, git

ROOT = Path(__file__).resolve().parent.parent
MEMSTORE = str(Path(sys.executable).with_name("memstore"))


@pytest.fixture(autouse=True)
def short_lock_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gitrepo, "LOCK_WAIT", 0.2)


def agent_store(store: Store) -> tuple[Store, object]:
    block = store.create_block("org", "Org: Letta")
    agent = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id])
    return store, agent.actor()


def _stash_pop_conflict(store: Store, ws_path: Path, actor: object) -> Path:
    """The person's change of blocks/org.md stashed, the agent's edit of the same line, `git stash pop`: the file is
    left unmerged, with conflict markers; its path."""
    path = ws_path / "blocks/org.md"
    path.write_text(path.read_text().replace("Org: Letta", "Org: Letta (person)"))
    git(ws_path, "stash")
    store.memory_replace("org", "Org: Letta", "Org: Letta Inc", actor=actor)  # type: ignore[arg-type]
    assert subprocess.run(["git", "stash", "pop"], cwd=ws_path, capture_output=True).returncode != 0
    return path


def test_stash_pop_conflict_is_refused_until_resolved(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    path = _stash_pop_conflict(store, ws_path, actor)
    assert "<<<<<<<" in path.read_text()
    with pytest.raises(ConflictError, match="unmerged"):
        store.memory_insert("org", "more", actor=actor)
    from memstore.handedits import pick_up

    with pytest.raises(ConflictError, match="unmerged"):
        pick_up(store, "blocks/org.md")  # conflict markers are never committed as a hand edit
    assert "<<<<<<<" not in git(ws_path, "show", "HEAD:blocks/org.md")
    assert subprocess.run(["git", "fsck"], cwd=ws_path, capture_output=True).returncode == 0
    # the person resolves and commits; edits work again
    path.write_text(git(ws_path, "show", "HEAD:blocks/org.md").replace("Org: Letta Inc", "Org: Letta Inc (person)"))
    git(ws_path, "add", "blocks/org.md")
    git(ws_path, "commit", "-qm", "resolve")
    git(ws_path, "stash", "drop")
    assert store.memory_insert("org", "more", actor=actor).version
    assert store.get_block("org").value == "Org: Letta Inc (person)\nmore"
    assert_clean_repo(ws_path)


def test_a_held_index_lock_leaves_the_edit_pending_and_a_persons_commit_never_reverts_it(
        store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")  # `git add -p` holds it while the person picks hunks
    head = git(ws_path, "rev-parse", "HEAD")
    result = store.memory_insert("org", "agent line", actor=actor)
    assert result.version is None and "index.lock" in (result.pending or "")
    assert git(ws_path, "rev-parse", "HEAD") == head  # the branch did not move without the index
    assert lock.exists()  # a git command's lock is never removed
    lock.unlink()  # the person's staging ends
    (ws_path / "notes.txt").write_text("mine\n")
    git(ws_path, "add", "notes.txt")
    git(ws_path, "commit", "-qm", "person's own commit")
    reopened = Store.open(ws_path)  # any memstore operation commits what waited
    assert reopened.commits.pending_files() == []
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert git(ws_path, "log", "-1", "--format=%an", "--", "blocks/org.md").strip() == "agent1"
    assert_clean_repo(ws_path)


def test_a_pending_edit_of_a_block_whose_name_has_two_underscores_stays_the_agents(
        store: Store, ws_path: Path) -> None:
    block = store.create_block("user__prefs", "likes tea")
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    assert store.memory_insert("user__prefs", "agent line", actor=actor).pending
    assert store.commits.pending_files() == ["blocks/user__prefs.md"]
    lock.unlink()
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == []
    assert reopened.get_block("user__prefs").value == "likes tea\nagent line"
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "agent1 memory_insert user__prefs"
    assert_clean_repo(ws_path)


@pytest.mark.parametrize(("then", "edits"), [("the watcher", 2), ("memstore status", 2), ("the watcher", 1)])
def test_waiting_edits_a_person_stashes_and_pops_stay_the_agents(store: Store, ws_path: Path, then: str,
                                                                 edits: int) -> None:
    store, actor = agent_store(store)
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")  # a commit in the person's editor holds the index
    assert store.memory_insert("org", "agent line", actor=actor).pending
    if edits == 2:
        assert store.memory_insert("org", "second line", actor=actor).pending
    lock.unlink()
    git(ws_path, "stash")  # before any memstore operation came by: the waiting edits go into the stash
    assert Store.open(ws_path).commits.pending_files() == []  # dropped, as a reset would
    assert git(ws_path, "log", "--format=%s").count("memory_insert org") == 0
    git(ws_path, "stash", "pop")
    if then == "the watcher":
        from memstore.handedits import pick_up

        result = pick_up(store, "blocks/org.md")  # what the watcher does when the file comes back
        assert result.action == "recovered" and result.version == git(ws_path, "rev-parse", "HEAD").strip()
    else:
        out = subprocess.run([MEMSTORE, "status"], cwd=ws_path, capture_output=True, text=True)
        assert out.returncode == 0 and "blocks/org.md" not in out.stdout, out.stdout + out.stderr
        assert f"memstore: blocks/org.md: {edits} dropped edit(s) are back in the file" in out.stderr
    log = git(ws_path, "log", "--format=%an|%s", "--", "blocks/org.md").splitlines()
    assert log[:edits] == ["agent1|memory_insert org"] * edits  # not the person's hand edit
    assert "Hand edit" not in log[edits]
    assert "agent line" in git(ws_path, "show", f"HEAD~{edits - 1}:blocks/org.md")
    if edits == 2:
        assert "agent line\nsecond line" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert not list((ws_path / ".memstore/pending").iterdir())
    assert_clean_repo(ws_path)


def test_dropped_edits_that_come_back_after_the_branch_moved_on_are_the_persons(
        store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    assert store.memory_insert("org", "agent line", actor=actor).pending
    lock.unlink()
    stashed = (ws_path / "blocks/org.md").read_text()
    git(ws_path, "stash")
    assert store.memory_insert("org", "later line", actor=actor).version  # the branch moves on
    git(ws_path, "stash", "drop")
    (ws_path / "blocks/org.md").write_text(stashed)  # the person puts the old text back by hand
    assert store.get_block("org").value == "Org: Letta\nagent line"
    assert git(ws_path, "log", "-1", "--format=%an|%s").strip() == f"{PERSON_NAME}|Hand edit blocks/org.md"
    assert not list((ws_path / ".memstore/pending").iterdir())
    assert_clean_repo(ws_path)


def test_an_edit_that_changes_nothing_while_another_is_pending_names_no_version(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "agent line", actor=actor).pending
    same = store.memory_rethink("org", "Org: Letta\nagent line", actor=actor)
    assert same.version is None and same.pending  # the last commit does not hold this value
    (ws_path / ".git/index.lock").unlink()
    settled = Store.open(ws_path).memory_rethink("org", "Org: Letta\nagent line", actor=actor)
    assert settled.pending is None and "agent line" in git(ws_path, "show", f"{settled.version}:blocks/org.md")


@pytest.mark.parametrize("cut_short", [1, 2])
def test_a_disk_that_fills_while_the_journal_grows_keeps_the_earlier_pending_edit(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch, cut_short: int) -> None:
    store, actor = agent_store(store)
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "agent line", actor=actor).pending
    import memstore.commits as commits

    real = commits.write_all
    calls = []

    def fills_once(fd: int, data: bytes | memoryview) -> None:  # the growing journal's write is cut short
        calls.append(len(data))
        if len(calls) <= cut_short:  # and, in the second round, so is the write putting it back
            os.write(fd, bytes(data)[: len(data) - 40])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(commits, "write_all", fills_once)
    with pytest.raises(WorkspaceError, match="the disk is full"):
        store.memory_insert("org", "second", actor=actor)
    monkeypatch.undo()
    (ws_path / ".git/index.lock").unlink()
    reopened = Store.open(ws_path)
    assert reopened.get_block("org").value == "Org: Letta\nagent line"
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "agent1 memory_insert org"
    assert_clean_repo(ws_path)


def test_a_journal_is_kept_only_while_its_edits_wait(store: Store, ws_path: Path) -> None:
    """Finding waiting edits lists the journals: one left per file ever edited would make that cost grow."""
    store, actor = agent_store(store)
    pending = ws_path / ".memstore/pending"
    (pending / "blocks__old.md.json").write_bytes(b"")  # an empty journal an earlier version left
    (pending / "blocks__odd.md.json").mkdir()  # not a journal at all: never read, never counted
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "agent line", actor=actor).pending
    assert [p.name for p in pending.iterdir() if p.is_file() and p.stat().st_size] == ["blocks__org.md.json"]
    (ws_path / ".git/index.lock").unlink()
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == []
    reopened.memory_insert("org", "second", actor=actor)
    assert [p.name for p in pending.iterdir()] == ["blocks__odd.md.json"]  # the empty journal is removed at open


def test_a_journal_removed_while_the_waiting_edits_are_listed_is_no_error(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process commits and removes a journal between the listing and the look at it (the watcher)."""
    store, actor = agent_store(store)
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "agent line", actor=actor).pending
    (ws_path / ".git/index.lock").unlink()
    import memstore.commits as commits

    listing = os.scandir

    def then_committed(path: object) -> list[os.DirEntry[str]]:
        entries = list(listing(path))
        for entry in entries:
            os.unlink(entry.path)
        return entries

    monkeypatch.setattr(commits.os, "scandir", then_committed)
    assert store.commits.pending_files() == []
    assert store.commits.finish_all() == []


def test_a_branch_lock_held_by_git_makes_the_edit_pending_not_a_lie(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    ref_lock = ws_path / ".git/refs/heads/main.lock"
    ref_lock.write_text("")
    result = store.memory_insert("org", "agent line", actor=actor)
    assert result.version is None and "main.lock" in (result.pending or "")
    assert ref_lock.exists() and not (ws_path / ".git/index.lock").exists()
    assert git(ws_path, "diff", "--cached", "--name-only") == ""  # the index went back with the branch
    assert "agent line" in store.get_block("org").value  # readers see the edit: it is in the file
    out = subprocess.run([MEMSTORE, "block", "insert", "org", "second",
                          "--as", "agent1", "--workspace", str(ws_path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "pending" in out.stdout and "committed" not in out.stdout.replace("commits it", "")
    ref_lock.unlink()
    status = subprocess.run([MEMSTORE, "status", "--workspace", str(ws_path)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert status.returncode == 0, status.stderr
    log = git(ws_path, "log", "-3", "--format=%an %s").splitlines()
    assert log[:2] == ["agent1 memory_insert org", "agent1 memory_insert org"]
    assert_clean_repo(ws_path)


def test_a_committer_killed_while_it_shortens_the_journal_leaves_the_rest_to_its_authors(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, actor = agent_store(store)
    ref_lock = ws_path / ".git/refs/heads/main.lock"
    ref_lock.write_text("")  # a git command holds the branch: both edits wait in the journal
    assert store.memory_insert("org", "first", actor=actor).pending
    assert store.memory_insert("org", "second", actor=actor).pending
    ref_lock.unlink()

    class Killed(BaseException):
        pass

    def killed(fd: int, size: int) -> None:  # the process dies after writing the shorter journal
        raise Killed()

    import memstore.commits as commits

    monkeypatch.setattr(commits.os, "ftruncate", killed)
    with pytest.raises(Killed):
        store.commits.finish_all()
    monkeypatch.undo()
    assert Store.open(ws_path).commits.pending_files() == []  # the next memstore operation finishes it
    log = git(ws_path, "log", "-3", "--format=%an %s").splitlines()
    assert log[:2] == ["agent1 memory_insert org", "agent1 memory_insert org"]
    assert Store.open(ws_path).get_block("org").value == "Org: Letta\nfirst\nsecond"
    assert_clean_repo(ws_path)


def test_a_full_disk_is_one_clear_error_with_nothing_half_applied(store: Store, ws_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store, actor = agent_store(store)
    import memstore.commits as commits

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(commits, "write_atomic", full)
    with pytest.raises(WorkspaceError, match="the disk is full. Nothing was changed"):
        store.memory_insert("org", "x", actor=actor)
    monkeypatch.undo()
    assert store.get_block("org").value == "Org: Letta"
    assert store.commits.pending_files() == []
    assert_clean_repo(ws_path)


def test_a_disk_that_fills_in_the_middle_of_a_several_file_edit_puts_every_file_back(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent made with new blocks is one commit of three files: the third write failing leaves none."""
    import memstore.commits as commits
    from memstore.store import new_block

    real, calls = commits.write_atomic, []

    def fills_at_the_third(*args: object, **kwargs: object) -> os.stat_result:
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(commits, "write_atomic", fills_at_the_third)
    with pytest.raises(WorkspaceError, match="the disk is full. Nothing was changed"):
        store.create_agent("agent1", "openai/gpt-4o-mini",
                           new_blocks=[new_block("persona", "I help."), new_block("human", "A person.")])
    monkeypatch.undo()
    assert len(calls) == 3  # the two new blocks were written, then removed again
    assert store.list_blocks() == [] and store.list_agents() == []
    assert store.commits.pending_files() == []
    assert_clean_repo(ws_path)


def test_a_several_file_edit_that_waits_for_git_is_pending_in_every_file(store: Store, ws_path: Path) -> None:
    """Deleting a block attached to an agent changes two files. While git holds the index they wait, both
    on disk and both pending; the next operation commits them, as one commit, under the caller's name."""
    store, _ = agent_store(store)
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    head = git(ws_path, "rev-parse", "HEAD")
    gone = store.delete_block("org")
    assert gone.version is None and "index.lock" in gone.pending
    assert git(ws_path, "rev-parse", "HEAD") == head
    assert sorted(store.commits.pending_files()) == ["agents/agent1.md", "blocks/org.md"]
    assert not (ws_path / "blocks/org.md").exists() and store.get_agent("agent1").blocks == []
    lock.unlink()
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == []
    assert git(ws_path, "log", "--format=%an %s", f"{head.strip()}..").splitlines() == [
        f"{PERSON_NAME} delete_block org"]
    assert sorted(git(ws_path, "show", "--name-status", "--format=", "HEAD").splitlines()) == [
        "D\tblocks/org.md", "M\tagents/agent1.md"]
    assert_clean_repo(ws_path)


def test_creating_attaching_and_deleting_while_git_holds_the_index_say_the_commit_is_pending(
        store: Store, ws_path: Path) -> None:
    """Not only block edits: every change's result names its commit, or says it is pending (core, CLI)."""
    from click.testing import CliRunner

    from memstore.cli import main

    store, _ = agent_store(store)
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    results = [store.create_block("notes", "x"), store.create_agent("agent2", "openai/gpt-4o-mini")]
    results += [store.attach_block("agent2", "notes"), store.detach_block("agent2", "notes"),
                store.update_agent("agent2", description="d"), store.delete_agent("agent2")]
    assert all(r.version is None and r.pending for r in results), results
    assert store.get_block("notes").version is None and store.get_block("notes").pending
    out = CliRunner().invoke(main, ["agent", "create", "agent3", "--model", "openai/gpt-4o-mini", "-w", str(ws_path)])
    assert out.exit_code == 0 and ": written, commit pending: " in out.output, out.output
    lock.unlink()
    assert Store.open(ws_path).commits.pending_files() == []
    assert sorted(git(ws_path, "log", "-7", "--format=%s").splitlines()) == [  # each file's edits in order
        "attach_block agent2 notes", "create_agent agent2", "create_agent agent3", "create_block notes",
        "delete_agent agent2", "detach_block agent2 notes", "update_agent agent2"]
    done = Store.open(ws_path).attach_block("agent3", "notes")
    assert done.version == git(ws_path, "rev-parse", "HEAD").strip() and done.pending is None
    assert_clean_repo(ws_path)


def test_a_disk_that_fills_while_a_big_object_is_written_leaves_no_part_of_it(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects of 64 KiB and more are written by memstore itself: a failed one is removed."""
    store.create_block("big", "", limit=1_000_000)

    def fills(fd: int, data: bytes | memoryview) -> None:
        os.write(fd, bytes(data)[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gittree, "write_all", fills)
    with pytest.raises(WorkspaceError, match="the disk is full. Nothing was changed"):
        store.memory_insert("big", "x" * 100_000)
    monkeypatch.undo()
    assert store.get_block("big").value == ""
    assert not list((ws_path / ".git/objects").glob("*/tmp_obj_*"))
    assert_clean_repo(ws_path)


def test_a_disk_that_fills_while_the_index_is_written_leaves_the_old_index_whole(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, actor = agent_store(store)
    index = (ws_path / ".git/index").read_bytes()

    def fills(fd: int, data: bytes | memoryview) -> None:
        os.write(fd, bytes(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    real = gitrepo.write_atomic

    def fills_at_the_index(path: Path, data: bytes, tmp_dir: Path, **kwargs: object) -> os.stat_result:
        with monkeypatch.context() as patch:
            if path.name == "index":
                patch.setattr(fsutil, "write_all", fills)
            return real(path, data, tmp_dir, **kwargs)

    monkeypatch.setattr(gitrepo, "write_atomic", fills_at_the_index)
    with pytest.raises(WorkspaceError, match="the disk is full. Nothing was changed"):
        store.memory_insert("org", "x", actor=actor)
    monkeypatch.undo()
    assert (ws_path / ".git/index").read_bytes() == index
    assert not list((ws_path / ".git").glob("memstore-index.*"))
    assert store.get_block("org").value == "Org: Letta"
    assert_clean_repo(ws_path)


def test_an_interrupt_right_after_the_branch_moves_leaves_the_index_agreeing_with_it(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, actor = agent_store(store)
    moved = gitrepo.GitRepo._move_branch

    def then_interrupted(self: gitrepo.GitRepo, *args: object) -> None:
        moved(self, *args)
        raise KeyboardInterrupt  # Ctrl-C just after the commit landed

    monkeypatch.setattr(gitrepo.GitRepo, "_move_branch", then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.memory_insert("org", "agent line", actor=actor)
    monkeypatch.undo()
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert git(ws_path, "diff", "--cached", "--name-only") == ""  # a person's next commit cannot revert it


def test_crlf_attributes_and_autocrlf_are_applied_as_git_add_would(store: Store, ws_path: Path) -> None:
    (ws_path / ".gitattributes").write_text("*.md text eol=crlf\n")
    git(ws_path, "add", ".gitattributes")
    git(ws_path, "commit", "-qm", "crlf checkouts")
    store = Store.open(ws_path)
    store.create_block("org", "line one\nline two")
    data = (ws_path / "blocks/org.md").read_bytes()
    assert b"line one\r\nline two\r\n" in data  # the checkout form
    assert b"\r" not in git(ws_path, "cat-file", "-p", "HEAD:blocks/org.md").encode()  # the blob: LF
    store.memory_insert("org", "line three")
    assert store.get_block("org").value == "line one\nline two\nline three"
    assert_clean_repo(ws_path)

    git(ws_path, "config", "core.autocrlf", "true")
    (ws_path / ".gitattributes").unlink()
    git(ws_path, "commit", "-qam", "plain autocrlf")
    store = Store.open(ws_path)
    store.memory_insert("org", "line four")
    assert "\r" not in store.get_block("org").value
    assert_clean_repo(ws_path)


def test_a_filter_memstore_cannot_apply_is_refused_at_open(store: Store, ws_path: Path) -> None:
    (ws_path / ".gitattributes").write_text("*.md filter=lfs\n")
    with pytest.raises(WorkspaceError, match="lfs"):
        Store.open(ws_path)


def _hook(ws: Path, name: str, body: str) -> Path:
    hook = ws / ".git/hooks" / name
    hook.write_text("#!/bin/sh\n" + body)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hook


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_hooks_run_as_under_git_commit(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    _hook(ws_path, "post-commit", f"echo committed >> {ws_path}/post-commit.log\n")
    _hook(ws_path, "pre-commit", "echo 'no secrets allowed' >&2\nexit 1\n")
    store = Store.open(ws_path)
    before = (ws_path / "blocks/org.md").read_bytes()
    with pytest.raises(ConflictError, match="no secrets allowed"):
        store.memory_insert("org", "secret", actor=actor)
    assert (ws_path / "blocks/org.md").read_bytes() == before
    assert not (ws_path / "post-commit.log").exists()
    (ws_path / ".git/hooks/pre-commit").write_text("echo 'sh ran it' >&2\nexit 1\n")  # no #! line: sh runs it
    with pytest.raises(ConflictError, match="pre-commit hook refused .*sh ran it"):
        store.memory_insert("org", "fine", actor=actor)
    _hook(ws_path, "pre-commit", 'echo "$GIT_AUTHOR_NAME $GIT_AUTHOR_DATE" > .git/author\n')
    _hook(ws_path, "commit-msg", "grep -q Memstore-Op \"$1\" && printf 'Reviewed-by: hook   \\n\\n\\n' >> \"$1\"\n")
    result = store.memory_insert("org", "fine", actor=actor)
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert (ws_path / ".git/author").read_text() == git(ws_path, "log", "-1", "--format=agent1 @%ad", "--date=raw")
    assert (ws_path / "post-commit.log").read_text() == "committed\n"  # once per commit
    assert git(ws_path, "log", "-1", "--format=%an|%cn").strip() == "agent1|memstore"
    message = git(ws_path, "log", "-1", "--format=%B")
    assert message.startswith("memory_insert org\n\n") and message.endswith("Reviewed-by: hook\n\n")  # git's clean-up
    (ws_path / "post-commit.log").unlink()
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
@pytest.mark.parametrize("persons_change", [False, True])
def test_with_hooks_waiting_edits_are_committed_each_with_its_own_content(
        store: Store, ws_path: Path, persons_change: bool) -> None:
    store, actor = agent_store(store)
    _hook(ws_path, "post-commit", "exit 0\n")  # any hook: commits are made as `git commit` makes them
    store = Store.open(ws_path)
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "first", actor=actor).pending
    assert store.memory_insert("org", "second", actor=actor).pending
    path = ws_path / "blocks/org.md"
    if persons_change:
        path.write_text(path.read_text() + "a person's line\n")
    (ws_path / ".git/index.lock").unlink()
    assert Store.open(ws_path).commits.pending_files() == []
    assert git(ws_path, "log", "-2", "--format=%an %s").splitlines() == ["agent1 memory_insert org"] * 2
    assert git(ws_path, "show", "HEAD~1:blocks/org.md").endswith("Org: Letta\nfirst\n")
    assert git(ws_path, "show", "HEAD:blocks/org.md").endswith("Org: Letta\nfirst\nsecond\n")
    if persons_change:  # still in the file, uncommitted
        assert path.read_text().endswith("second\na person's line\n")
        assert git(ws_path, "status", "--porcelain").strip() == "M blocks/org.md"
    else:
        assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_what_hooks_add_to_a_commit_reaches_the_index_too(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    _hook(ws_path, "pre-commit", "sed 's/agent line/AGENT LINE/' blocks/org.md > fmt.tmp && mv fmt.tmp blocks/org.md "
                                 "&& git add blocks/org.md\n")  # a formatter (sed -i differs on macOS)
    _hook(ws_path, "post-commit", '[ -n "$BOT" ] && exit 0\necho logged >> AGENTLOG && git add AGENTLOG && '
                                  'BOT=1 git commit -q -m "bot: log"\n')
    store = Store.open(ws_path)
    result = store.memory_insert("org", "agent line", actor=actor)
    assert git(ws_path, "log", "-2", "--format=%s").splitlines() == ["bot: log", "memory_insert org"]
    assert result.version == git(ws_path, "rev-parse", "HEAD~1").strip()  # the commit holding the edit
    assert git(ws_path, "show", f"{result.version}:blocks/org.md").endswith("Org: Letta\nAGENT LINE\n")
    assert_clean_repo(ws_path)  # the formatter's blob and the bot's file are in the index as on the branch
    (ws_path / ".git/hooks/post-commit").unlink()
    store.memory_insert("org", "more", actor=actor)
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "agent1 memory_insert org"  # no "Hand edit"
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_with_hooks_a_persons_commit_landing_while_they_run_is_kept(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A person's commit that lands after memstore looked at the tip (here: while the hooks run) is
    built on, not reverted, and the result names the agent's commit."""
    store, actor = agent_store(store)
    _hook(ws_path, "pre-commit", f"echo run >> {ws_path}/.git/pre-commit.log\n")
    store = Store.open(ws_path)
    hook = gitrepo.GitRepo._hook

    def lands(self: gitrepo.GitRepo, name: str, *args: object, **kwargs: object) -> None:
        hook(self, name, *args, **kwargs)
        if name == "pre-commit" and not (ws_path / "notes.txt").exists():  # the person's own commit, from
            (ws_path / "notes.txt").write_text("mine\n")  # a terminal beside the agent
            env = {**os.environ, "GIT_INDEX_FILE": str(ws_path / ".git/persons-index")}
            for step in (["read-tree", "HEAD"], ["add", "notes.txt"]):
                subprocess.run(["git", *step], cwd=ws_path, env=env, check=True)
            tree = subprocess.run(["git", "write-tree"], cwd=ws_path, env=env, capture_output=True, text=True,
                                  check=True).stdout.strip()
            git(ws_path, "update-ref", "HEAD", git(ws_path, "commit-tree", tree, "-p", "HEAD", "-m", "mine").strip())

    monkeypatch.setattr(gitrepo.GitRepo, "_hook", lands)
    result = store.memory_insert("org", "agent line", actor=actor)
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip() and not result.pending
    assert git(ws_path, "log", "-2", "--format=%an|%s").splitlines() == ["agent1|memory_insert org",
                                                                         f"{PERSON_NAME}|mine"]
    assert git(ws_path, "show", "HEAD:notes.txt") == "mine\n"  # not reverted by the agent's commit
    assert git(ws_path, "show", "--stat", "--format=", "HEAD").split()[0] == "blocks/org.md"  # the edit alone
    assert (ws_path / ".git/pre-commit.log").read_text() == "run\nrun\n"  # built again, hooks and all


@pytest.mark.skipif(sys.platform == "win32", reason="shell stand-in for git")
def test_with_hooks_a_git_that_dies_on_retry_leaves_the_waiting_edit_waiting(
        store: Store, ws_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, actor = agent_store(store)
    _hook(ws_path, "post-commit", "exit 0\n")
    store = Store.open(ws_path)
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "agent line", actor=actor).pending
    (ws_path / ".git/index.lock").unlink()
    real_git = subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip()
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n[ "$1" = commit-tree ] && {{ echo "fatal: unable to write loose object file: '
                    f'No space left on device" >&2; exit 128; }}\nexec {real_git} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert Store.open(ws_path).commits.pending_files() == ["blocks/org.md"]  # still waiting, not dropped
    monkeypatch.undo()
    assert Store.open(ws_path).commits.pending_files() == []
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "agent1 memory_insert org"
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_waiting_edit_a_hook_refuses_later_is_dropped_and_the_workspace_keeps_working(
        store: Store, ws_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, actor = agent_store(store)
    store.create_block("other", "x")
    _hook(ws_path, "pre-commit", "git diff --cached | grep -q SECRET && { echo 'secret found' >&2; exit 1; }\nexit 0\n")
    store = Store.open(ws_path)
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "SECRET=1", actor=actor).pending
    (ws_path / ".git/index.lock").unlink()
    reopened = Store.open(ws_path)  # the retry is refused: it does not stop the workspace from opening
    assert "secret found" in caplog.text
    assert reopened.commits.pending_files() == []
    assert reopened.get_block("org").value == "Org: Letta"  # the file is back to what is committed
    assert reopened.memory_insert("other", "y").version and reopened.memory_insert("org", "fine", actor=actor).version
    assert "SECRET" not in git(ws_path, "log", "-p")
    assert_clean_repo(ws_path)


@pytest.mark.parametrize("hooks", [False, pytest.param(True, marks=pytest.mark.skipif(
    sys.platform == "win32", reason="shell hooks"))])
def test_a_persons_save_while_an_edit_waits_for_git_is_neither_hidden_nor_the_agents(
        store: Store, ws_path: Path, hooks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    store, actor = agent_store(store)
    if hooks:
        _hook(ws_path, "post-commit", "exit 0\n")
        store = Store.open(ws_path)
    monkeypatch.setattr(gitrepo, "LOCK_WAIT", 10.0)
    lock, path = ws_path / ".git/index.lock", ws_path / "blocks/org.md"
    lock.write_bytes(b"")  # `git add -p`: memstore writes the file, then waits for the lock

    def person() -> None:
        while "agent line" not in path.read_text():
            time.sleep(0.01)
        path.write_text(path.read_text().replace("agent line", "AGENT LINE"))  # same size, same file
        time.sleep(1.1)  # past git's racy-timestamp window: git then trusts an index entry's stat
        lock.unlink()

    saver = threading.Thread(target=person)
    saver.start()
    result = store.memory_insert("org", "agent line", actor=actor)
    saver.join()
    assert git(ws_path, "show", f"{result.version}:blocks/org.md").endswith("Org: Letta\nagent line\n")
    assert git(ws_path, "log", "-1", "--format=%an").strip() == "agent1"
    assert git(ws_path, "status", "--porcelain").strip() == "M blocks/org.md"  # the person's change shows


@pytest.mark.skipif(sys.platform == "win32", reason="shell stand-in for gpg")
@pytest.mark.parametrize("spelling", ["true", "2", "bare"])  # git's booleans: a bare key, or a number, is true
def test_commits_are_signed_through_the_configured_program(store: Store, ws_path: Path, tmp_path: Path,
                                                           spelling: str) -> None:
    store, actor = agent_store(store)
    fake = tmp_path / "fake-gpg"
    fake.write_text("#!/bin/sh\ncat >/dev/null\necho '[GNUPG:] SIG_CREATED D 1 8 00 0 X' >&2\n"
                    "printf -- '-----BEGIN PGP SIGNATURE-----\\nstand-in\\n-----END PGP SIGNATURE-----\\n'\n")
    fake.chmod(0o755)
    config = ws_path / ".git/config"
    config.write_text(config.read_text() + ("[commit]\n\tgpgsign\n" if spelling == "bare"
                                            else f"[commit]\n\tgpgsign = {spelling}\n"))
    git(ws_path, "config", "gpg.program", str(fake))
    git(ws_path, "config", "user.signingkey", "memstore-test")
    store.memory_insert("org", "signed", actor=actor)  # turned on while the store is open (a running serve)
    assert "gpgsig -----BEGIN PGP SIGNATURE-----" in git(ws_path, "cat-file", "-p", "HEAD")
    assert git(ws_path, "log", "-1", "--format=%an").strip() == "agent1"
    fake.write_text("#!/bin/sh\necho 'no secret key' >&2\nexit 2\n")  # signing refused: the edit is refused
    head, before = git(ws_path, "rev-parse", "HEAD"), (ws_path / "blocks/org.md").read_bytes()
    with pytest.raises(ConflictError, match="could not sign"):
        store.memory_insert("org", "unsigned", actor=actor)
    assert git(ws_path, "rev-parse", "HEAD") == head and (ws_path / "blocks/org.md").read_bytes() == before
    assert store.commits.pending_files() == [] and not list((ws_path / ".git").glob("memstore-*.*"))
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_hook_killed_by_a_signal_leaves_the_edit_waiting_not_refused(store: Store, ws_path: Path) -> None:
    """A hook killed (the OOM killer, a shutdown) has not judged the edit: it waits, and is committed
    under its author once the hook runs through."""
    store, actor = agent_store(store)
    hook = _hook(ws_path, "pre-commit", "kill -9 $$\n")
    store = Store.open(ws_path)
    result = store.memory_insert("org", "agent line", actor=actor)
    assert result.version is None and "killed by signal 9" in result.pending
    assert store.commits.pending_files() == ["blocks/org.md"]
    assert "agent line" in (ws_path / "blocks/org.md").read_text()
    assert Store.open(ws_path).commits.pending_files() == ["blocks/org.md"]  # killed again: still waiting, not dropped
    hook.write_text("#!/bin/sh\nexit 0\n")
    assert Store.open(ws_path).commits.pending_files() == []
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "agent1 memory_insert org"
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_job_a_hook_leaves_running_does_not_hold_up_the_edit(store: Store, ws_path: Path) -> None:
    """`git push &` in a post-commit hook: git does not wait for the job, nor does memstore (a pipe to the
    hook's output stays open as long as the job runs)."""
    store, actor = agent_store(store)
    _hook(ws_path, "post-commit", "(sleep 30; touch .git/job-done) &\necho $! > .git/job.pid\nexit 0\n")
    store = Store.open(ws_path)
    try:
        assert store.memory_insert("org", "agent line", actor=actor).version
        assert not (ws_path / ".git/job-done").exists()  # the edit returned while the job runs
    finally:
        with contextlib.suppress(OSError):
            os.kill(int((ws_path / ".git/job.pid").read_text()), 9)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_an_edit_a_git_command_commits_meanwhile_is_not_committed_twice(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a git command commits the very content memstore is committing (the edit's blob, from the index)
    while the hooks run, the result names that commit: no empty commit, no post-commit for it."""
    store, actor = agent_store(store)
    _hook(ws_path, "post-commit", "echo run >> .git/post-commit.log\n")
    store = Store.open(ws_path)
    hook = gitrepo.GitRepo._hook

    def lands(self: gitrepo.GitRepo, name: str, args: list[str], env: dict[str, str], claim: object,
              changes: list[tuple[str, str]], **kwargs: object) -> None:
        hook(self, name, args, env, claim, changes, **kwargs)
        if name == "pre-commit" and not (ws_path / ".git/landed").exists():
            (ws_path / ".git/landed").touch()
            tree = subprocess.run(["git", "write-tree"], cwd=ws_path, env=env, capture_output=True, text=True,
                                  check=True).stdout.strip()  # the scratch index: the tip plus the edit
            git(ws_path, "update-ref", "HEAD", git(ws_path, "commit-tree", tree, "-p", "HEAD", "-m", "x").strip())

    monkeypatch.setattr(gitrepo.GitRepo, "_hook", lands)
    result = store.memory_insert("org", "agent line", actor=actor)
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert git(ws_path, "log", "-1", "--format=%s").strip() == "x"  # the git command's commit, not an empty one
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert not (ws_path / ".git/post-commit.log").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_persons_git_commit_whose_hook_ends_while_the_agents_hooks_run_holds_only_their_change(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git's as-is commit lets go of index.lock before its pre-commit hook and reads the index again after
    it: memstore's index goes in only once its commit is built, so the person's commit holds their file
    alone, and the agent's commit the edit."""
    monkeypatch.setattr(gitrepo, "LOCK_WAIT", 10.0)
    store, actor = agent_store(store)
    _hook(ws_path, "pre-commit", 'if [ "$GIT_AUTHOR_NAME" = agent1 ]; then sleep 2; else touch .git/persons-hook; '
                                 "sleep 1; fi\n")
    store = Store.open(ws_path)
    (ws_path / "notes.txt").write_text("mine\n")
    git(ws_path, "add", "notes.txt")
    person = subprocess.Popen(["git", "commit", "-q", "-m", "person's notes"], cwd=ws_path)
    while not (ws_path / ".git/persons-hook").exists():
        assert person.poll() is None
        time.sleep(0.01)
    result = store.memory_insert("org", "agent line", actor=actor)
    assert person.wait() == 0  # the person's commit landed while the agent's hooks ran
    persons = git(ws_path, "log", "-1", f"--author={PERSON_NAME}", "--format=%H").strip()
    assert git(ws_path, "show", "--name-only", "--format=", persons).split() == ["notes.txt"]
    assert git(ws_path, "show", "--name-only", "--format=", result.version).split() == ["blocks/org.md"]
    assert git(ws_path, "log", "-1", "--format=%an").strip() == "agent1"
    assert_clean_repo(ws_path)


def test_a_shallow_clone_reads_edits_and_says_where_history_is_cut(store: Store, ws_path: Path,
                                                                  tmp_path: Path) -> None:
    store, actor = agent_store(store)
    for i in range(3):
        store.memory_insert("org", f"line {i}", actor=actor)
    store.create_block("other", "untouched since")
    for i in range(2):
        store.memory_insert("org", f"late {i}", actor=actor)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "2", f"file://{ws_path}", str(clone))
    shallow = Store.open(clone)
    assert shallow.get_block("other").value == "untouched since"  # last changed before the cut
    history = shallow.block_history("org")
    assert history[-1].history_cut and not any(h.history_cut for h in history[:-1])
    assert shallow.memory_insert("org", "in the clone", actor=shallow.get_agent("agent1").actor()).version
    assert_clean_repo(clone)


def test_sha256_and_reftable_are_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_DEFAULT_HASH", "sha256")
    with pytest.raises(WorkspaceError, match="SHA-1"):
        Store.init(tmp_path / "ws256")
    assert not (tmp_path / "ws256").exists() and list(tmp_path.iterdir()) == [tmp_path / "home"]
    monkeypatch.delenv("GIT_DEFAULT_HASH")
    repo = tmp_path / "made256"
    git(tmp_path, "init", "-q", "--object-format=sha256", str(repo))
    (repo / "blocks").mkdir()
    with pytest.raises(WorkspaceError, match="sha256 object format"):
        Store.open(repo)
    Store.init(tmp_path / "fine")  # and a retry after the refusal works


def test_reset_hard_between_edits(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    store.memory_insert("org", "kept", actor=actor)
    store.memory_insert("org", "dropped by the person", actor=actor)
    git(ws_path, "reset", "-q", "--hard", "HEAD~1")
    store.memory_insert("org", "after reset", actor=actor)
    assert store.get_block("org").value == "Org: Letta\nkept\nafter reset"
    assert "Hand edit" not in git(ws_path, "log", "--format=%s")
    assert_clean_repo(ws_path)


def test_the_core_imports_without_linux_only_modules() -> None:
    """The core and CLI; the mcp SDK picks its own Windows path for stdio."""
    code = ("import sys\nfor name in ('fcntl', 'termios', 'resource', 'pwd', 'grp'):\n    sys.modules[name] = None\n"
            "import memstore, memstore.store, memstore.commits, memstore.locks, memstore.watcher, memstore.cli\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_hand_edit_on_top_of_a_pending_edit_keeps_both_authors(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    assert store.memory_insert("org", "agent line", actor=actor).pending
    path = ws_path / "blocks/org.md"
    path.write_text(path.read_text() + "person line\n")  # the person edits while the commit waits
    lock.unlink()
    reopened = Store.open(ws_path)
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")  # the agent's edit, by the agent
    assert git(ws_path, "log", "-1", "--format=%an").strip() == "agent1"
    assert "person line" in path.read_text()  # the person's change stays in the file, uncommitted
    from memstore.handedits import pick_up

    assert pick_up(reopened, "blocks/org.md").action == "committed"
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "Pat Person Hand edit blocks/org.md"
    assert reopened.get_block("org").value == "Org: Letta\nagent line\nperson line"
    assert_clean_repo(ws_path)


def test_a_hand_edit_waits_for_a_held_index_lock_under_the_persons_name(store: Store, ws_path: Path) -> None:
    from memstore.handedits import pick_up

    store, _ = agent_store(store)
    path = ws_path / "blocks/org.md"
    path.write_text(path.read_text() + "person line\n")
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    assert pick_up(store, "blocks/org.md").action == "pending"
    lock.unlink()
    assert store.commits.finish_all() == []
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "Pat Person Hand edit blocks/org.md"
    assert_clean_repo(ws_path)


HOLDER = """
import sys, time
from pathlib import Path
from memstore.commits import REPO_LOCK
from memstore.gitrepo import GitRepo
from memstore.locks import Locks

root = Path(sys.argv[1])
repo, locks = GitRepo(root), Locks(root / ".memstore" / "locks")
with locks.hold(REPO_LOCK, "the repository"), repo.git_lock(repo.git_dir / "index.lock", "a test", 1.0):
    print("holding", flush=True)  # a writer stuck mid-commit, then killed
    time.sleep(120)
"""


def hold_index_lock(ws_path: Path) -> subprocess.Popen[str]:
    """A memstore writer in another process, stuck mid-commit: it holds the repository lock and index.lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ws_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
    return holder


def test_a_live_writers_git_lock_is_waited_for_and_once_it_is_killed_removed(store: Store, ws_path: Path) -> None:
    """The real lock path in another process: its lock is never taken for dead while it lives."""
    import threading

    store, actor = agent_store(store)
    lock = ws_path / ".git/index.lock"
    holder = hold_index_lock(ws_path)
    results: list[object] = []
    try:
        edit = threading.Thread(target=lambda: results.append(
            store.memory_insert("org", "after the crash", actor=actor)))
        edit.start()
        edit.join(0.5)
        assert edit.is_alive() and lock.exists()  # waiting for the writer, its lock untouched
    finally:
        holder.kill()
        holder.wait()
    edit.join(60)
    assert results and results[0].version == git(ws_path, "rev-parse", "HEAD").strip()
    assert not lock.exists()
    assert "after the crash" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="Windows cannot remove the repository lock while it is held")
def test_a_live_writers_git_lock_stays_when_the_repository_lock_file_is_removed(store: Store, ws_path: Path) -> None:
    """`git clean -fdX` or `rm .memstore/locks/repo.lock` while a writer commits: the next writer
    locks a new file, but the live writer's claim on index.lock still keeps it (a removed live
    lock let a person's next commit revert an agent's line)."""
    store, actor = agent_store(store)
    lock = ws_path / ".git/index.lock"
    holder = hold_index_lock(ws_path)
    try:
        (ws_path / ".memstore/locks/repo.lock").unlink()
        other = Store.open(ws_path)
        assert other.memory_insert("org", "waits", actor=actor).pending
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert other.commits.finish_all() == [] and not lock.exists()
    assert "waits" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert_clean_repo(ws_path)


def test_a_killed_writers_lock_is_removed_after_the_workspace_moves(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    holder = hold_index_lock(ws_path)
    holder.kill()
    holder.wait()
    moved = ws_path.with_name("moved")
    ws_path.rename(moved)
    assert Store.open(moved).memory_insert("org", "after the move", actor=actor).version
    assert not (moved / ".git/index.lock").exists()
    assert_clean_repo(moved)


def test_only_a_lock_memstore_made_is_removed(store: Store, ws_path: Path) -> None:
    """git's own locks are waited for; a dead memstore writer's (its marker, or an earlier
    version's twin) go, with the temp files it left."""
    store, actor = agent_store(store)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    lock = ws_path / ".git/index.lock"
    left = [ws_path / f".git/memstore-{kind}.{pid}.1" for kind in ("index", "ref") for pid in (dead, 1)]
    for path in left:  # whatever process id they name (one of another PID namespace may look alive)
        path.write_bytes(b"killed before it was renamed into place")
    store = Store.open(ws_path)
    lock.write_bytes(b"memstore lock\n")  # marked, as made where there are no hard links, and claimed by no one
    assert store.memory_insert("org", "after a crash", actor=actor).version
    assert not lock.exists()
    assert not any(path.exists() for path in left)  # removed under index.lock at the first commit

    twin = ws_path / f".git/memstore-flock.{dead}.1"  # versions before 5 Dec: an empty twin, hard-linked
    twin.write_bytes(b"")
    os.link(twin, lock)
    assert store.memory_insert("org", "after an older crash", actor=actor).version
    assert not lock.exists() and not twin.exists()

    for held in (b"", b"DIRC", b"memstore lock of /a/path\n"):  # git's, or not a marker
        lock.write_bytes(held)
        assert store.memory_insert("org", "waits", actor=actor).pending
        assert lock.read_bytes() == held
        lock.unlink()
    assert store.commits.finish_all() == []
    assert_clean_repo(ws_path)


def test_a_ref_lock_that_cannot_be_removed_after_the_branch_moved_leaves_the_edit_committed(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows may refuse the removal for a moment (a scanner): the commit was made, so the
    result names it, and the next writer removes the lock."""
    store, actor = agent_store(store)
    real = gitrepo._remove_if_same

    def refused(path: Path, st: os.stat_result) -> None:
        if path.name == "main.lock":
            raise PermissionError(errno.EACCES, "The process cannot access the file", str(path))
        real(path, st)

    monkeypatch.setattr(gitrepo, "_remove_if_same", refused)
    result = store.memory_insert("org", "committed", actor=actor)
    monkeypatch.undo()
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert (ws_path / ".git/refs/heads/main.lock").exists()
    assert "committed" in (ws_path / "blocks/org.md").read_text()
    assert store.memory_insert("org", "next", actor=actor).version
    assert not (ws_path / ".git/refs/heads/main.lock").exists()
    assert_clean_repo(ws_path)


@pytest.mark.parametrize("links", [True, False])
def test_a_branch_whose_ref_folder_was_packed_away_takes_edits(store: Store, ws_path: Path, links: bool) -> None:
    store, actor = agent_store(store)
    git(ws_path, "switch", "-q", "-c", "feature/x")
    git(ws_path, "pack-refs", "--all")
    assert not (ws_path / ".git/refs/heads/feature").exists()
    store = Store.open(ws_path)
    store.ws.git._links = links and not fsutil.PORTABLE
    assert store.memory_insert("org", "on feature/x", actor=actor).version == git(
        ws_path, "rev-parse", "feature/x").strip()
    assert_clean_repo(ws_path)


def test_the_reflog_lines_are_written_under_git_locks_of_head_and_the_branch_before_the_ref_moves(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """So a git command moving the branch right after cannot log its move first, `git reflog expire`
    (which rewrites HEAD's log under HEAD.lock) cannot drop the line, and a writer killed in between
    leaves no move out of the log."""
    store, actor = agent_store(store)
    real = gitrepo.GitRepo._log_move
    locked: list[bool] = []

    def logging(self: gitrepo.GitRepo, name: str, old: str | None, *args: object) -> None:
        locked.append((self.common_dir / f"{name}.lock").exists() and (self.git_dir / "HEAD.lock").exists()
                      and self.tip() == old)  # as git does: HEAD and the branch locked, the log before the ref
        real(self, name, old, *args)

    monkeypatch.setattr(gitrepo.GitRepo, "_log_move", logging)
    version = store.memory_insert("org", "logged", actor=actor).version
    assert locked == [True]
    assert git(ws_path, "rev-parse", "HEAD@{0}").strip() == version
    assert git(ws_path, "rev-parse", "main@{0}").strip() == version
    assert "memory_insert org" in git(ws_path, "reflog", "-1", "main")


def test_a_split_index_made_while_a_store_is_open_is_refused_cleanly(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    git(ws_path, "update-index", "--split-index")
    with pytest.raises(WorkspaceError, match="split index"):
        store.memory_insert("org", "refused", actor=actor)
    assert "refused" not in (ws_path / "blocks/org.md").read_text()
    assert not store.commits.has_pending("blocks/org.md")


def test_without_hard_links_locks_are_taken_as_git_takes_them(store: Store, ws_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, actor = agent_store(store)

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(gitrepo.os, "link", no_links)
    assert store.memory_insert("org", "on a FAT stick", actor=actor).version
    monkeypatch.undo()
    assert not list((ws_path / ".git").glob("memstore-*lock.*"))
    assert_clean_repo(ws_path)


def test_a_linked_worktree_is_a_workspace_of_its_own_branch(store: Store, ws_path: Path, tmp_path: Path) -> None:
    store.create_block("organization", "Org")
    tree = tmp_path / "feature-tree"
    git(ws_path, "worktree", "add", "-q", "-b", "feature", str(tree))
    branch_store = Store.open(tree)
    result = branch_store.memory_insert("organization", "on the feature branch")
    assert result.version == git(tree, "rev-parse", "feature").strip()
    assert git(tree, "status", "--porcelain") == ""  # the worktree's own index agrees with its branch
    assert git(ws_path, "status", "--porcelain") == ""
    assert Store.open(ws_path).get_block("organization").value == "Org"  # main is untouched
    store.memory_insert("organization", "on main")
    assert branch_store.get_block("organization").value == "Org\non the feature branch"
    assert git(ws_path, "log", "-1", "--format=%s", "main").strip() == "memory_insert organization"
    assert_clean_repo(ws_path)


def test_an_index_libgit2_rebuilt_is_never_patched_as_if_it_had_no_cache_tree(store: Store, ws_path: Path) -> None:
    store.create_block("a", "a0")
    store.create_block("b", "b0")
    (ws_path / ".git" / "index").unlink()  # a person's `rm .git/index`: memstore rebuilds it through libgit2
    store.memory_rethink("a", "a1")
    store.memory_rethink("b", "b1")
    assert git(ws_path, "write-tree").strip() == git(ws_path, "rev-parse", "HEAD^{tree}").strip()
    assert git(ws_path, "status", "--porcelain") == ""
    git(ws_path, "commit", "--allow-empty", "-qm", "a person's commit")
    assert Store.open(ws_path).get_block("b").value == "b1"
    assert git(ws_path, "show", "HEAD:blocks/b.md").endswith("b1\n")


def test_an_agent_refused_by_a_hook_leaves_none_of_its_new_blocks(store: Store, ws_path: Path) -> None:
    from memstore.store import new_block

    _hook(ws_path, "pre-commit", "git diff --cached --name-only | grep -q '^agents/' && "
                                 "{ echo 'no new agents today' >&2; exit 1; }\nexit 0\n")
    store = Store.open(ws_path)
    with pytest.raises(ConflictError, match="no new agents today"):
        store.create_agent("agent1", "openai/gpt-4o-mini", new_blocks=[new_block("persona", "I am agent1.")])
    assert store.list_blocks() == [] and store.list_agents() == []
    assert not (ws_path / "blocks/persona.md").exists()
    assert_clean_repo(ws_path)


@pytest.mark.parametrize("version", [2, 3])
def test_conflict_stages_are_read_from_the_index_git_writes(tmp_path: Path, version: int) -> None:
    """Only a path's own first entry and the one after it are read; git's index is the reference."""
    from memstore import gitindex

    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    names = ["a.md", "b.md", "b.md.bak", "xb.md", "c.md"]  # neighbours, a longer name, a name ending in b.md
    for name in names:
        (repo / name).write_text("base\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    git(repo, "checkout", "-qb", "side")
    for name in ("b.md", "c.md"):
        (repo / name).write_text("side\n")
    git(repo, "commit", "-qam", "side")
    git(repo, "checkout", "-q", "main")
    for name in ("b.md", "c.md"):
        (repo / name).write_text("main\n")
    git(repo, "commit", "-qam", "main")
    assert subprocess.run(["git", "merge", "-q", "side"], cwd=repo, capture_output=True).returncode != 0
    git(repo, "update-index", "--index-version", str(version))
    if version == 3:  # extended entries (a 64-byte head) before and after the conflicted ones
        git(repo, "update-index", "--skip-worktree", "a.md", "b.md.bak")
    data = (repo / ".git/index").read_bytes()
    assert int.from_bytes(data[4:8], "big") == version
    conflicted = set(git(repo, "diff", "--name-only", "--diff-filter=U").split())
    assert conflicted == {"b.md", "c.md"}
    for name in [*names, "missing.md", "b"]:
        assert gitindex.unmerged(data, name.encode()) == (name in conflicted), name
    git(repo, "add", "b.md")  # resolved: stage 0 again, the other stays unmerged
    data = (repo / ".git/index").read_bytes()
    assert not gitindex.unmerged(data, b"b.md")
    assert gitindex.unmerged(data, b"c.md")


def test_resumable_sha1_is_sha1_whatever_changed() -> None:
    """Hashing resumed from the chunk where content changes gives SHA-1 of the whole content."""
    import hashlib
    import random

    from memstore.gitindex import ResumableSha1

    rng = random.Random(7)
    sha = ResumableSha1()
    data = bytearray(rng.randbytes(5 * ResumableSha1.STEP + 123))
    last = sha.digest(data, b"", 0)
    assert last == hashlib.sha1(data).digest()
    for _ in range(60):
        at = rng.randrange(len(data) - 20)
        data[at : at + 20] = rng.randbytes(20)
        if rng.random() < 0.2:  # a different length (an entry added) or another content altogether
            data = bytearray(rng.randbytes(rng.randrange(1, 6 * ResumableSha1.STEP)))
            at = 0
        like = last if rng.random() < 0.9 else rng.randbytes(20)  # sometimes not the content hashed last
        last = sha.digest(data, like, at)
        assert last == hashlib.sha1(data).digest()


def test_a_big_object_is_a_zlib_stream_with_its_checksum_patched_as_its_bytes_change() -> None:
    """Stored deflate blocks around 64 KiB boundaries; Adler-32 moved by 20 changed bytes equals a fresh one."""
    import random
    import zlib

    from memstore.gittree import Objects, _stored_zlib

    rng = random.Random(5)
    for size in (0, 1, 0xFFFF, 0x10000, 2 * 0xFFFF, 400_000):
        data = rng.randbytes(size)
        assert zlib.decompress(b"".join(_stored_zlib(data, zlib.adler32(data)))) == data  # zlib checks the checksum
    repo = Objects.__new__(Objects)
    old = rng.randbytes(300_000)
    data = b"tree %d\0" % len(old) + old
    head = len(data) - len(old)
    repo._adler, repo._trees = ("t1", zlib.adler32(data)), {"t1": old}
    for at in (0, 1, 65_530, len(old) - 20):
        new = old[:at] + rng.randbytes(20) + old[at + 20 :]
        data = b"tree %d\0" % len(new) + new
        assert repo._adler_after("t1", data, head + at) == zlib.adler32(data)
    repo._adler = ("another", 1)  # not the tree this process wrote last: computed afresh
    assert repo._adler_after("t1", data, head) == zlib.adler32(data)


def test_remembered_places_of_names_are_checked_before_they_are_used(tmp_path: Path) -> None:
    """A place learned in one version of the index or of a tree, wrong in the next, is never trusted."""
    from memstore.gitindex import Places, unmerged
    from memstore.gittree import _tree_entry

    tree = b"".join(b"100644 %s\0" % name + bytes([n]) * 20 for n, name in enumerate([b"a.md", b"b.md", b"c.md"]))
    places = Places()
    places._at = {b"b.md": 0, b"c.md": tree.index(b" c.md")}  # b's place is wrong, c's right
    assert _tree_entry(tree, b"b.md", places) == (b"100644", (bytes([1]) * 20).hex(), tree.index(b"b.md\0") + 5)
    assert _tree_entry(tree, b"c.md", places)[1] == (bytes([2]) * 20).hex()
    assert _tree_entry(tree, b"d.md", places) is None
    places.WALK_AFTER = 1
    _tree_entry(tree, b"x.md", places)  # a search: the places are learned by walking the tree
    assert places.get(b"a.md") == 6 and places.get(b"c.md") == tree.index(b" c.md")
    assert _tree_entry(b"100644 a.md", b"b.md", places) is None  # bytes no walk can read: searched, no error

    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    for name in ("b.md", "c.md", "d.md"):
        (repo / name).write_text(f"{name}\n")
    git(repo, "add", ".")
    places = Places()
    places.WALK_AFTER = 1
    before = (repo / ".git/index").read_bytes()
    assert not unmerged(before, b"x.md", places)  # a search: the places are learned by walking the index
    (repo / "a.md").write_text("a\n")
    git(repo, "add", "a.md")  # a new first entry: every other one moves
    after = (repo / ".git/index").read_bytes()
    names = (b"b.md", b"c.md", b"d.md")
    assert all(after[places.get(name) : places.get(name) + 5] != name + b"\0" for name in names)  # all stale
    for name in names:
        assert not unmerged(after, name, places)
        assert after[places.get(name) : places.get(name) + 5] == name + b"\0"  # learned again


def test_edits_among_many_files_keep_index_and_trees_as_git_reads_them(store: Store, ws_path: Path) -> None:
    """A blocks tree and an index big enough to be hashed in resumed chunks, a person staging between edits."""
    import random

    many = ws_path / "blocks"
    for i in range(2500):
        (many / f"b{i:04d}.md").write_text(f"---\nid: block-00000000-0000-0000-0000-{i:012d}\nlabel: b{i:04d}\n"
                                           f"limit: 5000\n---\nvalue {i}\n")
    git(ws_path, "add", "blocks")
    git(ws_path, "commit", "-qm", "many blocks")
    tree = subprocess.run(["git", "cat-file", "tree", "HEAD:blocks"], cwd=ws_path, capture_output=True,
                          check=True).stdout
    assert len(tree) > 64 * 1024 and (ws_path / ".git/index").stat().st_size > 64 * 1024
    store = Store.open(ws_path)
    rng = random.Random(3)
    for i in range(60):  # enough for the places of names to be learned (gitindex.Places), then moved
        label = f"b{rng.randrange(2500):04d}"
        store.memory_insert(label, f"fact {i}")
        if i % 5 == 4:  # the person stages a file: the index is git's now, not the one memstore wrote
            (ws_path / "notes.txt").write_text(f"note {i}\n")
            git(ws_path, "add", "notes.txt")
            git(ws_path, "commit", "-qm", f"note {i}")
        if i % 20 == 10:  # a new block in the middle: every entry after it moves
            store.create_block(f"b{1000 + i:04d}a", "new")
        assert f"fact {i}" in store.get_block(label).value
        assert git(ws_path, "show", f"HEAD:blocks/{label}.md") == (ws_path / f"blocks/{label}.md").read_text()
    assert_clean_repo(ws_path)
    assert git(ws_path, "diff", "--cached", "--name-only") == ""


def test_a_hand_edit_while_a_commit_waits_keeps_every_author(store: Store, ws_path: Path) -> None:
    """A pending agent edit, a person's edit on top, another agent edit: three commits, three authors."""
    store, actor = agent_store(store)
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")  # the person is staging interactively
    assert store.memory_insert("org", "agent line", actor=actor).pending
    path = ws_path / "blocks/org.md"
    path.write_text(path.read_text() + "person line\n")
    assert store.memory_insert("org", "second agent line", actor=actor).pending
    lock.unlink()
    assert store.commits.finish_all() == []
    log = git(ws_path, "log", "-3", "--format=%an|%s").splitlines()
    assert log == ["agent1|memory_insert org", "Pat Person|Hand edit blocks/org.md", "agent1|memory_insert org"]
    assert "agent line" in git(ws_path, "show", "HEAD~2:blocks/org.md")
    assert "person line" not in git(ws_path, "show", "HEAD~2:blocks/org.md")
    assert store.get_block("org").value == "Org: Letta\nagent line\nperson line\nsecond agent line"
    assert_clean_repo(ws_path)


def test_the_entries_end_is_read_from_gits_own_eoie_extension_and_a_patched_index_keeps_one(
        store: Store, ws_path: Path) -> None:
    """Where the entries end, for a process that did not write the index: git's End of Index
    Entries extension, checked as git checks it (here against one git wrote itself)."""
    from memstore import gitindex

    store, actor = agent_store(store)
    store.memory_insert("org", "one", actor=actor)
    git(ws_path, "-c", "index.recordEndOfIndexEntries=true", "read-tree", "HEAD")  # a cache tree, then git's EOIE
    data = (ws_path / ".git/index").read_bytes()
    walked = gitindex._walk_index(data, 2, int.from_bytes(data[8:12], "big"))[1]
    assert data[walked : walked + 4] == b"TREE" and gitindex.entries_end(data) == walked
    Store.open(ws_path).memory_insert("org", "two", actor=actor)  # another process: patched through the EOIE
    data = (ws_path / ".git/index").read_bytes()
    walked = gitindex._walk_index(data, 2, int.from_bytes(data[8:12], "big"))[1]
    assert data[walked : walked + 4] == b"EOIE" and gitindex.entries_end(data) == walked
    assert git(ws_path, "-c", "index.threads=true", "status", "--porcelain") == ""
    stale = bytearray(data)
    stale[-25] ^= 1  # the EOIE's hash no longer matches what lies between it and the entries
    assert gitindex.entries_end(stale) is None
    assert gitindex.entries_end(data[:-52] + data[-20:]) is None  # no EOIE at all
    assert_clean_repo(ws_path)


def test_an_index_entry_is_patched_where_it_is_whatever_hint_is_given(tmp_path: Path) -> None:
    """The place a name had in an earlier version saves a search; a wrong one is never trusted."""
    from memstore import gitindex

    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    for name in ("a.md", "b.md", "c.md"):
        (repo / name).write_text(f"{name}\n")
    git(repo, "-c", "index.recordEndOfIndexEntries=true", "add", ".")  # its EOIE: no walk of the entries
    data = (repo / ".git/index").read_bytes()
    at = data.index(b"b.md\0")
    (repo / "new.txt").write_text("new\n")
    blob = git(repo, "hash-object", "-w", "new.txt").strip()
    assert gitindex.entries_end(data) == gitindex._walk_index(data, 2, 3)[1]
    patched = {near: bytes(gitindex.patch_index(bytearray(data), b"b.md", blob, None, near=near))
               for near in (at, 0, 13, at - 8, len(data) - 4)}
    assert len(set(patched.values())) == 1
    (repo / ".git/index").write_bytes(patched[at])
    assert f"{blob} 0\tb.md" in git(repo, "ls-files", "-s")
    assert "a.md" in git(repo, "ls-files") and "c.md" in git(repo, "ls-files")


def test_a_git_commit_that_read_the_index_during_an_edit_never_reverts_it(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`git commit` reads HEAD, then the index, and only then locks: caught between the two, it must not win.

    The person's commit is made as git makes it, from what it read while memstore's commit
    was under way (right after the branch moved): the index file as it was then, the branch
    as it was then, and a compare-and-swap of the branch from that value.
    """
    store, actor = agent_store(store)
    seen: dict[str, str] = {}
    move_branch = gitrepo.GitRepo._move_branch

    def and_a_person_reads(self: gitrepo.GitRepo, *args: object, **kwargs: object) -> None:
        move_branch(self, *args, **kwargs)  # type: ignore[arg-type]
        seen["head"] = git(ws_path, "rev-parse", "HEAD").strip()
        seen["index"] = str(ws_path / ".git" / "person-index")
        (ws_path / ".git" / "person-index").write_bytes((ws_path / ".git" / "index").read_bytes())

    monkeypatch.setattr(gitrepo.GitRepo, "_move_branch", and_a_person_reads)
    assert store.memory_insert("org", "agent line", actor=actor).version
    monkeypatch.undo()
    (ws_path / "notes.txt").write_text("mine\n")
    env = {**os.environ, "GIT_INDEX_FILE": seen["index"]}
    subprocess.run(["git", "add", "notes.txt"], cwd=ws_path, env=env, check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=ws_path, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
    commit = git(ws_path, "commit-tree", tree, "-p", seen["head"], "-m", "person's commit").strip()
    moved = subprocess.run(["git", "update-ref", "refs/heads/main", commit, seen["head"]], cwd=ws_path,
                           capture_output=True, text=True)
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")  # whether or not the person's commit won
    if moved.returncode == 0:
        assert "notes.txt" in git(ws_path, "ls-tree", "--name-only", "HEAD")


def _race_a_git_commit(ws: Path, edit: Callable[[], object]) -> None:
    """What a `git commit` that read the index just before memstore's commit does once memstore lets go
    of `index.lock`: it writes back the index it read, then fails (the branch moved)."""
    stale = (ws / ".git/index").read_bytes()
    edit()
    (ws / ".git/index.lock").write_bytes(stale)
    os.replace(ws / ".git/index.lock", ws / ".git/index")
    assert git(ws, "diff", "--cached", "--name-only").strip() == "blocks/org.md"  # the agent's line unstaged


def test_an_index_a_racing_git_commit_wrote_back_is_repaired_before_the_persons_next_commit(
        store: Store, ws_path: Path) -> None:
    from memstore.watcher import Watcher

    store, actor = agent_store(store)
    with Watcher(store) as watcher:
        watcher.ready.wait(10)
        _race_a_git_commit(ws_path, lambda: store.memory_insert("org", "agent line", actor=actor))
        deadline = time.monotonic() + 10
        while git(ws_path, "diff", "--cached", "--name-only").strip() and time.monotonic() < deadline:
            time.sleep(0.02)
    (ws_path / "notes.txt").write_text("mine\n")
    git(ws_path, "add", "notes.txt")
    git(ws_path, "commit", "-qm", "person's own commit")
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")  # the person's commit undid nothing
    # without a watcher, the next memstore operation repairs it
    _race_a_git_commit(ws_path, lambda: store.memory_insert("org", "second line", actor=actor))
    Store.open(ws_path)
    assert git(ws_path, "diff", "--cached", "--name-only").strip() == ""
    assert_clean_repo(ws_path)


@pytest.mark.skipif(not shutil.which("strace") or sys.platform != "linux", reason="strace delays git (Linux)")
def test_a_real_git_commit_that_loses_the_race_to_an_agent_never_undoes_its_edit(store: Store, ws_path: Path) -> None:
    """The race with real git: the person's `git commit` is held (by strace) between reading the index and
    taking `index.lock` while an agent commits; it writes its stale index back and fails. The watcher sets
    the entry right again, so the person's next commit keeps the agent's line."""
    from memstore.watcher import Watcher

    store, actor = agent_store(store)
    (ws_path / "notes.txt").write_text("mine\n")
    git(ws_path, "add", "notes.txt")
    with Watcher(store) as watcher:
        watcher.ready.wait(10)
        person = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", os.devnull, "-P", str(ws_path / ".git/index.lock"), "-e", "trace=openat",
             "-e", "inject=openat:delay_enter=1500000:when=1", "git", "commit", "-qm", "person's commit"],
            cwd=ws_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.7)  # git has read HEAD and the index, and waits to create index.lock
        store.memory_insert("org", "agent line", actor=actor)
        _, err = person.communicate(timeout=30)
        if person.returncode == 0 or "cannot lock ref" not in err:
            pytest.skip(f"the race did not happen here (strace: {err.strip()[:200]})")
        deadline = time.monotonic() + 10
        while git(ws_path, "diff", "--cached", "--name-only").strip() != "notes.txt" and time.monotonic() < deadline:
            time.sleep(0.02)
    git(ws_path, "commit", "-qm", "person's commit, again")
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert git(ws_path, "log", "-1", "--format=%s", "--", "blocks/org.md").strip() == "memory_insert org"
    assert_clean_repo(ws_path)


def test_an_edit_a_racing_git_commit_undid_is_restored_under_its_agent(store: Store, ws_path: Path) -> None:
    """The person committed before the index was repaired: the branch lost the line, the file kept it.
    memstore commits it back as a restore by the agent, not as the person's hand edit."""
    store, actor = agent_store(store)
    _race_a_git_commit(ws_path, lambda: store.memory_insert("org", "agent line", actor=actor))
    (ws_path / "notes.txt").write_text("mine\n")
    git(ws_path, "add", "notes.txt")
    git(ws_path, "commit", "-qm", "person's own commit")
    assert "agent line" not in git(ws_path, "show", "HEAD:blocks/org.md")
    store = Store.open(ws_path)
    store.memory_insert("org", "next line", actor=actor)
    subjects = git(ws_path, "log", "-3", "--format=%an|%s").splitlines()
    assert subjects[0] == "agent1|memory_insert org"
    assert subjects[1].startswith("agent1|Restore memory_insert org (commit ")
    assert subjects[2] == f"{PERSON_NAME}|person's own commit"
    authors, author = {}, ""
    for line in git(ws_path, "blame", "--line-porcelain", "blocks/org.md").splitlines():
        if line.startswith("author "):
            author = line.removeprefix("author ")
        elif line.startswith("\t"):
            authors[line[1:]] = author
    assert authors["agent line"] == "agent1"  # git blame names the agent, not the person
    assert "Memstore-Op: restore" in git(ws_path, "log", "-1", "--skip=1", "--format=%B")
    # a person's own revert (the file changed with the branch) stays the person's
    path = ws_path / "blocks/org.md"
    path.write_text(path.read_text().replace("next line\n", ""))
    git(ws_path, "commit", "-qam", "person drops a line")
    assert Store.open(ws_path).commits.hand_edited("blocks/org.md", store.commits.read("blocks/org.md")) is False
    assert_clean_repo(ws_path)


def _persons_commit_with(ws: Path, stale: bytes) -> None:
    """The person's next commit, made with the index a racing `git commit` wrote back."""
    (ws / ".git/index.lock").write_bytes(stale)
    os.replace(ws / ".git/index.lock", ws / ".git/index")
    (ws / "notes.txt").write_text("mine\n")
    git(ws, "add", "notes.txt")
    git(ws, "commit", "-qm", "person's own commit")


def _log(ws: Path, n: int) -> list[str]:
    return [line for line in git(ws, "log", f"-{n}", "--format=%an|%s", "--numstat", "--", "blocks/").splitlines()
            if line]


def test_an_edit_whose_line_a_racing_git_commit_takes_out_meanwhile_commits_only_itself(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The person's commit with git's stale index lands while an agent's next edit is under way: the edit's
    commit must not carry the agent's earlier line back in with it (blame would name the wrong edit, or
    the wrong agent). The line goes back first, as a restore by its author."""
    store, actor = agent_store(store)
    stale = (ws_path / ".git/index").read_bytes()
    store.memory_insert("org", "line 1", actor=actor)
    commit_journal = store.commits._commit_journal

    def person_first(*args: object, **kwargs: object) -> str:
        monkeypatch.setattr(store.commits, "_commit_journal", commit_journal)
        _persons_commit_with(ws_path, stale)
        return commit_journal(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.commits, "_commit_journal", person_first)
    store.memory_insert("org", "line 2", actor=actor)
    assert _log(ws_path, 3) == ["agent1|memory_insert org", "1\t0\tblocks/org.md",
                                "agent1|Restore memory_insert org (commit " + git(
                                    ws_path, "rev-parse", "HEAD~2").strip()[:12] + " took it out, the file kept it)",
                                "1\t0\tblocks/org.md", f"{PERSON_NAME}|person's own commit", "0\t1\tblocks/org.md"]
    assert_clean_repo(ws_path)


def test_several_edits_one_racing_git_commit_took_out_are_restored_each_under_its_agent(
        store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    other = store.create_agent("agent2", "openai/gpt-4o-mini", block_ids=[store.get_block("org").id]).actor()
    stale = (ws_path / ".git/index").read_bytes()
    store.memory_insert("org", "line 1", actor=actor)
    store.memory_insert("org", "line 2", actor=other)  # both within the racing git commit's window
    _persons_commit_with(ws_path, stale)
    assert "line 1" not in git(ws_path, "show", "HEAD:blocks/org.md")
    Store.open(ws_path).get_block("org")  # looking at the file commits it back
    log = _log(ws_path, 3)
    assert [line.split(" (")[0] for line in log[::2]] == [
        "agent2|Restore memory_insert org", "agent1|Restore memory_insert org", f"{PERSON_NAME}|person's own commit"]
    assert log[1::2] == ["1\t0\tblocks/org.md", "1\t0\tblocks/org.md", "0\t2\tblocks/org.md"]
    assert_clean_repo(ws_path)


def test_a_racing_git_commit_that_lands_while_memstore_commits_is_restored_before_the_edit(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git's as-is commit lets go of index.lock before it moves the branch: the person's commit with the stale
    index can land while memstore holds index.lock, between building its commit and moving the branch.
    memstore then builds again on the new tip: it restores the taken-out line first, as its author's."""
    store, actor = agent_store(store)
    stale = (ws_path / ".git/index").read_bytes()
    store.memory_insert("org", "line 1", actor=actor)
    move = gitrepo.GitRepo._move_branch

    def person_lands_first(self: gitrepo.GitRepo, *args: object) -> None:
        monkeypatch.setattr(gitrepo.GitRepo, "_move_branch", move)
        (ws_path / ".git/stale-index").write_bytes(stale)
        env = {**os.environ, "GIT_INDEX_FILE": str(ws_path / ".git/stale-index")}
        tree = subprocess.run(["git", "write-tree"], cwd=ws_path, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
        (ws_path / ".git/stale-index").unlink()
        made = git(ws_path, "commit-tree", tree, "-p", "HEAD", "-m", "person's own commit").strip()
        git(ws_path, "update-ref", "HEAD", made)
        return move(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(gitrepo.GitRepo, "_move_branch", person_lands_first)
    result = store.memory_insert("org", "line 2", actor=actor)
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip() and not result.pending
    log = _log(ws_path, 3)
    assert [line.split(" (")[0] for line in log[::2]] == [
        "agent1|memory_insert org", "agent1|Restore memory_insert org", f"{PERSON_NAME}|person's own commit"]
    assert log[1::2] == ["1\t0\tblocks/org.md", "1\t0\tblocks/org.md", "0\t1\tblocks/org.md"]
    assert_clean_repo(ws_path)


def _line_2_waits_on_line_1(store: Store, ws_path: Path) -> tuple[str, bytes]:
    """agent1 commits "line 1", then its "line 2" waits for git's index; the file and index from before."""
    _, actor = agent_store(store)
    before = ((ws_path / "blocks/org.md").read_text(), (ws_path / ".git/index").read_bytes())
    store.memory_insert("org", "line 1", actor=actor)
    (ws_path / ".git/index.lock").write_bytes(b"")
    assert store.memory_insert("org", "line 2", actor=actor).pending
    (ws_path / ".git/index.lock").unlink()
    return before


def test_lines_a_person_removes_and_commits_on_purpose_are_never_restored(store: Store, ws_path: Path) -> None:
    """With `git commit -a` the file goes back with the branch: the person's own removal, not git's race."""
    before, _ = _line_2_waits_on_line_1(store, ws_path)
    (ws_path / "blocks/org.md").write_text(before)
    git(ws_path, "commit", "-qam", "person removes the agent's lines")
    reopened = Store.open(ws_path)
    assert "Restore" not in git(ws_path, "log", "--format=%s")
    assert reopened.get_block("org").value == "Org: Letta" and reopened.commits.pending_files() == []
    assert_clean_repo(ws_path)


def test_a_waiting_edit_whose_base_a_racing_git_commit_took_out_is_kept_and_its_base_restored(
        store: Store, ws_path: Path) -> None:
    _, stale = _line_2_waits_on_line_1(store, ws_path)
    _persons_commit_with(ws_path, stale)
    Store.open(ws_path)  # commits what waited
    log = _log(ws_path, 3)
    assert log[0] == "agent1|memory_insert org" and log[2].startswith("agent1|Restore memory_insert org")
    assert log[1] == log[3] == "1\t0\tblocks/org.md" and log[4] == f"{PERSON_NAME}|person's own commit"
    assert git(ws_path, "show", "HEAD:blocks/org.md").endswith("line 1\nline 2\n")
    assert_clean_repo(ws_path)


def test_edits_of_files_of_a_waiting_several_file_edit_never_wait_for_themselves(
        store: Store, ws_path: Path) -> None:
    """A waiting write of several files is finished with its other files' locks only if they are free at
    once: attaching a block to the waiting agent, or relabelling its new block, never waits for a lock its
    own thread holds, nor for one another writer holds while it waits for this one."""
    from memstore.store import new_block

    other = store.create_block("other", "O")
    (ws_path / ".git/index.lock").write_bytes(b"")
    store.create_agent("A", "openai/gpt-4o-mini", new_blocks=[new_block("x", "X")])
    assert sorted(store.commits.pending_files()) == ["agents/A.md", "blocks/x.md"]
    started = time.monotonic()
    store.attach_block("A", other.id)
    store.update_block("x", label="y")
    assert time.monotonic() - started < 30  # no wait for a lock this thread holds (the lock timeout is 120 s)
    (ws_path / ".git/index.lock").unlink()
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == []
    assert [b.label for b in reopened.agent_blocks("A")] == ["y", "other"]
    assert git(ws_path, "log", "--format=%s", "-3").splitlines() == [  # the waiting one whole, then the others
        "update_block y", "attach_block A other", "create_agent A"]
    assert git(ws_path, "show", "--name-only", "--format=", "HEAD~2").split() == ["agents/A.md", "blocks/x.md"]
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_waiting_several_file_edit_a_hook_refuses_later_is_dropped_whole(store: Store, ws_path: Path) -> None:
    """As waiting edits of one file are: every file put back, nothing left for the person's name."""
    from memstore.models import Actor

    org = store.create_block("org", "Org")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[org.id])
    (ws_path / ".git/index.lock").write_bytes(b"")
    store.delete_block("org")  # two files, waiting
    store.update_agent("agent1", description="queued behind it", actor=Actor.host("bot"))
    _hook(ws_path, "pre-commit", "git diff --cached --diff-filter=D --quiet || { echo 'no deletions' >&2; exit 1; }\n")
    (ws_path / ".git/index.lock").unlink()
    reopened = Store.open(ws_path)  # retried: refused
    assert reopened.commits.pending_files() == []
    assert (ws_path / "blocks/org.md").exists() and reopened.get_agent("agent1").blocks == [org.id]
    assert "Hand edit" not in git(ws_path, "log", "--format=%s")
    assert_clean_repo(ws_path)


def test_a_reflog_line_that_cannot_be_written_does_not_undo_a_made_commit(store: Store, ws_path: Path) -> None:
    """Once the branch has moved the edit is committed: the result says so and the index agrees."""
    store, actor = agent_store(store)
    head_log = ws_path / ".git/logs/HEAD"
    head_log.unlink()
    head_log.mkdir()  # appending to it fails, after the branch has moved
    result = store.memory_insert("org", "agent line", actor=actor)
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert "agent line" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert git(ws_path, "diff", "--cached", "--name-only") == "" and git(ws_path, "status", "--porcelain") == ""
    head_log.rmdir()


def test_a_removed_or_overwritten_lock_marker_is_made_again(store: Store, ws_path: Path) -> None:
    """A person tidying .git removes memstore's marker files, or an editor writes into one: the
    next lock makes it afresh, so its locks stay recognisable as memstore's."""
    store, actor = agent_store(store)
    for marker in (ws_path / ".git").glob("memstore-marker-*"):
        marker.unlink()
    assert store.memory_insert("org", "after the tidy-up", actor=actor).version
    markers = list((ws_path / ".git").glob("memstore-marker-*"))
    assert len(markers) == (0 if fsutil.PORTABLE else 3)  # index, HEAD and the branch
    for marker in markers:
        with open(marker, "r+b") as out:
            out.write(b"an editor's bytes")
    assert store.memory_insert("org", "after the editor", actor=actor).version
    assert all(marker.read_bytes() == b"memstore lock\n" for marker in markers)
    assert_clean_repo(ws_path)


def test_a_held_head_lock_is_waited_for_like_the_branchs(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    head_lock = ws_path / ".git/HEAD.lock"
    head_lock.write_bytes(b"")  # `git switch` or `git reflog expire` at work
    assert store.memory_insert("org", "waits for HEAD", actor=actor).pending
    assert head_lock.exists()
    head_lock.unlink()
    assert store.commits.finish_all() == []
    assert "waits for HEAD" in git(ws_path, "show", "HEAD:blocks/org.md")
    assert git(ws_path, "rev-parse", "HEAD@{0}").strip() == git(ws_path, "rev-parse", "HEAD").strip()
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="locks are claimed with flock on Unix")
def test_no_writer_can_make_a_lock_while_a_dead_one_is_being_removed(store: Store, ws_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The remover holds a dead lock exclusively from its judgement to its removal: a second writer
    (one whose repository lock was broken) can neither make a new lock of that file in between
    (its claim waits) nor remove the dead one too, so no live lock is ever removed in its place."""
    import threading

    judge, other = Store.open(ws_path).ws.git, Store.open(ws_path).ws.git
    lock = judge.git_dir / "index.lock"
    made = judge._make_lock(lock)
    assert made is not None
    if made[0] is not None:
        os.close(made[0])  # its writer died: marked, claimed by no one
    real, events = gitrepo._same_file, []
    contender = threading.Thread(target=lambda: events.append(other._make_lock(lock) or other._remove_dead_lock(lock)))

    def judging(path: Path, st: os.stat_result) -> bool:
        if threading.current_thread().name == "judge" and path == lock and not events:
            events.append("judging")
            contender.start()
            contender.join(0.5)
            events.append("contender waits" if contender.is_alive() else "contender done")
        return real(path, st)

    monkeypatch.setattr(gitrepo, "_same_file", judging)
    removed: list[bool] = []
    thread = threading.Thread(target=lambda: removed.append(judge._remove_dead_lock(lock)), name="judge")
    thread.start()
    thread.join(30)
    contender.join(30)
    monkeypatch.undo()
    assert removed == [True]
    if other._links:  # its claim waited for the removal, then it made its own lock, which stays
        assert events[:2] == ["judging", "contender waits"] and isinstance(events[2], tuple)
        assert lock.exists() and not other._remove_dead_lock(lock)
        os.close(events[2][0])
        lock.unlink()
    else:  # no links: the dead lock was still there, and held: it could not remove it
        assert events == ["judging", False, "contender done"]
        assert not lock.exists()


WRITER = """
import sys
from memstore import Store
store = Store.open(sys.argv[1])
print(store.memory_insert("org", "agent line").version, flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the claim is handed to the hook as a descriptor (Unix)")
def test_a_writer_killed_while_its_hooks_run_leaves_its_hook_the_index_lock(store: Store, ws_path: Path) -> None:
    """Killed (OOM, kill -9) during a slow pre-commit hook, a writer's hook lives on: it keeps index.lock
    claimed and its scratch index, so a writer started meanwhile waits instead of taking both for a
    dead writer's (a commit built from a removed scratch index deleted every file). The killed
    writer's edit is then committed from its journal, under its author, before the later one."""
    store, actor = agent_store(store)
    _hook(ws_path, "pre-commit", "touch .git/hook-started\nsleep 3\nexit 0\n")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ws_path)], cwd=ROOT, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (ws_path / ".git/hook-started").exists():  # its commit is in the hook
        assert time.monotonic() < deadline and writer.poll() is None
        time.sleep(0.01)
    writer.kill()
    writer.wait()
    other = Store.open(ws_path)  # a fresh process's first commit
    assert other.memory_insert("org", "other line", actor=actor).pending  # index.lock is still the orphan's
    while other.commits.finish_all():  # once the orphan hook ends, its lock goes, and both edits follow
        assert time.monotonic() < deadline
        time.sleep(0.1)
    files = git(ws_path, "ls-tree", "-r", "--name-only", "HEAD").split()
    assert {"README.md", "blocks/org.md"} <= set(files)
    assert "agent line\nother line" in git(ws_path, "show", "HEAD:blocks/org.md")  # the killed writer's, then this
    assert git(ws_path, "log", "-2", "--format=%s").splitlines() == ["memory_insert org"] * 2
    assert_clean_repo(ws_path)


def _persons_plumbing_commit(ws_path: Path, rel: str, content: str) -> None:
    """A commit of `content` as `rel` by the person, made without the work tree or the real index (a
    script, a bot, `git commit` of content staged elsewhere): the file never holds it."""
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=ws_path, input=content, capture_output=True,
                          text=True, check=True).stdout.strip()
    env = {**os.environ, "GIT_INDEX_FILE": str(ws_path / ".git/persons-index")}
    subprocess.run(["git", "read-tree", "HEAD"], cwd=ws_path, env=env, check=True)
    subprocess.run(["git", "update-index", "--cacheinfo", f"100644,{blob},{rel}"], cwd=ws_path, env=env, check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=ws_path, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    git(ws_path, "update-ref", "HEAD", git(ws_path, "commit-tree", tree, "-p", "HEAD", "-m", "Pat's").strip())


def _lines_store(store: Store) -> tuple[object, str]:
    block = store.create_block("org", "Org: Letta\nline 2\nline 3\nline 4")
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    return actor, "blocks/org.md"


@pytest.mark.parametrize("hooks", [False, True])
@pytest.mark.parametrize("merges", [True, False])
def test_a_persons_commit_of_the_same_block_landing_mid_commit_is_merged_or_the_edit_refused(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch, hooks: bool, merges: bool) -> None:
    """The person's committed change of the block is never taken out of the branch by the agent's commit
    (the content was never in the file): a change elsewhere in the block is merged with the edit, one
    that touches the edit's lines refuses the edit, and the file takes the branch's content."""
    actor, rel = _lines_store(store)
    if hooks:
        _hook(ws_path, "pre-commit", "exit 0\n")
        store = Store.open(ws_path)
    step = "_hook" if hooks else "_build"
    real = getattr(gitrepo.GitRepo, step)
    theirs = git(ws_path, "show", f"HEAD:{rel}").replace("Org: Letta" if merges else "line 4",
                                                          "Org: Letta (by Pat)" if merges else "line 4 (by Pat)")

    def lands(self: gitrepo.GitRepo, *args: object, **kwargs: object) -> object:
        out = real(self, *args, **kwargs)
        if (not hooks or args[0] == "pre-commit") and "(by Pat)" not in git(ws_path, "show", f"HEAD:{rel}"):
            _persons_plumbing_commit(ws_path, rel, theirs)
        return out

    monkeypatch.setattr(gitrepo.GitRepo, step, lands)
    if merges:
        result = store.memory_insert("org", "agent line", actor=actor)
        assert result.version == git(ws_path, "rev-parse", "HEAD").strip() and not result.pending
        assert result.block.value == "Org: Letta (by Pat)\nline 2\nline 3\nline 4\nagent line"  # what is committed
        assert git(ws_path, "log", "-2", "--format=%an|%s").splitlines() == ["agent1|memory_insert org",
                                                                             f"{PERSON_NAME}|Pat's"]
        diff = git(ws_path, "show", "-U0", "--format=", "HEAD").splitlines()
        assert [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")] == ["+agent line"]
    else:
        with pytest.raises(ConflictError, match="do not merge"):
            store.memory_insert("org", "agent line", actor=actor)
        assert git(ws_path, "log", "-1", "--format=%an").strip() == PERSON_NAME
    assert "(by Pat)" in git(ws_path, "show", f"HEAD:{rel}")
    assert (ws_path / rel).read_text() == git(ws_path, "show", f"HEAD:{rel}")
    assert Store.open(ws_path).commits.pending_files() == []
    assert_clean_repo(ws_path)


@pytest.mark.parametrize("merges", [True, False])
def test_a_waiting_edit_whose_block_a_person_commits_meanwhile_is_merged_or_dropped(
        store: Store, ws_path: Path, merges: bool) -> None:
    """An edit waiting for git's index lock, when the person's commit changes the same block before it
    frees: merged onto it under the agent's name, or, when they touch the same lines, dropped with the
    file put to what the person committed; never committed over the person's change."""
    actor, rel = _lines_store(store)
    lock = _git_holds_index(ws_path)
    assert store.memory_insert("org", "agent line", actor=actor).pending
    _persons_plumbing_commit(ws_path, rel, git(ws_path, "show", f"HEAD:{rel}").replace(
        "Org: Letta" if merges else "line 4", "Org: Letta (by Pat)" if merges else "line 4 (by Pat)"))
    lock.unlink()
    reopened = Store.open(ws_path)  # any memstore operation commits what waited
    assert reopened.commits.pending_files() == []
    committed = git(ws_path, "show", f"HEAD:{rel}")
    assert "(by Pat)" in committed
    if merges:
        assert reopened.get_block("org").value == "Org: Letta (by Pat)\nline 2\nline 3\nline 4\nagent line"
        assert git(ws_path, "log", "-1", "--format=%an").strip() == "agent1"
    else:
        assert "agent line" not in committed
        assert git(ws_path, "log", "-1", "--format=%an").strip() == PERSON_NAME
    assert (ws_path / rel).read_text() == committed
    assert_clean_repo(ws_path)


def test_a_merge_that_would_put_a_block_over_its_limit_refuses_the_edit(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = store.create_block("org", "Org: Letta\nline 2\nline 3\nline 4", limit=60)
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    rel = "blocks/org.md"
    theirs = git(ws_path, "show", f"HEAD:{rel}").replace("Org: Letta", "Org: Letta, a long line by Pat")
    real = gitrepo.GitRepo._build

    def lands(self: gitrepo.GitRepo, *args: object, **kwargs: object) -> object:
        if "by Pat" not in git(ws_path, "show", f"HEAD:{rel}"):
            _persons_plumbing_commit(ws_path, rel, theirs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gitrepo.GitRepo, "_build", lands)
    with pytest.raises(ConflictError, match="do not merge"):
        store.memory_insert("org", "a long agent line", actor=actor)  # each fits alone; both do not
    assert (ws_path / rel).read_text() == theirs == git(ws_path, "show", f"HEAD:{rel}")
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_hooks_and_attributes_set_up_while_a_store_is_open_apply_from_the_next_change(
        store: Store, ws_path: Path) -> None:
    """A `serve` started this morning sees `pre-commit install` and a new `.gitattributes` at once."""
    store, actor = agent_store(store)
    assert store.memory_insert("org", "before", actor=actor).version
    hook = _hook(ws_path, "pre-commit", "echo 'refused by the new hook' >&2\nexit 1\n")
    with pytest.raises(ConflictError, match="refused by the new hook"):
        store.memory_insert("org", "agent line", actor=actor)
    hook.unlink()
    (ws_path / ".gitattributes").write_text("*.md text eol=crlf\n")
    git(ws_path, "add", ".gitattributes")
    git(ws_path, "commit", "-qm", "CRLF blocks")
    assert store.memory_insert("org", "after", actor=actor).version
    assert b"before\r\nafter" in (ws_path / "blocks/org.md").read_bytes()  # checked out as git would
    assert "\r" not in git(ws_path, "show", "HEAD:blocks/org.md") and store.get_block("org").value.endswith(
        "before\nafter")
    assert_clean_repo(ws_path)


def _lands_mid_commit(monkeypatch: pytest.MonkeyPatch, ws_path: Path, rel: str, change: Callable[[str], str]) -> None:
    """The person's commit of `change(file as committed)` lands once, while the next commit is built."""
    real = gitrepo.GitRepo._build
    done: list[int] = []

    def lands(self: gitrepo.GitRepo, *args: object, **kwargs: object) -> object:
        if not done:
            done.append(1)
            _persons_plumbing_commit(ws_path, rel, change(git(ws_path, "show", f"HEAD:{rel}")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gitrepo.GitRepo, "_build", lands)


def _git_holds_index(ws_path: Path) -> Path:
    """git's index lock, held as a person's `git add -p` holds it: the lock, to let go."""
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    return lock


def _wait_for_git(store: Store, actor: object) -> Path:
    """An agent's edit that waits for git's index lock (the person staging): the lock, to let go."""
    lock = _git_holds_index(store.ws.root)
    assert store.memory_insert("org", "agent line", actor=actor).pending
    return lock


@pytest.mark.parametrize("waits", [False, True])
def test_an_agents_edit_is_not_merged_into_a_block_a_persons_commit_made_read_only(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch, waits: bool) -> None:
    actor, rel = _lines_store(store)
    read_only = git(ws_path, "show", f"HEAD:{rel}").replace("read_only: false", "read_only: true")
    if waits:
        lock = _wait_for_git(store, actor)
        _persons_plumbing_commit(ws_path, rel, read_only)
        lock.unlink()
        Store.open(ws_path)  # the waiting edit is dropped
    else:
        _lands_mid_commit(monkeypatch, ws_path, rel, lambda text: read_only)
        with pytest.raises(ConflictError, match="do not merge .*read-only"):
            store.memory_insert("org", "agent line", actor=actor)
    assert git(ws_path, "show", f"HEAD:{rel}") == read_only == (ws_path / rel).read_text()
    assert_clean_repo(ws_path)


def test_an_agent_change_merged_onto_a_persons_commit_returns_the_agent_as_committed(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create_agent("agent1", "openai/gpt-4o-mini", system="line1\nline2\nline3\nline4")
    rel = "agents/agent1.md"
    _lands_mid_commit(monkeypatch, ws_path, rel, lambda text: text.replace("line4", "line4 (by Pat)"))
    agent = store.update_agent("agent1", description="new description")
    assert agent.system == store.get_agent("agent1").system == "line1\nline2\nline3\nline4 (by Pat)"
    assert agent.description == "new description" and agent.version == git(ws_path, "rev-parse", "HEAD").strip()


@pytest.mark.skipif(sys.platform == "win32", reason="git pull of a local clone with a POSIX path")
def test_a_waiting_edit_a_pull_with_autostash_carries_over_stays_the_agents(
        store: Store, ws_path: Path, tmp_path: Path) -> None:
    actor, rel = _lines_store(store)
    upstream = tmp_path / "upstream"
    git(tmp_path, "clone", "-q", str(ws_path), str(upstream))
    (upstream / rel).write_text((upstream / rel).read_text().replace("Org: Letta", "Org: Letta (by Pat)"))
    git(upstream, "commit", "-qam", "upstream")
    _wait_for_git(store, actor).unlink()
    git(ws_path, "pull", "-q", "--rebase", "--autostash", str(upstream), "HEAD")  # stash, move, pop the merge
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == []
    assert reopened.get_block("org").value == "Org: Letta (by Pat)\nline 2\nline 3\nline 4\nagent line"
    assert git(ws_path, "log", "-2", "--format=%an|%s").splitlines() == ["agent1|memory_insert org",
                                                                         f"{PERSON_NAME}|upstream"]
    assert_clean_repo(ws_path)


def test_a_person_going_back_past_a_waiting_edit_is_not_merged_onto(store: Store, ws_path: Path) -> None:
    """The edit's base content recurs in history; `git reset --soft` goes back to a commit after it: the branch
    went back and the file still holds the edit, so it is not merged onto the branch but committed as it is (the
    file is the truth, as for `git commit`), the agent's."""
    actor, rel = _lines_store(store)
    store.memory_replace("org", "line 2", "line two", actor=actor)
    store.memory_replace("org", "line two", "line 2", actor=actor)
    lock = _wait_for_git(store, actor)
    lock.unlink()
    git(ws_path, "reset", "-q", "--soft", "HEAD~1")  # back to "line two"
    Store.open(ws_path)
    committed = git(ws_path, "show", f"HEAD:{rel}")
    assert "line two" not in committed, "merged onto a branch that went back"
    assert committed == (ws_path / rel).read_text() and "agent line" in committed
    assert git(ws_path, "log", "-1", "--format=%an").strip() == "agent1"


def test_a_persons_waiting_hand_edit_is_never_wiped_by_a_commit_it_does_not_merge_with(
        store: Store, ws_path: Path) -> None:
    from memstore import handedits

    _lines_store(store)
    rel = "blocks/org.md"
    lock = _git_holds_index(ws_path)
    path = ws_path / rel
    path.write_text(path.read_text().replace("line 4", "line 4 (my hand edit)"))
    handedits.pick_up(store, rel)  # what the watcher does: it waits for git, under the person's name
    assert store.commits.pending_files() == [rel]
    _persons_plumbing_commit(ws_path, rel, git(ws_path, "show", f"HEAD:{rel}").replace("line 4", "line 4 (script)"))
    lock.unlink()
    Store.open(ws_path)
    assert "(my hand edit)" in path.read_text()  # git never overwrites a dirty file either


@pytest.mark.parametrize("killed_at", ["_save_journal", "_put"])
def test_a_writer_killed_while_it_merges_a_waiting_edit_leaves_it_the_agents(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch, killed_at: str) -> None:
    from memstore.commits import Committer

    actor, rel = _lines_store(store)
    lock = _wait_for_git(store, actor)
    _persons_plumbing_commit(ws_path, rel, git(ws_path, "show", f"HEAD:{rel}").replace("Org: Letta", "Org: Pat"))
    lock.unlink()
    real = getattr(Committer, killed_at)

    def dies(self: Committer, *args: object) -> object:
        if sys._getframe(1).f_code.co_name == "_rebase":
            raise KeyboardInterrupt("killed")
        return real(self, *args)

    monkeypatch.setattr(Committer, killed_at, dies)
    with pytest.raises(KeyboardInterrupt):
        Store.open(ws_path)
    monkeypatch.setattr(Committer, killed_at, real)
    reopened = Store.open(ws_path)
    assert reopened.get_block("org").value == "Org: Pat\nline 2\nline 3\nline 4\nagent line"
    assert git(ws_path, "log", "-1", "--format=%an").strip() == "agent1"
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_post_commit_hook_that_amends_the_commit_leaves_the_result_naming_the_amended_one(
        store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    _hook(ws_path, "post-commit", '[ -n "$AMENDING" ] && exit 0\nAMENDING=1 git commit -q --amend --no-verify '
                                  '-m "$(git log -1 --format=%B)" -m "Reviewed-by: bot"\n')
    result = store.memory_insert("org", "agent line", actor=actor)
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert git(ws_path, "log", "-1", "--format=%an|%B").strip().endswith("Reviewed-by: bot")
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
@pytest.mark.parametrize("cleanup", ["verbatim", "strip", "whitespace"])
def test_a_message_a_hook_edits_is_cleaned_up_as_commit_cleanup_says(store: Store, ws_path: Path,
                                                                      cleanup: str) -> None:
    store, actor = agent_store(store)
    git(ws_path, "config", "commit.cleanup", cleanup)
    _hook(ws_path, "commit-msg", "printf '# a note   \\n\\n\\n' >> \"$1\"\n")
    store.memory_insert("org", "agent line", actor=actor)
    tail = git(ws_path, "cat-file", "commit", "HEAD").rsplit("Memstore-Author-Kind: agent\n", 1)[1]
    assert tail == {"verbatim": "# a note   \n\n\n", "strip": "", "whitespace": "# a note\n"}[cleanup]


def test_a_hand_edit_on_a_waiting_edit_and_a_persons_commit_meanwhile_are_all_kept_each_under_its_author(
        store: Store, ws_path: Path) -> None:
    actor, rel = _lines_store(store)
    lock = _wait_for_git(store, actor)
    path = ws_path / rel
    path.write_text(path.read_text().replace("line 3", "line 3 (hand)"))  # saved in an editor meanwhile
    _persons_plumbing_commit(ws_path, rel, git(ws_path, "show", f"HEAD:{rel}").replace("Org: Letta", "Org: Pat"))
    lock.unlink()
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == [rel]  # waits for the hand edit to be taken as the person's
    reopened.memory_insert("org", "agent C", actor=actor)  # an edit of the block (or the watcher) takes it
    assert reopened.get_block("org").value == "Org: Pat\nline 2\nline 3 (hand)\nline 4\nagent line\nagent C"
    assert git(ws_path, "log", "-4", "--format=%an").splitlines() == ["agent1", PERSON_NAME, "agent1", PERSON_NAME]
    assert "+line 3 (hand)" in git(ws_path, "show", "-U0", "HEAD~1") and "+Org: Pat" in git(ws_path, "show", "HEAD~3")
    assert_clean_repo(ws_path)


def test_a_filter_added_while_a_store_is_open_is_refused_at_every_edit(store: Store, ws_path: Path) -> None:
    store.create_block("org", "v0")
    (ws_path / ".gitattributes").write_text("*.md filter=lfs\n")
    for value in ("v1", "v2"):
        with pytest.raises(WorkspaceError, match="filter"):
            store.update_block("org", value=value)
    assert git(ws_path, "log", "-1", "--format=%s").startswith("create_block")


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_hooks_path_set_in_an_included_config_file_while_a_store_is_open_applies(
        store: Store, ws_path: Path, tmp_path: Path) -> None:
    included = tmp_path / "included.cfg"
    included.write_text("# nothing yet\n")
    git(ws_path, "config", "include.path", str(included))
    store = Store.open(ws_path)
    store.create_block("org", "v0")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pre-commit").write_text("#!/bin/sh\necho 'refused by the shared hooks' >&2\nexit 1\n")
    (hooks / "pre-commit").chmod(0o755)
    included.write_text(f"[core]\n\thooksPath = {hooks}\n")
    with pytest.raises(ConflictError, match="refused by the shared hooks"):
        store.update_block("org", value="v1")


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_hook_refusing_a_waiting_agent_edit_keeps_the_persons_hand_edit_on_top_of_it(
        store: Store, ws_path: Path) -> None:
    actor, rel = _lines_store(store)
    _hook(ws_path, "pre-commit", 'if [ "$GIT_AUTHOR_NAME" = agent1 ]; then echo "no agents" >&2; exit 1; fi\n')
    lock = _wait_for_git(Store.open(ws_path), actor)
    path = ws_path / rel
    path.write_text(path.read_text().replace("Org: Letta", "Org: Letta (person)"))
    store.get_block("org")  # the hand edit is taken as the person's: it waits behind the agent's edit
    lock.unlink()
    store.commits.finish_all()  # the agent's edit is refused at its retry, and taken out of the file
    assert path.read_text().endswith("Org: Letta (person)\nline 2\nline 3\nline 4\n")
    store.get_block("org")  # the person's text is a hand edit again: committed under their name
    assert git(ws_path, "log", "-1", "--format=%an").strip() == PERSON_NAME
    assert git(ws_path, "show", f"HEAD:{rel}") == path.read_text()
    assert_clean_repo(ws_path)


def test_an_edit_made_against_a_version_is_refused_not_merged_when_a_persons_commit_lands_meanwhile(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memstore.errors import PreconditionFailedError

    actor, rel = _lines_store(store)
    version = store.get_block("org").version
    assert version is not None
    _lands_mid_commit(monkeypatch, ws_path, rel, lambda text: text.replace("Org: Letta", "Org: Pat"))
    with pytest.raises(PreconditionFailedError, match="after the version the edit was made against"):
        store.memory_insert("org", "agent line", actor=actor, expected_version=version)  # If-Match: 412
    assert (ws_path / rel).read_text() == git(ws_path, "show", f"HEAD:{rel}") and "agent line" not in (
        ws_path / rel).read_text()
    assert git(ws_path, "log", "-1", "--format=%an").strip() == PERSON_NAME
    assert_clean_repo(ws_path)


def test_of_queued_waiting_edits_only_the_one_that_does_not_merge_with_a_persons_commit_is_dropped(
        store: Store, ws_path: Path) -> None:
    actor, rel = _lines_store(store)
    lock = _git_holds_index(ws_path)
    assert store.memory_replace("org", "line 4", "line 4 by the agent", actor=actor).pending
    assert store.memory_replace("org", "line 2", "line 2 by the agent", actor=actor).pending  # queued behind it
    _persons_plumbing_commit(ws_path, rel, git(ws_path, "show", f"HEAD:{rel}").replace("line 4", "line 4 by Pat"))
    lock.unlink()
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == []
    assert reopened.get_block("org").value == "Org: Letta\nline 2 by the agent\nline 3\nline 4 by Pat"
    assert git(ws_path, "log", "-2", "--format=%an|%s").splitlines() == ["agent1|memory_replace org",
                                                                         f"{PERSON_NAME}|Pat's"]
    assert (ws_path / rel).read_text() == git(ws_path, "show", f"HEAD:{rel}")
    assert_clean_repo(ws_path)


def test_a_writer_holding_two_case_twin_files_takes_their_one_lock_once(store: Store, ws_path: Path) -> None:
    """`blocks/Org.md` and `blocks/org.md` (made by hand on Linux) share a lock; an agent listing both still
    gets made, not left waiting for itself."""
    import threading

    first = store.create_block("Org", "upper")
    second = store.create_block("orgs", "lower")
    git(ws_path, "mv", f"blocks/{second.name}.md", "blocks/org.md")
    git(ws_path, "commit", "-qm", "a case twin, by hand")
    reopened = Store.open(ws_path)
    made = threading.Thread(target=reopened.create_agent, args=("agent1", "openai/gpt-4o-mini"),
                            kwargs={"block_ids": [first.id, second.id]}, daemon=True)
    made.start()
    made.join(30)
    assert not made.is_alive(), "the writer waits for its own lock"
    assert reopened.get_agent("agent1").blocks == [first.id, second.id]


def test_a_delete_made_against_a_version_is_not_refused_for_a_persons_commit_of_another_file(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, rel = _lines_store(store)
    version = store.get_block("org").version
    _lands_mid_commit(monkeypatch, ws_path, "agents/agent1.md",
                      lambda text: text.replace("description: null", "description: Pat's agent"))
    store.delete_block("org", expected_version=version)  # the block is still at that version
    assert not (ws_path / rel).exists() and "Pat's agent" in git(ws_path, "show", "HEAD:agents/agent1.md")
    assert_clean_repo(ws_path)


def test_a_waiting_several_file_edit_meeting_a_persons_commit_it_does_not_merge_with_is_dropped_whole(
        store: Store, ws_path: Path) -> None:
    _lines_store(store)
    org, other = store.get_block("org"), store.create_block("other", "x")
    lock = _git_holds_index(ws_path)
    assert store.delete_block("org").pending  # the block's file, and its line in the agent's list
    agent = git(ws_path, "show", "HEAD:agents/agent1.md")
    _persons_plumbing_commit(ws_path, "agents/agent1.md", agent.replace(f"- {org.id}\n", f"- {org.id}\n- {other.id}\n"))
    lock.unlink()
    reopened = Store.open(ws_path)
    assert reopened.commits.pending_files() == []
    assert (ws_path / "blocks/org.md").exists() and reopened.get_agent("agent1").blocks == [org.id, other.id]
    assert_clean_repo(ws_path)


def test_an_agents_waiting_edit_under_a_hand_edit_that_does_not_merge_stays_the_agents(
        store: Store, ws_path: Path) -> None:
    actor, rel = _lines_store(store)
    lock = _git_holds_index(ws_path)
    assert store.memory_replace("org", "line 2", "line 2 by the agent", actor=actor).pending  # merges
    path = ws_path / rel
    path.write_text(path.read_text().replace("line 4", "line 4 (hand)"))  # does not
    store.get_block("org")  # taken as the person's, behind the agent's
    _persons_plumbing_commit(ws_path, rel, git(ws_path, "show", f"HEAD:{rel}").replace("line 4", "line 4 by Pat"))
    lock.unlink()
    reopened = Store.open(ws_path)
    assert git(ws_path, "log", "-2", "--format=%an|%s").splitlines() == ["agent1|memory_replace org",
                                                                         f"{PERSON_NAME}|Pat's"]
    assert "line 4 (hand)" in path.read_text()  # the person's text stays in the file, theirs to commit
    reopened.get_block("org")
    assert git(ws_path, "log", "-1", "--format=%an").strip() == PERSON_NAME
    assert_clean_repo(ws_path)


@pytest.mark.skipif(sys.platform == "win32", reason="shell hooks")
def test_a_refused_edit_whose_files_cannot_be_put_back_is_an_error_not_pending(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memstore.commits import Committer

    store, actor = agent_store(store)
    _hook(ws_path, "pre-commit", "echo 'no secrets' >&2\nexit 1\n")
    before = (ws_path / "blocks/org.md").read_bytes()
    real = Committer._put
    calls: list[int] = []

    def full_after_the_write(self: Committer, rel: str, content: bytes | None, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) > 1:  # the put-back
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, rel, content, **kwargs)

    monkeypatch.setattr(Committer, "_put", full_after_the_write)
    with pytest.raises(ConflictError, match="no secrets.*refused to put the files back"):
        store.memory_insert("org", "secret", actor=actor)
    monkeypatch.setattr(Committer, "_put", real)
    reopened = Store.open(ws_path)  # retried, refused again: taken out
    assert (ws_path / "blocks/org.md").read_bytes() == before and reopened.commits.pending_files() == []
    assert "secret" not in git(ws_path, "log", "-p", "-1")


@pytest.mark.parametrize("cmd", [["pull", "-q", "--rebase", ".", "side"], ["switch", "-q", "side"],
                                 ["reset", "-q", "--hard", "side"]], ids=["pull-rebase", "switch", "reset-hard"])
def test_a_sideways_branch_move_landing_mid_edit_is_merged_onto_never_reverted(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch, cmd: list[str]) -> None:
    """A person's command that moves the branch to another line of history (a rebasing pull, a switch, a reset
    onto another branch) after the edit read the file and before it wrote it: the agent's commit holds its line
    and the other line's change (it used to commit the whole old file on the new tip, taking that change out)."""
    from memstore import commits

    block = store.create_block("org", "Org: Letta\nline two\nline three")
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    git(ws_path, "switch", "-qc", "side")
    path = ws_path / "blocks/org.md"
    path.write_text(path.read_text().replace("line three", "line three (side's fix)"))
    git(ws_path, "commit", "-qam", "side's fix")
    git(ws_path, "switch", "-q", "main")
    (ws_path / "notes.txt").write_text("main's own work\n")
    git(ws_path, "add", "notes.txt")
    git(ws_path, "commit", "-qm", "main's notes")  # the two lines diverge
    original, ran = commits.Committer._save_journal, []

    def save_journal(self: commits.Committer, rel: str, journal: list) -> None:
        if journal and not ran:  # after the edit read the file and the tip, before it writes the file
            ran.append(subprocess.run(["git", *cmd], cwd=ws_path, capture_output=True, text=True))
        original(self, rel, journal)

    monkeypatch.setattr(commits.Committer, "_save_journal", save_journal)
    result = store.memory_insert("org", "agent line", actor=actor, insert_line=0)
    assert ran[0].returncode == 0, ran[0].stderr
    assert result.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert git(ws_path, "show", "HEAD:blocks/org.md") == path.read_text()
    assert "agent line" in path.read_text() and "side's fix" in path.read_text()
    assert git(ws_path, "log", "-1", "--format=%an %s").strip() == "agent1 memory_insert org"
    assert store.get_block("org").value == "agent line\nOrg: Letta\nline two\nline three (side's fix)"
    assert_clean_repo(ws_path)


def test_a_waiting_edit_carried_by_a_rebasing_pull_with_autostash_stays_the_agents(store: Store, ws_path: Path,
                                                                                 tmp_path: Path) -> None:
    """`git pull` with pull.rebase and rebase.autoStash while an agent's commit is not pushed yet: the rebase
    rewrites that commit (the branch moves sideways), and the waiting edit, which the autostash carried over in
    the file, is committed as the agent's, merged, never dropped or taken for the person's hand edit."""
    block = store.create_block("org", "Org: Letta\nline 2\nline 3\nline 4")
    notes = store.create_block("notes", "n")
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id, notes.id]).actor()
    upstream = tmp_path / "upstream"
    git(tmp_path, "clone", "-q", str(ws_path), str(upstream))
    rel = "blocks/org.md"
    (upstream / rel).write_text((upstream / rel).read_text().replace("Org: Letta", "Org: Letta (by Pat)"))
    git(upstream, "commit", "-qam", "upstream")
    store.memory_insert("notes", "unpushed agent note", actor=actor)  # a local commit, not pushed yet
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")  # the person's commit in its editor
    assert store.memory_insert("org", "agent line", actor=actor).pending
    lock.unlink()
    git(ws_path, "config", "pull.rebase", "true")
    git(ws_path, "config", "rebase.autoStash", "true")
    git(ws_path, "pull", "-q", str(upstream), "HEAD")
    status = subprocess.run([MEMSTORE, "status"], cwd=ws_path, capture_output=True, text=True)
    assert "discarded" not in status.stderr, status.stderr
    assert git(ws_path, "log", "-1", "--format=%an|%s", "--", rel).strip() == "agent1|memory_insert org"
    assert git(ws_path, "show", f"HEAD:{rel}") == (ws_path / rel).read_text()
    assert Store.open(ws_path).get_block("org").value == "Org: Letta (by Pat)\nline 2\nline 3\nline 4\nagent line"
    assert_clean_repo(ws_path)


@pytest.mark.parametrize("cmd", [["gc", "--prune=now"], ["prune"]])
def test_a_git_prune_while_edits_wait_never_makes_a_commit_name_a_missing_object(store: Store, ws_path: Path,
                                                                                cmd: list[str]) -> None:
    """Nothing in git refers to a waiting edit's content, so a `git gc --prune=now` removes it. The edit is
    committed from the file that still holds it; one whose content is gone from the file too goes into the
    next edit's commit. No commit names a missing blob (memstore used to commit it, and `git fsck` failed)."""
    block = store.create_block("org", "Org: Letta")
    agent1 = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    agent2 = store.create_agent("agent2", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")  # the person's `git commit` waits in its editor
    assert store.memory_insert("org", "agent1 line", actor=agent1).pending
    assert store.memory_insert("org", "agent2 line", actor=agent2).pending
    git(ws_path, *cmd)  # in another terminal: both waiting edits' blobs go, the file keeps the second
    lock.unlink()
    status = subprocess.run([MEMSTORE, "status"], cwd=ws_path, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "removed from git's object store" in status.stderr
    assert git(ws_path, "log", "-1", "--format=%an|%s").strip() == "agent2|memory_insert org"
    assert git(ws_path, "show", "HEAD:blocks/org.md") == (ws_path / "blocks/org.md").read_text()
    assert Store.open(ws_path).get_block("org").value == "Org: Letta\nagent1 line\nagent2 line"
    assert_clean_repo(ws_path)
    # the one edit whose content the file holds is committed as it is
    lock.write_bytes(b"")
    assert store.memory_insert("org", "agent1 again", actor=agent1).pending
    git(ws_path, *cmd)
    lock.unlink()
    assert store.memory_insert("org", "agent2 again", actor=agent2).version
    assert git(ws_path, "log", "-2", "--format=%an|%s").splitlines() == ["agent2|memory_insert org",
                                                                         "agent1|memory_insert org"]
    assert_clean_repo(ws_path)


def test_a_commit_of_an_object_git_no_longer_holds_is_refused(store: Store, ws_path: Path) -> None:
    """The last guard: a change naming a blob the object store lacks is refused before anything is written."""
    store.create_block("org", "Org: Letta")
    head = git(ws_path, "rev-parse", "HEAD").strip()
    gone = "1" * 40
    with pytest.raises(WorkspaceError, match="no longer in git's object store"):
        store.ws.git.commit([("blocks/org.md", gone)], gitrepo.Ident("a", "a@x"), "m", gitrepo.Ident("b", "b@x"))
    assert git(ws_path, "rev-parse", "HEAD").strip() == head
    assert_clean_repo(ws_path)


def test_history_and_blame_read_plain_answers_whatever_the_persons_git_configuration(
        store: Store, ws_path: Path, tmp_path: Path) -> None:
    """`log.showSignature` (common where commits are signed) prints the signature check before each record, and
    an external diff tool or colours would change a diff: versions stay commit ids and the diff git's own. A
    blame git refuses (a `blame.ignoreRevsFile` this repository lacks) is an error saying so, never every line
    "not committed yet"."""
    store, actor = agent_store(store)
    fake = tmp_path / "fake-gpg"  # signs with a stand-in signature; its verdict on one is a bad one
    fake.write_text("#!/bin/sh\ncat >/dev/null\necho '[GNUPG:] SIG_CREATED D 1 8 00 0 X' >&2\n"
                    "printf -- '-----BEGIN PGP SIGNATURE-----\\nstand-in\\n-----END PGP SIGNATURE-----\\n'\n")
    fake.chmod(0o755)
    for key, value in (("gpg.program", str(fake)), ("user.signingkey", "memstore-test"), ("commit.gpgsign", "true"),
                       ("log.showSignature", "true"), ("color.ui", "always"), ("diff.external", "false")):
        git(ws_path, "config", "--global", key, value)
    made = store.memory_insert("org", "signed line", actor=actor).version
    assert made == git(ws_path, "rev-parse", "HEAD").strip()
    assert [h.version for h in store.block_history("org")][0] == made
    assert store.memory_rethink("org", store.get_block("org").value, actor=actor).version == made  # no change
    shown = subprocess.run([MEMSTORE, "log", "org"], cwd=ws_path, capture_output=True, text=True)
    assert shown.stdout.startswith(made[:12]), shown.stdout + shown.stderr
    assert "+signed line" in store.block_diff("org", "HEAD~1") and "\x1b[" not in store.block_diff("org", "HEAD~1")
    assert [line.author_name for line in store.block_blame("org")] == [PERSON_NAME, "agent1"]
    git(ws_path, "config", "--global", "blame.ignoreRevsFile", ".git-blame-ignore-revs")
    with pytest.raises(WorkspaceError, match="git blame of blocks/org.md failed: .*could not open object name list"):
        store.block_blame("org")
    blamed = subprocess.run([MEMSTORE, "blame", "org"], cwd=ws_path, capture_output=True, text=True)
    assert blamed.returncode == 1 and "not committed yet" not in blamed.stdout, blamed.stdout
    (ws_path / ".git-blame-ignore-revs").write_text("")  # the file the person's configuration names
    assert [line.version for line in store.block_blame("org")][1] == made


def test_an_index_git_wrote_without_a_checksum_is_never_taken_for_an_older_one(store: Store, ws_path: Path) -> None:
    """`index.skipHash` (git 2.40+, part of `feature.manyFiles`) writes the index with a zero checksum, which then
    no longer tells two versions apart: with a reused inode and a coarse clock (two writes in one tick), memstore
    took the person's newer staging for the index it had read before, and put the older one back."""
    store, actor = agent_store(store)
    store.create_block("policy", "fixed", read_only=True)
    store.attach_block("agent1", "policy")
    index = ws_path / ".git/index"

    def stage(text: str, into: Path) -> None:  # `git add` as git 2.40 writes it with skipHash, into `into`'s inode
        (ws_path / "notes.txt").write_text(text)
        git(ws_path, "add", "notes.txt")
        data = index.read_bytes()
        with open(into, "r+b") as out:
            out.write(data[:-20] + bytes(20))
            out.truncate()

    (ws_path / "notes.txt").write_text("n0\n")
    git(ws_path, "add", "notes.txt")
    git(ws_path, "commit", "-qm", "notes")
    stage("n1\n", index)
    with pytest.raises(ReadOnlyError):  # any memstore operation that reads the index (and keeps it)
        store.memory_insert("policy", "x", actor=actor)
    first = os.stat(index)
    os.link(index, ws_path / ".git/index-first")  # its inode, for git's next index to reuse
    stage("n3\n", ws_path / ".git/index-first")  # the person stages n3: same size, the same inode again
    os.utime(ws_path / ".git/index-first", ns=(first.st_atime_ns, first.st_mtime_ns))  # within one clock tick
    os.replace(ws_path / ".git/index-first", index)
    staged = git(ws_path, "ls-files", "-s", "notes.txt")
    assert git(ws_path, "show", ":notes.txt") == "n3\n"
    assert store.memory_insert("org", "agent line", actor=actor).version
    assert git(ws_path, "ls-files", "-s", "notes.txt") == staged  # the person's staging of n3 stays
    assert git(ws_path, "show", ":notes.txt") == "n3\n"


def test_an_unmerged_block_is_never_served_as_memory(store: Store, ws_path: Path) -> None:
    """While a block is unmerged, lists, an agent's memory and `memstore status` give it as last committed and say
    why, as for any invalid hand edit: conflict markers are never memory."""
    store, actor = agent_store(store)
    path = _stash_pop_conflict(store, ws_path, actor)
    assert "<<<<<<<" in path.read_text()
    assert [b.value for b in store.list_blocks()] == ["Org: Letta Inc"]
    assert store.get_block("org").value == "Org: Letta Inc"
    assert store.get_block("org").version == git(ws_path, "rev-parse", "HEAD").strip()
    assert [b.value for b in store.agent_blocks("agent1")] == ["Org: Letta Inc"]
    assert "<<<<<<<" not in store.memory_context("agent1")
    status = subprocess.run([MEMSTORE, "status"], cwd=ws_path, capture_output=True, text=True)
    assert "blocks/org.md" in status.stdout and "is unmerged" in status.stdout, status.stdout
    assert "<<<<<<<" not in git(ws_path, "show", "HEAD:blocks/org.md")


def test_a_branch_pointing_at_a_missing_commit_is_one_clear_error(store: Store, ws_path: Path) -> None:
    """A branch whose commit a `git gc --prune=now` removed (or a damaged clone): every operation says so, and the
    CLI prints one line (it was a bare KeyError)."""
    store, actor = agent_store(store)
    branch = ws_path / ".git/refs/heads/main"
    good = branch.read_text()
    branch.write_text("1" * 40 + "\n")
    with pytest.raises(WorkspaceError, match="points at commit 111111111111, which git's object store does not hold"):
        store.memory_insert("org", "x", actor=actor)
    with pytest.raises(WorkspaceError, match="does not hold"):
        Store.open(ws_path)
    shown = subprocess.run([MEMSTORE, "block", "list"], cwd=ws_path, capture_output=True, text=True)
    assert shown.returncode == 1 and shown.stderr.startswith("memstore: error:") and "Traceback" not in shown.stderr
    branch.write_text(good)  # the person resets the branch to a commit that is there
    assert store.memory_insert("org", "x", actor=actor).version
    assert_clean_repo(ws_path)


def test_a_persons_save_landing_while_an_agent_edits_the_block_is_kept_and_the_edit_made_on_top(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An editor takes no lock: a person's save can land between the agent's read of the file (under its lock) and
    its write. The edit is made again on top of the save, which is committed first as the person's; the save
    used to be renamed over and lost, in no file and no commit."""
    from memstore import commits

    store, actor = agent_store(store)
    path = ws_path / "blocks/org.md"
    original, saves = commits.Committer._put, []

    def put(self: commits.Committer, rel: str, content: bytes | None, *args: object, **kwargs: object) -> object:
        if rel == "blocks/org.md" and not saves:  # the agent's write, right before it
            tmp = path.with_name(".org.md.swp")  # what an editor does on save: a temp file renamed over the file
            tmp.write_text(path.read_text() + "PERSON LINE\n")
            os.replace(tmp, path)
            saves.append(1)
        return original(self, rel, content, *args, **kwargs)

    monkeypatch.setattr(commits.Committer, "_put", put)
    result = store.memory_insert("org", "AGENT LINE", actor=actor)
    assert saves and result.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert store.get_block("org").value == "Org: Letta\nPERSON LINE\nAGENT LINE"
    assert git(ws_path, "log", "-2", "--format=%an|%s").splitlines() == [
        "agent1|memory_insert org", f"{PERSON_NAME}|Hand edit blocks/org.md"]
    assert git(ws_path, "show", "HEAD:blocks/org.md") == path.read_text()
    assert_clean_repo(ws_path)


def test_a_persons_save_landing_during_every_try_of_an_edit_refuses_it_with_nothing_written(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memstore import commits

    store, actor = agent_store(store)
    path = ws_path / "blocks/org.md"
    original = commits.Committer._put

    def put(self: commits.Committer, rel: str, content: bytes | None, *args: object, **kwargs: object) -> object:
        if rel == "blocks/org.md" and "still" in kwargs:  # a person saving again and again, before each write
            path.write_text(path.read_text() + "more\n")
        return original(self, rel, content, *args, **kwargs)

    monkeypatch.setattr(commits.Committer, "_put", put)
    with pytest.raises(ConflictError, match="saved by someone else while the edit was made; nothing was written"):
        store.memory_insert("org", "AGENT LINE", actor=actor)
    monkeypatch.undo()
    assert path.read_text().endswith("Org: Letta\n" + "more\n" * 5)  # every save of theirs is there
    assert store.commits.pending_files() == [] and "AGENT LINE" not in git(ws_path, "log", "-p")


def _waiting_replace(store: Store, ws_path: Path, actor: object) -> None:
    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")  # the person's `git commit` in its editor
    assert store.memory_replace("org", "line 5", "line 5 E", actor=actor).pending  # type: ignore[arg-type]
    lock.unlink()


def test_a_waiting_edit_of_a_block_the_new_line_never_had_is_committed_as_it_is(store: Store, ws_path: Path,
                                                                               tmp_path: Path) -> None:
    """The person squashes local work onto an upstream that never had the block (`git reset --soft FETCH_HEAD`)
    while an edit of it waits: nothing of the branch's to merge with, the file is the block's only copy there,
    and it is committed as it is, the agent's (it crashed every command and the watcher's thread)."""
    from memstore.watcher import Watcher

    upstream = tmp_path / "upstream"
    git(tmp_path, "clone", "-q", str(ws_path), str(upstream))
    (upstream / "notes.txt").write_text("upstream\n")
    git(upstream, "add", "notes.txt")
    git(upstream, "commit", "-qm", "upstream work")
    block = store.create_block("org", "Org: Letta\nline 2\nline 3\nline 4\nline 5\nline 6")
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    _waiting_replace(store, ws_path, actor)
    git(ws_path, "fetch", "-q", str(upstream), "main")
    git(ws_path, "reset", "-q", "--soft", "FETCH_HEAD")
    with Watcher(store) as watcher:
        deadline = time.monotonic() + 15
        while store.commits.pending_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher._worker.is_alive()
    assert store.commits.pending_files() == []
    assert git(ws_path, "log", "-1", "--format=%an|%s", "--", "blocks/org.md").strip() == "agent1|memory_replace org"
    assert "line 5 E" in git(ws_path, "show", "HEAD:blocks/org.md") == (ws_path / "blocks/org.md").read_text()
    status = subprocess.run([MEMSTORE, "status"], cwd=ws_path, capture_output=True, text=True)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-400:]


@pytest.mark.parametrize("how", ["reset --soft", "rebase -i --autostash"])
def test_a_waiting_edit_whose_branch_went_back_past_its_base_stays_the_agents(store: Store, ws_path: Path,
                                                                             how: str) -> None:
    """The branch goes back past the commit a waiting edit was made on. `git reset --soft HEAD~` leaves the file
    holding the edit: it is committed as it is. `git rebase -i --autostash` dropping that commit carries the edit
    over in the file: it is merged onto the branch. Either way the agent's, never dropped as "discarded" and then
    taken for the person's hand edit."""
    block = store.create_block("org", "Org: Letta\nline 2\nline 3\nline 4\nline 5\nline 6")
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    store.memory_replace("org", "line 2", "line 2 A", actor=actor)
    _waiting_replace(store, ws_path, actor)
    if how == "reset --soft":
        git(ws_path, "reset", "-q", "--soft", "HEAD~1")
    else:
        env = {**os.environ, "GIT_SEQUENCE_EDITOR": "sed -i '1s/^pick/drop/'"}
        subprocess.run(["git", "rebase", "-q", "-i", "--autostash", "HEAD~1"], cwd=ws_path, env=env, check=True,
                       capture_output=True)
    status = subprocess.run([MEMSTORE, "status"], cwd=ws_path, capture_output=True, text=True)
    assert "discarded" not in status.stderr, status.stderr
    assert git(ws_path, "log", "-1", "--format=%an", "--", "blocks/org.md").strip() == "agent1"
    committed = git(ws_path, "show", "HEAD:blocks/org.md")
    assert "line 5 E" in committed and committed == (ws_path / "blocks/org.md").read_text()
    assert ("line 2 A" in committed) == (how == "reset --soft")  # the dropped commit's change stays dropped


def test_a_prune_under_a_waiting_several_file_write_with_an_edit_queued_behind_it_leaves_nothing_stuck(
        store: Store, ws_path: Path) -> None:
    from memstore.store import new_block

    lock = ws_path / ".git/index.lock"
    lock.write_bytes(b"")
    assert store.create_agent("agent1", "openai/gpt-4o-mini", new_blocks=[new_block("org", "Org: Letta")]).pending
    actor = store.get_agent("agent1").actor()
    assert store.memory_insert("org", "agent line", actor=actor).pending
    git(ws_path, "gc", "--prune=now")
    lock.unlink()
    subprocess.run([MEMSTORE, "status"], cwd=ws_path, capture_output=True, text=True)
    assert store.memory_insert("org", "second line", actor=actor).version
    assert store.get_block("org").value == "Org: Letta\nagent line\nsecond line"
    assert store.commits.pending_files() == []
    assert_clean_repo(ws_path)


def test_blame_of_an_unmerged_block_is_of_the_block_as_last_committed(store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    _stash_pop_conflict(store, ws_path, actor)
    assert [(line.text, line.author_name) for line in store.block_blame("org")] == [("Org: Letta Inc", "agent1")]


def _race_then_abort(store: Store, ws_path: Path, actor: object) -> str:
    """`git rebase up` reads the branch, an agent commits (a `pre-rebase` hook stands for that moment: git has read
    the branch, nothing else), the rebase's last step fails ("cannot lock ref"), the person runs `git rebase
    --abort`, which returns the branch to before the agent's commit. That commit."""
    store.memory_insert("org", "before", actor=actor)  # type: ignore[arg-type]
    git(ws_path, "branch", "up", "HEAD~1")
    git(ws_path, "switch", "-q", "up")
    (ws_path / "upstream.txt").write_text("upstream\n")
    git(ws_path, "add", "upstream.txt")
    git(ws_path, "commit", "-qm", "upstream work")
    git(ws_path, "switch", "-q", "main")
    out = ws_path.parent / "made.txt"
    hook = ws_path / ".git/hooks/pre-rebase"
    hook.write_text("#!/bin/sh\nunset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE\n"
                    f"PYTHONPATH={os.pathsep.join(sys.path)} {sys.executable} -c '"
                    f"from memstore import Store; s = Store.open(\"{ws_path}\"); a = s.get_agent(\"agent1\").actor(); "
                    f"open(\"{out}\", \"w\").write(s.memory_insert(\"org\", \"AGENT LINE\", actor=a).version)'\n")
    hook.chmod(0o755)
    rebase = subprocess.run(["git", "rebase", "up"], cwd=ws_path, capture_output=True, text=True)
    hook.unlink()
    assert rebase.returncode != 0 and "cannot lock ref" in rebase.stderr, rebase.stderr
    return out.read_text()


def _fake_abort(ws_path: Path, to: str) -> None:
    """The branch goes back to `to` with an abort's reflog line, and the files follow (as `git rebase --abort`)."""
    git(ws_path, "update-ref", "-m", "rebase (abort): returning to refs/heads/main", "refs/heads/main", to,
        git(ws_path, "rev-parse", "HEAD").strip())
    git(ws_path, "reset", "-q", "--hard")


@pytest.mark.parametrize("by", ["the next operation", "a running watcher", "the same store's next edit",
                                "the person's rebase again"])
def test_an_agents_commit_a_rebase_abort_takes_off_the_branch_is_made_again(store: Store, ws_path: Path,
                                                                            by: str) -> None:
    """The agent's edit, whose result named the commit the abort took off the branch, is made again on top under
    the agent, once: by the next operation of any kind (a store kept open included, before its own edit), by a
    running watcher within a moment, and also after the person ran the rebase again first."""
    store, actor = agent_store(store)
    made = _race_then_abort(store, ws_path, actor)
    restored = f"Restore memory_insert org (a git rebase --abort took commit {made[:12]} off the branch)"
    if by == "a running watcher":
        from memstore.watcher import Watcher

        with Watcher(store) as watcher:
            assert watcher.ready.wait(15)
            git(ws_path, "rebase", "--abort")
            deadline = time.monotonic() + 15
            while restored not in git(ws_path, "log", "--format=%s") and time.monotonic() < deadline:
                time.sleep(0.05)
    else:
        git(ws_path, "rebase", "--abort")
        assert subprocess.run(["git", "merge-base", "--is-ancestor", made, "HEAD"], cwd=ws_path).returncode != 0
        if by == "the same store's next edit":
            store.memory_insert("org", "NEXT", actor=actor)
        elif by == "the person's rebase again":
            git(ws_path, "rebase", "-q", "up")
        Store.open(ws_path)
    value = store.get_block("org").value
    assert value.startswith("Org: Letta\nbefore\nAGENT LINE"), value
    log = git(ws_path, "log", "--format=%an|%s").splitlines()
    assert log.count(f"agent1|{restored}") == 1, log
    Store.open(ws_path)  # once only
    assert git(ws_path, "log", "--format=%s").count(restored) == 1
    assert_clean_repo(ws_path)


def test_memstore_commits_a_rebase_abort_takes_off_are_made_again_in_order_on_top_of_waiting_edits(
        store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    first = git(ws_path, "rev-parse", "HEAD").strip()
    store.memory_insert("org", "ONE", actor=actor)
    store.memory_insert("org", "TWO", actor=actor)
    _fake_abort(ws_path, first)
    lock = _git_holds_index(ws_path)  # the first restore must wait: the second goes on top of it
    Store.open(ws_path)
    lock.unlink()
    assert Store.open(ws_path).get_block("org").value == "Org: Letta\nONE\nTWO"
    assert git(ws_path, "log", "-2", "--format=%an").split() == ["agent1", "agent1"]
    assert_clean_repo(ws_path)


def test_a_several_file_commit_a_rebase_abort_takes_off_is_made_again_whole_or_not_at_all(
        store: Store, ws_path: Path) -> None:
    store, actor = agent_store(store)
    first = git(ws_path, "rev-parse", "HEAD").strip()
    block_id = store.get_block("org").id
    store.delete_block("org")  # one commit of blocks/org.md and agents/agent1.md
    _fake_abort(ws_path, first)
    agent_file = ws_path / "agents/agent1.md"
    agent_file.write_text(agent_file.read_text().replace("description: null", "description: person's"))
    Store.open(ws_path)
    assert (ws_path / "blocks/org.md").exists() and block_id in agent_file.read_text()  # neither part alone
    assert "Restore" not in git(ws_path, "log", "-1", "--format=%s")


def test_a_rebase_abort_that_drops_a_persons_commit_is_left_as_it_is(store: Store, ws_path: Path) -> None:
    """Only memstore's own commits are made again: a person's `git reset` or an abort over their own work stands."""
    store, actor = agent_store(store)
    store.memory_insert("org", "agent line", actor=actor)
    before = git(ws_path, "rev-parse", "HEAD").strip()
    path = ws_path / "blocks/org.md"
    path.write_text(path.read_text() + "person line\n")
    git(ws_path, "commit", "-qam", "person's work")
    after = git(ws_path, "rev-parse", "HEAD").strip()
    git(ws_path, "update-ref", "-m", "rebase (abort): returning to refs/heads/main", "refs/heads/main", before, after)
    git(ws_path, "reset", "-q", "--hard")
    Store.open(ws_path)
    assert git(ws_path, "rev-parse", "HEAD").strip() == before
    assert "person line" not in path.read_text()


def test_a_save_landing_while_the_file_is_looked_at_before_the_rename_is_kept(
        store: Store, ws_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The look before the rename reads and hashes the file; a save renamed in while it does is seen too (the file
    is stat'ed before and after), so only the moment between the last stat and the rename is left."""
    from memstore import commits

    store, actor = agent_store(store)
    path = ws_path / "blocks/org.md"
    original, saves = commits.Committer._disk_blob, []

    def disk_blob(self: commits.Committer, rel: str) -> str | None:
        blob = original(self, rel)
        if rel == "blocks/org.md" and not saves and sys._getframe(1).f_code.co_name == "unchanged":
            tmp = path.with_name(".org.md.swp")  # the editor's save, right after the file was read and hashed
            tmp.write_text(path.read_text() + "PERSON LINE\n")
            os.replace(tmp, path)
            saves.append(1)
        return blob

    monkeypatch.setattr(commits.Committer, "_disk_blob", disk_blob)
    assert store.memory_insert("org", "AGENT LINE", actor=actor).version
    assert saves and store.get_block("org").value == "Org: Letta\nPERSON LINE\nAGENT LINE"
    assert_clean_repo(ws_path)
