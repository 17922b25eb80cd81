"""Hand edits picked up by a real watchdog observer, made the way editors make them."""

from __future__ import annotations

import os
import queue
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memstore import Actor, FileFormatError, Store
from memstore.handedits import PickUp, status
from memstore.watcher import Watcher

from .conftest import PERSON_EMAIL, PERSON_NAME, commit_count, git

MEMSTORE = str(Path(sys.executable).with_name("memstore"))
WAIT = 15.0  # seconds: the bound on every wait (events normally settle in well under one)


class Seen:
    """The watcher's pick-ups and change reports, waited on as events."""

    def __init__(self) -> None:
        self.picked: queue.Queue[PickUp] = queue.Queue()
        self.changes: queue.Queue[tuple[str, str]] = queue.Queue()

    def next_pick_up(self) -> PickUp:
        try:
            return self.picked.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"the watcher picked up nothing within {WAIT} s")

    def next_change(self) -> tuple[str, str]:
        try:
            return self.changes.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"the watcher reported no change within {WAIT} s")


@pytest.fixture
def seen(store: Store) -> Iterator[Seen]:
    events = Seen()
    with Watcher(store, on_change=lambda rel, kind: events.changes.put((rel, kind)),
                 on_pick_up=events.picked.put) as watcher:
        assert watcher.ready.wait(WAIT)
        yield events


def block_text(store: Store, name: str) -> str:
    return (store.ws.root / "blocks" / f"{name}.md").read_text()


