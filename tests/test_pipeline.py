"""A writer lets go of the file lock before its commit: people, git and crashes in that window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from memstore import MemstoreError, Store, handedits
from memstore.groupcommit import Edit
from memstore.locks import CONTENT_AT, FairLock

from .conftest import assert_clean_repo, git

ROOT = Path(__file__).resolve().parent.parent
REL = "blocks/b.md"


def _setup(store: Store) -> tuple:
    block = store.create_block("b", "start")
    a1 = store.create_agent("a1", "m/x", block_ids=[block.id]).actor()
    a2 = store.create_agent("a2", "m/x", block_ids=[block.id]).actor()
    return a1, a2


def _pending_insert(store: Store, actor, text: str) -> tuple[FairLock, threading.Thread]:
    """Start an insert whose commit waits behind a held repository lock (its file is written)."""
    blocker = FairLock(store.ws.locks_dir / "repo.lock")
    blocker.acquire()
    thread = threading.Thread(target=lambda: store.memory_insert("b", text, actor=actor))
    thread.start()
    deadline = time.monotonic() + 20
    while text.encode() not in (store.ws.root / REL).read_bytes() or blocker.last_ticket() <= blocker.ticket:
        assert time.monotonic() < deadline, "the writer never got in line"
        time.sleep(0.005)
    time.sleep(0.1)  # let it let go of the file lock
    return blocker, thread


def _in_thread(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _history(ws: Path) -> list[str]:
    """'author: subject' of each commit of the block, oldest first."""
    return git(ws, "log", "--reverse", "--format=%an: %s", "--", REL).strip().split("\n")


def _die(store: Store, where: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tests.workers", "die", str(store.ws.root), "a1", "b",
                             "crashfact", where], cwd=ROOT, check=False)
    assert result.returncode == 9


def test_a_person_restoring_the_file_before_the_commit_is_a_hand_edit_after_it(store: Store) -> None:
    a1, _ = _setup(store)
    blocker, writer = _pending_insert(store, a1, "fact1")
    git(store.ws.root, "checkout", "--", REL)  # the person puts back the committed version
    picker = _in_thread(lambda: handedits.pick_up(store, REL))
    blocker.release()
    writer.join(30)
    picker.join(30)
    assert _history(store.ws.root)[-2:] == ["a1: memory_insert b", f"Pat Person: Hand edit {REL}"]
    assert store.get_block("b").value == "start"
    assert_clean_repo(store.ws.root)


def test_a_persons_git_commit_meanwhile_is_not_undone(store: Store) -> None:
    a1, _ = _setup(store)
    blocker, writer = _pending_insert(store, a1, "fact1")
    path = store.ws.root / REL
    path.write_bytes(path.read_bytes() + b"pat line\n")
    git(store.ws.root, "commit", "-qam", "pat's own commit")
    blocker.release()
    writer.join(30)
    head = git(store.ws.root, "show", f"HEAD:{REL}")
    assert "fact1" in head and "pat line" in head  # the person's commit took the agent's line with it
    assert_clean_repo(store.ws.root)


def test_an_edit_whose_writer_died_before_asking_for_a_commit_is_committed_by_the_watcher(store: Store) -> None:
    _setup(store)
    _die(store, "before-commit")
    assert "crashfact" in store.get_block("b").value
    result = handedits.pick_up(store, REL)
    assert result.action == "recovered" and result.version
    assert _history(store.ws.root)[-1] == "a1: memory_insert b"  # by its agent, not passed off as a hand edit
    assert git(store.ws.root, "rev-parse", "HEAD").strip() == result.version
    assert_clean_repo(store.ws.root)


def test_an_edit_whose_writer_died_before_writing_never_happened(store: Store) -> None:
    _, a2 = _setup(store)
    _die(store, "before-write")
    path = store.ws.root / REL
    path.write_bytes(path.read_bytes().replace(b"start", b"start, edited by Pat"))
    store.memory_insert("b", "fact2", actor=a2)
    assert "crashfact" not in git(store.ws.root, "log", "-p", "--", REL)
    assert _history(store.ws.root)[-2:] == [f"Pat Person: Hand edit {REL}", "a2: memory_insert b"]
    assert_clean_repo(store.ws.root)


def test_a_torn_state_record_reads_as_the_previous_one(tmp_path: Path) -> None:
    lock = FairLock(tmp_path / "x.lock")
    with lock:
        lock.write_state(b"first record")
        lock.write_state(b"second record")
    queue = tmp_path / "x.lock.queue"
    raw = bytearray(queue.read_bytes())
    raw[raw.index(b"second record")] ^= 0xFF  # as if the writer died writing it
    queue.write_bytes(bytes(raw))
    with lock:
        assert lock.read_state() == b"first record"
        lock.write_state(b"third record")
    with lock:
        assert lock.read_state() == b"third record"


def test_the_watcher_leaves_a_waiting_edit_to_its_live_writer(store: Store) -> None:
    a1, a2 = _setup(store)
    blocker, writer = _pending_insert(store, a1, "fact1")
    assert handedits.pick_up(store, REL).action == "unchanged"  # no waiting on the commit, file lock held
    second = _in_thread(lambda: store.memory_insert("b", "fact2", actor=a2))
    deadline = time.monotonic() + 20
    while b"fact2" not in (store.ws.root / REL).read_bytes():  # the next writer is not held up
        assert time.monotonic() < deadline
        time.sleep(0.01)
    blocker.release()
    writer.join(30)
    second.join(30)
    assert _history(store.ws.root)[-2:] == ["a1: memory_insert b", "a2: memory_insert b"]
    assert_clean_repo(store.ws.root)


def test_after_a_git_reset_the_file_is_a_hand_edit_not_forgotten(store: Store) -> None:
    a1, _ = _setup(store)
    store.memory_insert("b", "fact1", actor=a1)
    git(store.ws.root, "reset", "-q", "--mixed", "HEAD~1")  # the branch forgets the commit, the file keeps it
    result = store.memory_insert("b", "fact2", actor=a1)
    assert _history(store.ws.root)[-2:] == [f"Pat Person: Hand edit {REL}", "a1: memory_insert b"]
    assert result.version == git(store.ws.root, "rev-parse", "HEAD").strip()
    assert_clean_repo(store.ws.root)


def test_a_commit_that_cannot_be_made_now_is_made_by_the_next_edit(store: Store) -> None:
    """A git command holding the branch's lock too long: the edit is kept and committed later."""
    a1, a2 = _setup(store)
    ref_lock = store.ws.git.common_dir / "refs/heads/main.lock"
    ref_lock.write_text("held by a slow git command\n")
    result = store.memory_insert("b", "fact1", actor=a1)  # not an error: the edit happened
    assert "fact1" in result.block.value and "fact1" in store.get_block("b").value
    assert ref_lock.exists()  # memstore never removes a lock a live command holds
    ref_lock.unlink()
    store.memory_insert("b", "fact2", actor=a2)
    assert _history(store.ws.root)[-2:] == ["a1: memory_insert b", "a2: memory_insert b"]
    assert_clean_repo(store.ws.root)


