"""A writer killed with SIGKILL at any moment leaves nothing half-done that hurts the next one."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memstore import Store, fsutil

from .conftest import assert_clean_repo, git

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 12


def test_killing_writers_loses_no_committed_edit_and_blocks_no_one(store: Store) -> None:
    block = store.create_block("crash", "", limit=200_000)
    agent = store.create_agent("victim", "openai/gpt-4o-mini", block_ids=[block.id])
    rng = random.Random(1234)
    confirmed: list[str] = []
    for rnd in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.workers", "forever", str(store.ws.root), "victim", "crash", f"r{rnd}"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()  # it is writing now
        assert first == "0"
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        confirmed += [f"r{rnd}-{line.strip()}" for line in [first, *proc.stdout.read().splitlines()]]
        proc.stdout.close()
        if fsutil.PORTABLE:  # without hard links, a writer killed between creating a git lock and marking
            for lock in (".git/index.lock", ".git/HEAD.lock", ".git/refs/heads/main.lock"):  # leaves it empty, as git
                path = store.ws.root / lock  # would: a person removes that; marked ones are memstore's to remove
                if path.exists() and not path.read_bytes():
                    path.unlink()
        # the next writer is not blocked, and sees everything confirmed so far
        store.memory_insert("crash", f"after-{rnd}", actor=agent.actor())
        value = store.get_block("crash").value.split("\n")
        assert set(confirmed) <= set(value)
        assert len(value) == len(set(value))

    assert_clean_repo(store.ws.root)
    authors = set(git(store.ws.root, "log", "--format=%an", "--", "blocks/crash.md").split("\n")) - {""}
    assert authors <= {"victim", "Pat Person"}  # never a killed agent's write passed off as a hand edit
    assert "Hand edit" not in git(store.ws.root, "log", "--format=%s")


@pytest.mark.parametrize("where", ["second-write", "before-commit"])
@pytest.mark.parametrize("op", ["delete_block", "create_agent"])
def test_a_writer_killed_amid_an_edit_of_several_files_leaves_it_whole_in_one_commit(
        store: Store, op: str, where: str) -> None:
    """Killed after writing one of an edit's files (or all, before the commit), the edit is finished by
    the next operation: every file written, and one commit, as if the writer had lived."""
    org = store.create_block("org", "Org")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[org.id])
    before = int(git(store.ws.root, "rev-list", "--count", "HEAD"))
    _die_amid(store, op, where)
    reopened = Store.open(store.ws.root)
    assert reopened.commits.pending_files() == []
    assert int(git(store.ws.root, "rev-list", "--count", "HEAD")) == before + 1
    changed = sorted(git(store.ws.root, "show", "--name-status", "--format=", "HEAD").splitlines())
    if op == "delete_block":
        assert changed == ["D\tblocks/org.md", "M\tagents/agent1.md"]
        assert reopened.get_agent("agent1").blocks == [] and not (store.ws.root / "blocks/org.md").exists()
    else:
        assert changed == ["A\tagents/agent2.md", "A\tblocks/persona.md"]
        assert [b.label for b in reopened.agent_blocks("agent2")] == ["persona"]
    assert git(store.ws.root, "log", "-1", "--format=%s").strip().startswith(op)
    assert_clean_repo(store.ws.root)


@pytest.mark.parametrize("how", [("stash", "-u"), ("reset", "--hard"), ("checkout", "--", ".")])
def test_a_killed_writers_edit_of_several_files_that_the_person_takes_out_with_git_stays_out(
        store: Store, how: tuple[str, ...]) -> None:
    """After the kill, the person puts the files back with git: the half-made edit is dropped, never
    finished over the person's action (as for an edit of one file)."""
    org = store.create_block("org", "Org")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[org.id])
    head = git(store.ws.root, "rev-parse", "HEAD")
    _die_amid(store, "delete_block", "second-write")
    git(store.ws.root, *how)
    reopened = Store.open(store.ws.root)
    assert git(store.ws.root, "rev-parse", "HEAD") == head
    assert (store.ws.root / "blocks/org.md").exists() and reopened.get_agent("agent1").blocks == [org.id]
    assert reopened.commits.pending_files() == []


def _die_amid(store: Store, op: str, where: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.workers", "die_amid", str(store.ws.root), op, where],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
