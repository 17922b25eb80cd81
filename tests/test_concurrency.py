"""Many real OS processes writing one workspace: nothing lost, one commit per edit, clean repo."""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memstore import Store

from .conftest import assert_clean_repo, git

ROOT = Path(__file__).resolve().parent.parent
WRITERS, EDITS = 8, 100
OTHER_WRITERS, OTHER_EDITS = 2, 50


def _worker(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.workers", *args], cwd=ROOT, text=True, **kwargs)


def _added_lines_by_author(ws: Path) -> list[tuple[str, list[str]]]:
    """(author, lines added to blocks) for every commit, newest first."""
    out = git(ws, "log", "--format=\x1e%an", "-p", "--", "blocks/")
    commits = []
    for chunk in out.split("\x1e")[1:]:
        author, _, patch = chunk.partition("\n")
        added = [line[1:] for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]
        commits.append((author, added))
    return commits


def test_parallel_inserts_from_many_processes_are_all_kept(store: Store, tmp_path: Path) -> None:
    shared = store.create_block("shared", "", limit=100_000)
    for n in range(WRITERS):
        store.create_agent(f"ag{n}", "openai/gpt-4o-mini", block_ids=[shared.id])
    for n in range(OTHER_WRITERS):
        other = store.create_block(f"other{n}", "", limit=100_000)
        store.create_agent(f"solo{n}", "openai/gpt-4o-mini", block_ids=[other.id])
    go = tmp_path / "go"
    ws = str(store.ws.root)
    procs = [_worker("insert", ws, f"ag{n}", "shared", str(EDITS), f"p{n}", str(go)) for n in range(WRITERS)]
    procs += [_worker("insert", ws, f"solo{n}", f"other{n}", str(OTHER_EDITS), f"o{n}", str(go))
              for n in range(OTHER_WRITERS)]
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=300) == 0

    lines = store.get_block("shared").value.split("\n")
    expected = {f"p{n}-{i}" for n in range(WRITERS) for i in range(EDITS)}
    assert sorted(lines) == sorted(expected)  # every line present exactly once
    for n in range(OTHER_WRITERS):
        assert store.get_block(f"other{n}").value.split("\n") == [f"o{n}-{i}" for i in range(OTHER_EDITS)]

    edits = [(a, added) for a, added in _added_lines_by_author(store.ws.root) if a.startswith(("ag", "solo"))]
    assert len(edits) == WRITERS * EDITS + OTHER_WRITERS * OTHER_EDITS  # one commit per edit
    for author, added in edits:
        assert len(added) == 1
        match = re.fullmatch(r"([po])(\d+)-\d+", added[0])
        assert match, added
        assert author == ("ag" if match[1] == "p" else "solo") + match[2]  # the right author
    files_per_commit = git(store.ws.root, "log", "--format=%x1e", "--name-only", "-n", "900").split("\x1e")[1:]
    assert all(len(chunk.split()) == 1 for chunk in files_per_commit)
    assert_clean_repo(store.ws.root)