def save_by_rename(path: Path, text: str) -> None:
    """How many editors save: write a temp file beside it, then rename it over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_like_vim(path: Path, text: str) -> None:
    """vim: probe with 4913, keep a swap file and a backup~, then write the file."""
    (path.parent / "4913").write_text("")
    (path.parent / "4913").unlink()
    swap = path.with_name(f".{path.name}.swp")
    swap.write_bytes(b"\0swap")
    backup = path.with_name(path.name + "~")
    backup.write_bytes(path.read_bytes())
    path.write_text(text)
    backup.unlink()
    swap.unlink()


def test_a_valid_hand_edit_becomes_one_commit_by_the_person(store: Store, seen: Seen, ws_path: Path) -> None:
    store.create_block("notes", "hello")
    assert seen.next_change() == ("blocks/notes.md", "created")
    before = commit_count(ws_path)
    path = ws_path / "blocks" / "notes.md"
    path.write_text(block_text(store, "notes").replace("hello", "hello, written in place"))

    picked = seen.next_pick_up()
    assert (picked.path, picked.action) == ("blocks/notes.md", "committed")
    assert commit_count(ws_path) == before + 1
    assert git(ws_path, "log", "-1", "--format=%an <%ae>|%s").strip() == (
        f"{PERSON_NAME} <{PERSON_EMAIL}>|Hand edit blocks/notes.md")
    assert store.get_block("notes").value == "hello, written in place"
    assert git(ws_path, "status", "--porcelain") == ""


def save_like_emacs(path: Path, text: str) -> None:
    """emacs: a `.#name` lock symlink while editing, a `name~` backup made by renaming, then a new file."""
    lock = path.with_name(f".#{path.name}")
    os.symlink("user@host.1234:1", lock)
    os.replace(path, path.with_name(path.name + "~"))
    path.write_text(text)
    lock.unlink()
    path.with_name(path.name + "~").unlink()


@pytest.mark.parametrize("save", [save_by_rename, save_like_vim, save_like_emacs])
def test_editor_saves_are_picked_up_once_and_their_side_files_ignored(
    save: object, store: Store, seen: Seen, ws_path: Path
) -> None:
    store.create_block("notes", "one")
    seen.next_change()
    before = commit_count(ws_path)
    save(ws_path / "blocks" / "notes.md", block_text(store, "notes").replace("one", "two"))  # type: ignore[operator]
    assert seen.next_pick_up().action == "committed"
    assert seen.picked.empty() and commit_count(ws_path) == before + 1
    assert sorted(p.name for p in (ws_path / "blocks").iterdir()) == [".gitkeep", "notes.md"]
    assert git(ws_path, "status", "--porcelain") == ""


@pytest.mark.parametrize("breakage", ["yaml", "id", "limit", "utf8"])
def test_an_invalid_hand_edit_is_left_as_written_reported_then_committed_once_fixed(
    breakage: str, store: Store, seen: Seen, ws_path: Path
) -> None:
    block = store.create_block("notes", "fine", limit=50)
    store.create_agent("reader", "openai/gpt-4o-mini", block_ids=[block.id])
    seen.next_change()
    path = ws_path / "blocks" / "notes.md"
    good = path.read_bytes()
    broken = {
        "yaml": good.replace(b"label: notes", b"label: [notes"),
        "id": good.replace(block.id.encode(), b"block-00000000-0000-0000-0000-000000000000"),
        "limit": good.replace(b"fine", b"x" * 60),
        "utf8": good.replace(b"fine", b"caf\xe9"),
    }[breakage]
    before = commit_count(ws_path)
    path.write_bytes(broken)

    picked = seen.next_pick_up()
    assert picked.action == "invalid" and picked.problem.startswith("blocks/notes.md")
    assert path.read_bytes() == broken and commit_count(ws_path) == before
    report = status(store)
    assert [p.path for p in report.invalid] == ["blocks/notes.md"] and report.uncommitted == []
    assert store.get_block("notes").value == "fine"  # readers get the last committed version
    assert "<value>\nfine\n</value>" in store.memory_context("reader")

    path.write_bytes(good.replace(b"fine", b"fixed"))
    assert seen.next_pick_up().action == "committed"
    assert commit_count(ws_path) == before + 1
    assert store.get_block("notes").value == "fixed" and status(store).invalid == []


def test_a_new_file_becomes_a_block_and_a_deleted_one_is_committed(store: Store, seen: Seen, ws_path: Path) -> None:
    kept = store.create_block("team", "us")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[kept.id])
    (ws_path / "blocks" / "ideas.md").write_text("Ship the watcher.\n")
    picked = seen.next_pick_up()
    assert (picked.path, picked.action) == ("blocks/ideas.md", "created")
    ideas = store.get_block("ideas")
    assert ideas.id.startswith("block-") and ideas.label == "ideas" and ideas.value == "Ship the watcher."
    log = git(ws_path, "log", "-2", "--format=%an|%s").splitlines()
    assert log == ["memstore|Add id to blocks/ideas.md", f"{PERSON_NAME}|Hand edit blocks/ideas.md"]

    (ws_path / "blocks" / "team.md").unlink()
    picked = seen.next_pick_up()
    assert picked.action == "deleted" and "agent1 still list" in (picked.notice or "")
    assert git(ws_path, "log", "-1", "--format=%an|%s").strip() == f"{PERSON_NAME}|Hand edit blocks/team.md: deleted"
    assert status(store).notices == [f"agent agent1 lists {kept.id}, which no longer exists"]


def test_memstores_own_writes_are_reported_but_not_committed_again(store: Store, seen: Seen, ws_path: Path) -> None:
    store.create_block("notes", "a")
    assert seen.next_change() == ("blocks/notes.md", "created")
    before = commit_count(ws_path)
    store.memory_insert("notes", "b")
    assert seen.next_change() == ("blocks/notes.md", "updated")
    assert commit_count(ws_path) == before + 1 and seen.picked.empty()


def test_a_hand_edit_waiting_at_start_is_picked_up(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "a")
    path = ws_path / "blocks" / "notes.md"
    path.write_text(path.read_text().replace("\na\n", "\nedited while nobody watched\n"))
    assert status(store).uncommitted == ["blocks/notes.md"]
    picked: queue.Queue[PickUp] = queue.Queue()
    with Watcher(store, on_pick_up=picked.put):
        assert picked.get(timeout=WAIT).action == "committed"
    assert store.get_block("notes").value == "edited while nobody watched"


def test_status_command_reports_invalid_files(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "a")
    (ws_path / "blocks" / "notes.md").write_text("---\nlabel: [x\n---\nbroken\n")
    done = subprocess.run([MEMSTORE, "status", "-w", str(ws_path)], capture_output=True, text=True, timeout=60,
                          check=True)
    assert "Invalid files" in done.stdout and "blocks/notes.md, line 3: invalid YAML" in done.stdout


def test_memstore_watch_commits_a_hand_edit(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "a")
    env = {k: os.environ[k] for k in ("HOME", "PATH", "GIT_CONFIG_GLOBAL") if k in os.environ}
    proc = subprocess.Popen([MEMSTORE, "watch", "-w", str(ws_path)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "watching" in _line(proc)
        path = ws_path / "blocks" / "notes.md"
        path.write_text(path.read_text().replace("\na\n", "\nb\n"))
        assert "blocks/notes.md: committed by hand" in _line(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT)
    assert git(ws_path, "log", "-1", "--format=%an").strip() == PERSON_NAME


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    with selectors.DefaultSelector() as waiting:  # not select(): a descriptor past 1023 is refused there
        waiting.register(proc.stderr, selectors.EVENT_READ)
        ready = waiting.select(WAIT)
    if not ready:
        proc.kill()
        pytest.fail(f"`memstore watch` printed nothing within {WAIT} s")
    return proc.stderr.readline()


def test_a_copied_block_file_is_refused_for_its_duplicate_id(store: Store, seen: Seen, ws_path: Path) -> None:
    store.create_block("notes", "a")
    seen.next_change()
    before = commit_count(ws_path)
    (ws_path / "blocks" / "copy.md").write_bytes((ws_path / "blocks" / "notes.md").read_bytes())
    picked = seen.next_pick_up()
    assert picked.action == "invalid" and "already belongs to blocks/notes.md" in (picked.problem or "")
    assert commit_count(ws_path) == before


@pytest.mark.parametrize("content", ["---\nlabel: a/b\n---\nvalue\n", "---\nlimit: 5\n---\nmuch too long\n"])
def test_an_invalid_new_file_without_an_id_is_not_committed(content: str, store: Store, seen: Seen,
                                                            ws_path: Path) -> None:
    before = commit_count(ws_path)
    (ws_path / "blocks" / "new.md").write_text(content)
    picked = seen.next_pick_up()
    assert picked.action == "invalid" and commit_count(ws_path) == before
    assert (ws_path / "blocks" / "new.md").read_text() == content


def test_an_agent_file_whose_name_differs_from_its_file_is_refused(store: Store, seen: Seen, ws_path: Path) -> None:
    store.create_agent("agent1", "openai/gpt-4o-mini")
    path = ws_path / "agents" / "agent1.md"
    before = commit_count(ws_path)
    path.write_text(path.read_text().replace("name: agent1", "name: agent9"))
    picked = seen.next_pick_up()
    assert picked.action == "invalid" and "differs from the file name" in (picked.problem or "")
    assert commit_count(ws_path) == before


def test_the_next_edit_refuses_a_changed_id_instead_of_committing_it(store: Store, ws_path: Path) -> None:
    block = store.create_block("notes", "a")
    path = ws_path / "blocks" / "notes.md"
    path.write_text(path.read_text().replace(block.id, "block-11111111-1111-1111-1111-111111111111"))
    before = commit_count(ws_path)
    with pytest.raises(FileFormatError, match="the id changed"):
        store.memory_insert(block.id, "more", actor=Actor.host("h"))
    assert commit_count(ws_path) == before


def test_a_save_with_a_pause_between_rename_and_write_is_not_a_deletion(store: Store, seen: Seen,
                                                                        ws_path: Path) -> None:
    store.create_block("notes", "one")
    seen.next_change()
    before = commit_count(ws_path)
    path = ws_path / "blocks" / "notes.md"
    text = path.read_text()
    os.replace(path, path.with_name("notes.md~"))
    time.sleep(0.4)  # an editor that is slow to write the new file (not waiting for a result)
    path.write_text(text.replace("one", "two"))
    picked = seen.next_pick_up()
    assert picked.action == "committed" and commit_count(ws_path) == before + 1
    assert "deleted" not in git(ws_path, "log", "-1", "--format=%s")


def test_the_watcher_outlives_a_failing_callback(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "a")
    picked: queue.Queue[PickUp] = queue.Queue()
    calls = []

    def flaky(result: PickUp) -> None:
        calls.append(result)
        if len(calls) == 1:
            raise RuntimeError("callback bug")
        picked.put(result)

    path = ws_path / "blocks" / "notes.md"
    with Watcher(store, on_pick_up=flaky):
        path.write_text(path.read_text().replace("\na\n", "\nb\n"))
        path.write_text(path.read_text())  # no change: just an event
        _wait_for(lambda: "callback bug" in (store.ws.read_state("watcher-error") or ""))  # `memstore status` shows it
        path.write_text(path.read_text().replace("\nb\n", "\nc\n"))
        assert picked.get(timeout=WAIT).action == "committed"
    assert store.ws.read_state("watcher-error") is None  # that file is handled fine again: the error is over


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_hand_edit_refused_during_a_merge_is_committed_once_the_merge_is(store: Store, ws_path: Path) -> None:
    """A hand edit saved while a merge is under way is refused, saying so, and committed as soon as the person
    commits the merge, without another save (it used to wait for the file's next change; the error stayed)."""
    store.create_block("notes", "a")
    git(ws_path, "switch", "-qc", "side")
    (ws_path / "side.txt").write_text("side\n")
    git(ws_path, "add", "side.txt")
    git(ws_path, "commit", "-qm", "side")
    git(ws_path, "switch", "-q", "main")
    store.update_block("notes", value="b")
    git(ws_path, "merge", "-q", "--no-ff", "--no-commit", "side")  # the person's merge, under way
    path = ws_path / "blocks" / "notes.md"
    with Watcher(store):
        path.write_text(path.read_text() + "by hand\n")
        _wait_for(lambda: "blocks/notes.md" in (store.ws.read_state("watcher-error") or ""))
        error = store.ws.read_state("watcher-error") or ""
        assert "a merge is in progress" in error, error
        git(ws_path, "commit", "-qm", "merge side")  # the person concludes the merge; notes.md is not touched
        _wait_for(lambda: git(ws_path, "log", "-1", "--format=%s").strip() == "Hand edit blocks/notes.md")
        _wait_for(lambda: store.ws.read_state("watcher-error") is None)
    assert git(ws_path, "log", "-1", "--format=%an").strip() == PERSON_NAME
    assert store.get_block("notes").value == "b\nby hand"
    assert status(store).watcher_error is None


def test_a_watcher_started_during_a_rebase_names_it_and_looks_again_once_it_ends(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "a")
    store.update_block("notes", value="b")
    stopped = subprocess.run(["git", "rebase", "--exec", "false", "HEAD~1"], cwd=ws_path, capture_output=True)
    assert stopped.returncode != 0 and (ws_path / ".git/rebase-merge").is_dir()  # HEAD detached while it runs
    with Watcher(store) as watcher:
        watcher.ready.wait(WAIT)
        error = store.ws.read_state("watcher-error") or ""
        assert "rebase is in progress" in error and "detached" not in error, error  # not advice that abandons it
        git(ws_path, "rebase", "--abort")
        _wait_for(lambda: store.ws.read_state("watcher-error") is None)
    shown = subprocess.run([str(Path(sys.executable).with_name("memstore")), "status"], cwd=ws_path,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "Clean" in shown.stdout, shown.stdout + shown.stderr


def test_a_hand_copy_never_takes_over_the_original_block(store: Store, ws_path: Path) -> None:
    original = store.create_block("persona", "I am careful.")
    store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[original.id])
    (ws_path / "blocks" / "persona_old.md").write_bytes((ws_path / "blocks" / "persona.md").read_bytes())
    fresh = Store.open(ws_path)
    assert fresh.get_block(original.id).name == "persona"
    assert [b.name for b in fresh.agent_blocks("agent1")] == ["persona"]
    fresh.memory_insert("persona", "still mine", actor=fresh.get_agent("agent1").actor())
    assert fresh.get_block(original.id).value == "I am careful.\nstill mine"


def test_a_file_the_model_rejects_is_reported_and_the_watcher_keeps_running(store: Store, ws_path: Path) -> None:
    store.create_block("notes", "a")
    (ws_path / "blocks" / "odd.md").write_text("---\nid: block-x\nlabel: odd\nmetadata: {1: x}\n---\nv\n")
    picked: queue.Queue[PickUp] = queue.Queue()
    with Watcher(store, on_pick_up=picked.put) as watcher:
        assert watcher.ready.wait(WAIT)
        first = picked.get(timeout=WAIT)
        assert first.path == "blocks/odd.md" and first.action == "invalid" and "metadata" in (first.problem or "")
        path = ws_path / "blocks" / "notes.md"
        path.write_text(path.read_text().replace("\na\n", "\nb\n"))
        assert picked.get(timeout=WAIT).action == "committed"


def test_a_delete_stays_pending_through_repeated_events(store: Store, seen: Seen, ws_path: Path) -> None:
    store.create_block("notes", "one")
    seen.next_change()
    path = ws_path / "blocks" / "notes.md"
    text = path.read_text()
    before = commit_count(ws_path)
    path.unlink()
    for _ in range(3):  # more events for the missing file must not cut the grace period short
        time.sleep(0.2)
        (ws_path / "blocks" / "notes.md~").write_text("backup")
        os.replace(ws_path / "blocks" / "notes.md~", ws_path / "blocks" / "other~")
        path.touch()
        path.unlink()
    path.write_text(text.replace("one", "two"))
    assert seen.next_pick_up().action == "committed"
    assert commit_count(ws_path) == before + 1


def test_the_watchers_error_about_gits_index_during_a_rebase_ends_with_it(store: Store, ws_path: Path) -> None:
    """git writes its index while a rebase is under way; the watcher's look at it is refused, saying so, and
    `memstore status` stops showing that error once the rebase ends (it used to show it for good)."""
    store.create_block("notes", "a")
    store.update_block("notes", value="b")
    with Watcher(store) as watcher:
        assert watcher.ready.wait(WAIT)
        stopped = subprocess.run(["git", "rebase", "--exec", "false", "HEAD~1"], cwd=ws_path, capture_output=True)
        assert stopped.returncode != 0 and (ws_path / ".git/rebase-merge").is_dir()
        git(ws_path, "reset", "-q", "--", "blocks/notes.md")  # git writes its index mid-rebase
        _wait_for(lambda: "(git's index)" in (store.ws.read_state("watcher-error") or ""))
        assert "rebase is in progress" in (store.ws.read_state("watcher-error") or "")
        git(ws_path, "rebase", "--abort")
        _wait_for(lambda: store.ws.read_state("watcher-error") is None)
    assert status(store).watcher_error is None