def test_a_file_changed_in_place_before_the_commit_keeps_the_agents_edit_and_authorship(store: Store) -> None:
    """An editor that writes in place (not by a rename) while an edit waits for its commit."""
    a1, a2 = _setup(store)
    blocker, thread = _pending_insert(store, a1, "agent text")
    with open(store.ws.root / REL, "a") as f:
        f.write("person text\n")
    blocker.release()
    thread.join()
    store.memory_insert("b", "next", actor=a2)
    assert _history(store.ws.root)[-3:] == ["a1: memory_insert b", "Pat Person: Hand edit blocks/b.md",
                                            "a2: memory_insert b"]
    assert git(store.ws.root, "show", f"HEAD~2:{REL}").endswith("start\nagent text\n")
    assert_clean_repo(store.ws.root)


def test_without_hard_links_replaced_files_are_freed_at_once(store: Store, monkeypatch) -> None:
    a1, _ = _setup(store)

    def no_links(src, dst) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)
    result = store.memory_insert("b", "no links here", actor=a1)
    assert git(store.ws.root, "show", f"{result.version}:{REL}").endswith("no links here\n")
    assert list(store.ws.trash_dir.iterdir()) == []
    assert_clean_repo(store.ws.root)


def test_contents_of_many_waiting_edits_are_each_committed_exactly(store: Store) -> None:
    """Edits waiting for their commits keep their contents side by side in the file's lock."""
    a1, a2 = _setup(store)
    ref_lock = store.ws.git.common_dir / "refs/heads/main.lock"
    ref_lock.write_text("held by a slow git command\n")
    for i in range(5):  # each edit is kept, waiting, its content beside the others'
        store.memory_insert("b", f"fact{i} " + "x" * (i * 300), actor=a1 if i % 2 else a2)
    ref_lock.unlink()
    store.memory_insert("b", "last", actor=a1)
    log = git(store.ws.root, "log", "--reverse", "--format=%H", "--", REL).split()[-6:]
    for i, commit in enumerate(log[:5]):
        assert git(store.ws.root, "show", f"{commit}:{REL}").endswith(f"fact{i} {'x' * (i * 300)}\n")
    assert_clean_repo(store.ws.root)