def test_racing_replaces_of_the_same_text_have_exactly_one_winner(store: Store) -> None:
    race = store.create_block("race", "token-0")
    for name in ("alice", "bob"):
        store.create_agent(name, "openai/gpt-4o-mini", block_ids=[race.id])
    ws = str(store.ws.root)
    procs = [_worker("serve", ws, name, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for name in ("alice", "bob")]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for rnd in range(10):
            for proc, name in zip(procs, ("alice", "bob")):
                proc.stdin.write(f"replace race token-{rnd} {name}-{rnd}\n")
            for proc in procs:
                proc.stdin.flush()
            answers = sorted(proc.stdout.readline().strip() for proc in procs)
            assert answers[1] == "ok", answers
            assert answers[0] == (
                f"error No replacement was performed, old_str `token-{rnd}` did not appear verbatim "
                "in memory block with label `race`."
            )
            value = store.get_block("race").value
            assert value in (f"alice-{rnd}", f"bob-{rnd}")
            store.memory_rethink("race", f"token-{rnd + 1}")
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait(timeout=30)
    assert_clean_repo(store.ws.root)


def _insert_in_child(store: Store) -> None:
    store.memory_insert("organization", "from a forked child")


def test_a_forked_child_can_write_with_its_parents_store(store: Store) -> None:
    store.create_block("organization", "Org")
    store.memory_insert("organization", "parent first")  # the parent has used its locks
    child = multiprocessing.get_context("fork").Process(target=_insert_in_child, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert store.get_block("organization").value == "Org\nparent first\nfrom a forked child"


def test_a_process_keeps_few_lock_files_open_however_many_blocks_it_edits(store: Store) -> None:
    from memstore.locks import Locks

    for n in range(Locks.KEEP_OPEN + 40):
        store.create_block(f"b{n}", "x")
    assert len(store.commits.locks._open) <= Locks.KEEP_OPEN
    assert store.memory_insert("b0", "still locks").version


def test_a_person_committing_with_git_meanwhile_neither_reverts_nor_loses_an_edit(store: Store, tmp_path: Path) -> None:
    """Agents write while a person runs `git add`, `git commit` and `git status` in the same repository."""
    shared = store.create_block("shared", "", limit=100_000)
    for n in range(3):
        store.create_agent(f"ag{n}", "openai/gpt-4o-mini", block_ids=[shared.id])
    ws, go = store.ws.root, tmp_path / "go"
    procs = [_worker("insert", str(ws), f"ag{n}", "shared", "40", f"p{n}", str(go)) for n in range(3)]
    go.touch()
    (ws / "notes").mkdir()
    person = 0
    while any(proc.poll() is None for proc in procs) or person < 10:
        (ws / "notes" / f"{person}.txt").write_text(f"note {person}\n")
        for args in (["add", "notes"], ["commit", "-qm", f"person {person}"], ["status", "--porcelain"]):
            subprocess.run(["git", *args], cwd=ws, capture_output=True, check=False)  # a lock may be busy
        person += 1
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    store = Store.open(ws)  # commits anything a git command held up
    assert store.commits.pending_files() == []
    expected = {f"p{n}-{i}" for n in range(3) for i in range(40)}
    assert sorted(store.get_block("shared").value.split("\n")) == sorted(expected)
    # git's own race: a `git commit` that read the index just before an agent's commit writes that stale
    # index back as it fails; if the person's next commit comes before memstore looks (no watcher here,
    # and the agents are done), it takes the agent's line out. The file keeps it, and memstore's next
    # operation commits it back as a restore by that agent: every line ends up the agent's (git blame).
    log = git(ws, "log", "--reverse", "--format=\x1e%an\x1f%s", "-p", "--", "blocks/")
    taken_out: set[str] = set()
    for chunk in log.split("\x1e")[1:]:
        head, _, patch = chunk.partition("\n")
        author, subject = head.split("\x1f")
        removed = [line[1:] for line in patch.splitlines() if line.startswith("-") and not line.startswith("---")]
        added = [line[1:] for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]
        if subject.startswith("person "):
            assert not added and removed, (subject, patch)
            taken_out |= set(removed)
            continue
        assert removed in ([], [""]), (f"a commit by {author} took lines out: {removed}",
                                       git(ws, "log", "--format=%h %an %s", "--stat", "-n", "30"))
        if added and added[0].startswith("p"):
            assert all(author == f"ag{line[1]}" for line in added), (
                author, subject, added, patch, git(ws, "log", "--format=%h %an %s", "--stat", "-n", "40"))
            if subject.startswith("Restore "):
                assert set(added) <= taken_out, (added, taken_out)
                taken_out -= set(added)
            else:
                assert len(added) == 1, (author, subject, added, patch,
                                         git(ws, "log", "--format=%h %an %s", "--stat", "-n", "40"))
    assert not taken_out, f"taken out by a person's commit and never restored: {taken_out}"
    assert "notes/0.txt" in git(ws, "ls-files")
    assert git(ws, "diff", "--cached", "--name-only") == ""
    assert_clean_repo(ws)


_HOLDER = """
import os, sys
from filelock import lock_descriptor
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
lock_descriptor(fd, blocking=False) or sys.exit(3)
print("held", flush=True)
sys.stdin.readline()  # held until the test says go
"""


def _hold_in_another_process(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_wait_that_times_out_says_so_and_lets_the_lock_go_when_it_comes(tmp_path: Path) -> None:
    """A wait given up at its timeout is a clear error; when the lock later frees, this process
    neither keeps it nor loses the use of it, though it opened and closed other locks meanwhile."""
    from memstore.errors import LockTimeoutError
    from memstore.locks import Locks

    locks = Locks(tmp_path)
    locks.KEEP_OPEN = 1  # every other lock taken below closes the unused ones
    holder = _hold_in_another_process(tmp_path / "blocks__org.md.lock")
    try:
        with pytest.raises(LockTimeoutError, match=r"Timed out after 0\.3 s waiting for the lock of blocks/org\.md "
                                                   r"\(.*blocks__org\.md\.lock\): another memstore process holds it"):
            with locks.hold("blocks__org.md.lock", "blocks/org.md", timeout=0.3):
                pass
        for other in ("a.lock", "b.lock", "c.lock"):
            with locks.hold(other, other):
                pass
    finally:
        holder.communicate("go\n", timeout=30)
    deadline = time.monotonic() + 30
    while _probe(tmp_path / "blocks__org.md.lock") != 0:  # the given-up wait took the lock and let it go
        assert time.monotonic() < deadline, "the wait given up kept the lock"
        time.sleep(0.05)
    with locks.hold("blocks__org.md.lock", "blocks/org.md", timeout=30):  # and this process can take it again
        assert _probe(tmp_path / "blocks__org.md.lock") == 3


def _probe(path: Path) -> int:
    """0 if another process can take the lock at `path` now, 3 if it is held."""
    return subprocess.run([sys.executable, "-c", _HOLDER, str(path)], input="", capture_output=True,
                          text=True, timeout=60, check=False).returncode


def test_a_waiting_thread_gets_the_lock_when_another_process_lets_it_go(tmp_path: Path) -> None:
    from memstore.locks import Locks

    locks = Locks(tmp_path)
    holder = _hold_in_another_process(tmp_path / "repo.lock")
    got: list[str] = []

    def wait() -> None:
        with locks.hold("repo.lock", "the repository", timeout=60):
            got.append("held")

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not got  # waits while the other process holds it
    holder.communicate("go\n", timeout=30)
    waiter.join(60)
    assert got == ["held"]


def test_a_thread_of_the_same_process_holding_the_lock_times_out_the_other(tmp_path: Path) -> None:
    from memstore.errors import LockTimeoutError
    from memstore.locks import Locks

    locks = Locks(tmp_path)
    with locks.hold("repo.lock", "the repository"):
        failed: list[BaseException] = []

        def wait() -> None:
            try:
                with locks.hold("repo.lock", "the repository", timeout=0.2):
                    pass
            except LockTimeoutError as exc:
                failed.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(60)
        assert len(failed) == 1 and "Timed out after 0.2 s" in str(failed[0])
    with locks.hold("repo.lock", "the repository", timeout=5):
        pass


def test_a_lock_file_removed_while_a_process_has_it_open_is_opened_again(tmp_path: Path) -> None:
    """`git clean -fdX` or `rm -r .memstore/locks` between two long-lived writers: the one that had
    the old file open must lock the new one, or it excludes no one (edits were lost that way)."""
    import shutil

    from memstore.errors import LockTimeoutError
    from memstore.locks import Locks

    folder = tmp_path / "locks"
    folder.mkdir()
    old, new = Locks(folder), Locks(folder)
    with old.hold("blocks__a.md.lock", "blocks/a.md"):
        pass  # its file stays open in `old`
    shutil.rmtree(folder)
    with new.hold("blocks__a.md.lock", "blocks/a.md"):  # makes and locks the new file
        with pytest.raises(LockTimeoutError), old.hold("blocks__a.md.lock", "blocks/a.md", timeout=0.3):
            pass
    with old.hold("blocks__a.md.lock", "blocks/a.md"), pytest.raises(LockTimeoutError):
        with new.hold("blocks__a.md.lock", "blocks/a.md", timeout=0.3):
            pass
