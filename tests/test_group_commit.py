"""Group commit: the repository-lock holder commits the edits queued behind it as a chain."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memstore import Store
from memstore.commits import _MAX_PENDING
from memstore.fastio import wait_for_removals
from memstore.gitobjects import GitStore, Ident
from memstore.groupcommit import Edit
from memstore.locks import SLOT_PAYLOAD, FairLock

from .conftest import assert_clean_repo, commit_count, git

ROOT = Path(__file__).resolve().parent.parent


def test_a_slot_answers_only_its_own_ticket(tmp_path: Path) -> None:
    lock = FairLock(tmp_path / "x.lock")
    with lock:
        assert lock.write_slot(7, b"hello")
        assert lock.read_slot(7) == b"hello"
        assert lock.read_slot(7 + 256) is None  # same slot, another ticket
        assert lock.read_slot(8) is None  # never written
        assert not lock.write_slot(9, b"x" * (SLOT_PAYLOAD + 1))  # too big: nothing written
        assert lock.read_slot(9) is None


def test_a_slot_holds_a_request_carrying_the_most_edits_a_file_can_have_waiting(store: Store) -> None:
    """A request that did not fit would be invisible to the holder, and batching would stop."""
    name = "x" * 64
    edit = Edit(f"blocks/{name}.md", 10**6, "a" * 40, "b" * 40, Ident(name, f"agent-{'f' * 36}@agents.memstore"),
                f"memory_rethink {name}\n\nMemstore-Op: memory_rethink\nMemstore-Block: block-{'f' * 36}\n"
                f"Memstore-Agent: agent-{'f' * 36}\n", 10**9, True, (10**9, 10**6, 10**18, 10**18))
    request = b"Q" + json.dumps([edit.to_json()] * _MAX_PENDING).encode()
    with FairLock(store.ws.locks_dir / "probe.lock") as lock:
        assert lock.write_slot(5, request)
        assert lock.read_slot(5) == request


def test_replaced_git_files_are_freed_after_the_commit(store: Store) -> None:
    store.create_block("b", "x")
    for i in range(3):
        store.memory_insert("b", f"line {i}")
    wait_for_removals()  # freed in the background
    assert list(store.ws.trash_dir.iterdir()) == []
    assert_clean_repo(store.ws.root)


def test_a_torn_slot_reads_as_empty(tmp_path: Path) -> None:
    lock = FairLock(tmp_path / "x.lock")
    with lock:
        lock.write_slot(3, b"request")
    queue = tmp_path / "x.lock.queue"
    raw = bytearray(queue.read_bytes())
    at = raw.index(b"request")
    raw[at] ^= 0xFF  # as if the payload were half-written
    queue.write_bytes(bytes(raw))
    with lock:
        assert lock.read_slot(3) is None


def test_a_waiter_whose_work_is_done_leaves_without_the_lock(tmp_path: Path) -> None:
    holder, waiter = FairLock(tmp_path / "x.lock"), FairLock(tmp_path / "x.lock")
    holder.acquire()
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(
        waiter.acquire(queued=lambda t: waiter.write_slot(t, b"Q"), done=lambda t: waiter.read_slot(t) == b"A")))
    thread.start()
    _wait_for_tickets(holder, holder.ticket + 1)
    deadline = time.monotonic() + 20
    while holder.read_slot(holder.ticket + 1) != b"Q":  # the waiter has posted its request
        assert time.monotonic() < deadline
        time.sleep(0.005)
    holder.write_slot(holder.ticket + 1, b"A")
    holder.release()
    thread.join(10)
    assert outcome == [False]
    with holder:  # nothing is left held
        pass


def _wait_for_tickets(lock: FairLock, ticket: int) -> None:
    deadline = time.monotonic() + 20
    while lock.last_ticket() < ticket:
        assert time.monotonic() < deadline, "the waiters never queued"
        time.sleep(0.005)


def test_queued_edits_are_committed_as_one_chain(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    agents = []
    for n in range(4):
        block = store.create_block(f"b{n}", f"start {n}")
        agents.append(store.create_agent(f"a{n}", "m/x", block_ids=[block.id]).actor())
    ref_updates: list[int] = []
    real_update = GitStore.update_ref

    def counting(self: GitStore, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        ref_updates.append(len(kwargs.get("steps") or [None]))
        real_update(self, *args, **kwargs)

    monkeypatch.setattr(GitStore, "update_ref", counting)
    blocker = FairLock(store.ws.locks_dir / "repo.lock")
    blocker.acquire()  # the writers queue up behind this holder
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(
        n, store.memory_insert(f"b{n}", f"fact {n}", actor=agents[n]).version)) for n in range(4)]
    for thread in threads:
        thread.start()
        _wait_for_tickets(blocker, blocker.ticket + len(results) + threads.index(thread) + 1)
    time.sleep(0.2)  # let the last one post its request
    blocker.release()
    for thread in threads:
        thread.join(30)

    assert ref_updates == [4]  # one ref update published all four commits
    log = git(store.ws.root, "log", "-4", "--format=%x1e%H %an", "--name-only").split("\x1e")[1:]
    commits = [[line for line in entry.split("\n") if line] for entry in log]
    assert [c[0].split(" ")[1] for c in commits] == ["a3", "a2", "a1", "a0"]  # queue order
    assert [c[1:] for c in commits] == [[f"blocks/b{n}.md"] for n in (3, 2, 1, 0)]  # one file each
    assert {results[n] for n in range(4)} == {c[0].split(" ")[0] for c in commits}  # each got its own id
    reflog = git(store.ws.root, "reflog", "-4", "--format=%H")
    assert reflog.split() == [c[0].split(" ")[0] for c in commits]  # a reflog line per commit
    for n in range(4):
        assert store.get_block(f"b{n}").value == f"start {n}\nfact {n}"
    assert_clean_repo(store.ws.root)


@pytest.mark.parametrize("shared", [False, True], ids=["own-blocks", "one-block"])
def test_killing_concurrent_writers_loses_nothing_committed(store: Store, shared: bool) -> None:
    """Leaders die mid-batch, waiters die in line, writers die after letting go of the file
    before their commit: the next edits finish everything, once each, by the right agent."""
    writers = 4
    for n in range(writers):
        if n == 0 or not shared:
            block = store.create_block(f"k{n}", "", limit=200_000)
        store.create_agent(f"v{n}", "m/x", block_ids=[block.id])
    rng = random.Random(99)
    confirmed: list[str] = []
    for rnd in range(6):
        procs = [subprocess.Popen([sys.executable, "-m", "tests.workers", "forever", str(store.ws.root), f"v{n}",
                                   "k0" if shared else f"k{n}", f"r{rnd}w{n}"], cwd=ROOT, stdout=subprocess.PIPE,
                                  text=True)
                 for n in range(writers)]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "0"
        time.sleep(rng.uniform(0, 0.05))
        for proc in rng.sample(procs, len(procs)):
            proc.send_signal(signal.SIGKILL)
            time.sleep(rng.uniform(0, 0.004))
        for n, proc in enumerate(procs):
            proc.wait(timeout=30)
            assert proc.stdout is not None
            confirmed += [f"r{rnd}w{n}-{line.strip()}" for line in ["0", *proc.stdout.read().splitlines()]]
            proc.stdout.close()
        for n in range(writers):
            actor = store.get_agent(f"v{n}").actor()
            store.memory_insert("k0" if shared else f"k{n}", f"after-{rnd}-{n}", actor=actor)
    labels = ["k0"] if shared else [f"k{n}" for n in range(writers)]
    values = [line for label in labels for line in store.get_block(label).value.split("\n")]
    assert set(confirmed) <= set(values)
    assert len(values) == len(set(values))
    assert_clean_repo(store.ws.root)
    # one commit per line that reached a file, by its agent; nothing passed off as a hand edit
    subjects = git(store.ws.root, "log", "--format=%an %s", "--", "blocks/").split("\n")
    inserts = [s for s in subjects if " memory_insert " in s]
    assert len(inserts) == len(values)
    assert "Hand edit" not in "\n".join(subjects)
    for line, author in _line_authors(store.ws.root).items():  # each line committed by its own writer
        writer = line.split("w")[1].split("-")[0] if line.startswith("r") else line.rsplit("-", 1)[1]
        assert author == f"v{writer}", (line, author)


def _line_authors(ws: Path) -> dict[str, str]:
    """Each line added to a block, and the author of the commit that added it."""
    out = git(ws, "log", "--format=\x1e%an", "-p", "--", "blocks/")
    authors = {}
    for chunk in out.split("\x1e")[1:]:
        author, _, patch = chunk.partition("\n")
        for added in (ln[1:] for ln in patch.splitlines() if ln.startswith("+") and not ln.startswith("+++")):
            if re.fullmatch(r"r\d+w\d+-\d+|after-\d+-\d+", added):
                authors[added] = author
    return authors


def test_an_edit_carried_twice_is_committed_once(store: Store) -> None:
    """A pending edit may reach a holder in its writer's request and in a later writer's: one commit."""
    store.create_block("b", "value")
    rel = "blocks/b.md"
    data = b"---\nid: x\n---\nnew value\n"
    (store.ws.root / rel).write_bytes(data)
    blob = store.ws.git.write_object(b"blob", data)
    head = store.commits.head_blob(rel)
    edit = Edit(rel, 1000, head, blob, Ident("late", "late@agents.memstore"), "memory_insert b\n")
    before = commit_count(store.ws.root)
    first = store.commits.group.commit([edit])
    assert first is not None and commit_count(store.ws.root) == before + 1
    assert store.commits.group.commit([edit]) is None  # its number is at or below the file's mark
    again = Edit(rel, 1001, blob, blob, Ident("late", "late@agents.memstore"), "memory_insert b\n")
    assert store.commits.group.commit([again]) is None  # the branch has that content already
    assert commit_count(store.ws.root) == before + 1
    assert_clean_repo(store.ws.root)