def test_an_edit_whose_kept_content_is_gone_is_never_committed_without_its_blob(store: Store) -> None:
    _setup(store)
    _die(store, "before-commit")  # the edit is in the file and its content in the lock; no commit asked for
    queue = store.ws.locks_dir / "blocks__b.md.lock.queue"
    with open(queue, "r+b") as f:  # the kept content damaged (a bug, a disk error)
        f.seek(CONTENT_AT)
        f.write(b"#" * 8)
    head = git(store.ws.root, "rev-parse", "HEAD")
    with pytest.raises(MemstoreError, match="no longer in its lock file"):
        store.commits.group.commit(_waiting(store))
    assert git(store.ws.root, "rev-parse", "HEAD") == head  # nothing published
    assert git(store.ws.root, "fsck", "--strict") == ""


def _waiting(store: Store) -> list[Edit]:
    """The edits of the block still waiting for their commits, as its lock records them."""
    with FairLock(store.ws.locks_dir / "blocks__b.md.lock") as lock:
        return [Edit.from_json(e) for e in json.loads(lock.read_state())["pending"]]


def test_files_made_ahead_for_the_next_commit_are_gone_when_the_process_ends(store: Store) -> None:
    _setup(store)
    code = ("import sys; from memstore import Store; s = Store.open(sys.argv[1]); "
            "s.memory_insert('b', 'from another process', actor=s.get_agent('a1').actor())")
    subprocess.run([sys.executable, "-c", code, str(store.ws.root)], cwd=ROOT, check=True)
    assert "from another process" in store.get_block("b").value
    assert sorted(p.name for p in store.ws.tmp_dir.iterdir() if not p.name.split(".")[1] == str(os.getpid())) == []
    assert list(store.ws.trash_dir.iterdir()) == []
    assert_clean_repo(store.ws.root)


def test_an_old_spare_of_a_live_process_is_not_swept_as_a_stale_temp_file(store: Store) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    live_spare = store.ws.tmp_dir / f"next.{os.getpid()}.0a1b2c"  # made ahead by a process still running
    dead_spare = store.ws.tmp_dir / f"next.{dead}.0a1b2c"  # left by one that is gone
    torn = store.ws.tmp_dir / "b.md.0a1b2c"  # a write a killed writer never renamed
    for path in (live_spare, dead_spare, torn):
        path.write_bytes(b"")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    Store.open(store.ws.root)  # sweeps temp files over an hour old
    assert sorted(p.name for p in store.ws.tmp_dir.iterdir()) == [live_spare.name]


def test_a_forked_child_leaves_the_parents_spare_files_alone(store: Store) -> None:
    a1, _ = _setup(store)
    pool = store.commits._spares
    pool.give_back(pool.take())  # the parent has a spare ready for its next write
    (spare,) = list(store.ws.tmp_dir.iterdir())
    pid = os.fork()
    if pid == 0:  # the child exits as a process does, running memstore's exit cleanup
        from memstore import commits
        commits._remove_spares()
        os._exit(0)
    os.waitpid(pid, 0)
    assert spare.exists()
    store.memory_insert("b", "after the fork", actor=a1)
    assert_clean_repo(store.ws.root)


def test_threads_that_come_and_go_reuse_spare_files(store: Store) -> None:
    _setup(store)
    for _ in range(3):
        threads = [threading.Thread(target=lambda: store.update_block("b", description="same")) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(list(store.ws.tmp_dir.iterdir())) <= 6


def test_kept_contents_do_not_pile_up_in_the_lock_file(store: Store) -> None:
    a1, _ = _setup(store)
    store.update_block("b", limit=1_000_000)
    big = "y" * 300_000
    ref_lock = store.ws.git.common_dir / "refs/heads/main.lock"
    ref_lock.write_text("held by a slow git command\n")
    for i in range(5):  # five contents wait side by side: 1.5 MB
        store.memory_rethink("b", f"{i} {big}", actor=a1)
    ref_lock.unlink()
    store.memory_rethink("b", "short again", actor=a1)  # commits the five, then this
    store.memory_rethink("b", "and shorter", actor=a1)  # none waits: the old space is given back
    queue = store.ws.locks_dir / "blocks__b.md.lock.queue"
    assert queue.stat().st_size < CONTENT_AT + 1_000
    log = git(store.ws.root, "log", "--format=%s", "--", REL).split("\n")
    assert log[:7] == ["memory_rethink b"] * 7
    assert_clean_repo(store.ws.root)


def test_a_repository_without_a_pack_folder_takes_edits(ws_path: Path) -> None:
    store = Store.init(ws_path)
    (ws_path / ".git/objects/pack").rmdir()
    store.create_block("b", "first")
    assert store.memory_insert("b", "second").version
    assert_clean_repo(ws_path)
