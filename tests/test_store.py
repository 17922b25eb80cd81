"""The store through its public API, checked against the real git repository."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from memstore import (
    Actor,
    AmbiguousNameError,
    ConflictError,
    FileFormatError,
    InvalidInputError,
    InvalidNameError,
    LimitExceededError,
    NotFoundError,
    PreconditionFailedError,
    ReadOnlyError,
    ReplaceError,
    Store,
    WorkspaceError,
)
from memstore.store import new_block

from .conftest import PERSON_EMAIL, PERSON_NAME, assert_clean_repo, commit_count, git, wait_for_maintenance


def test_init_makes_a_repository_with_one_commit_and_ignores_local_state(store: Store) -> None:
    root = store.ws.root
    assert commit_count(root) == 1
    assert (root / "blocks").is_dir() and (root / "README.md").exists()
    assert ".memstore/" in (root / ".gitignore").read_text()
    assert git(root, "log", "-1", "--format=%an <%ae>").strip() == f"{PERSON_NAME} <{PERSON_EMAIL}>"
    assert_clean_repo(root)


def test_init_refuses_a_folder_that_is_not_empty(tmp_path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(WorkspaceError, match="not an empty folder"):
        Store.init(tmp_path / "full")


def test_open_refuses_a_folder_that_is_not_a_workspace(tmp_path) -> None:
    with pytest.raises(WorkspaceError, match="not a memstore workspace"):
        Store.open(tmp_path)
    with pytest.raises(WorkspaceError, match="does not exist"):
        Store.open(tmp_path / "nope")


def test_edits_are_refused_during_a_merge(store: Store) -> None:
    store.create_block("org", "x")
    (store.ws.git.git_dir / "MERGE_HEAD").write_text("0" * 40 + "\n")
    with pytest.raises(WorkspaceError, match="merge is in progress"):
        store.memory_insert("org", "y")


def test_detached_head_is_a_clear_error(store: Store) -> None:
    store.create_block("org", "x")
    git(store.ws.root, "checkout", "-q", "--detach")
    with pytest.raises(WorkspaceError, match="HEAD is detached"):
        store.memory_insert("org", "y")


def test_create_block_writes_one_file_and_one_commit(store: Store) -> None:
    block = store.create_block("organization", "Organization: Letta", limit=4000, description="Shared",
                               metadata={"team": ["a", "b"]})
    assert block.id.startswith("block-") and block.limit == 4000 and block.chars_current == 19
    assert (store.ws.root / "blocks" / "organization.md").exists()
    assert commit_count(store.ws.root) == 2
    assert git(store.ws.root, "show", "--name-only", "--format=", "HEAD").split() == ["blocks/organization.md"]
    got = store.get_block("organization")
    assert got.value == "Organization: Letta" and got.metadata == {"team": ["a", "b"]}
    assert got.version == git(store.ws.root, "rev-parse", "HEAD").strip()
    assert_clean_repo(store.ws.root)


def test_default_limit_is_twenty_thousand(store: Store) -> None:
    assert store.create_block("x").limit == 20_000


def test_second_block_with_same_label_gets_a_numbered_file(store: Store) -> None:
    first = store.create_block("notes", "one")
    second = store.create_block("notes", "two")
    assert (first.name, second.name) == ("notes", "notes-2")


def test_block_is_found_by_id_file_name_and_label(store: Store) -> None:
    block = store.create_block("org", "v")
    store.update_block("org", label="company")
    assert store.get_block(block.id).label == "company"
    assert store.get_block("company").id == block.id
    assert store.get_block("org").id == block.id  # the file name stays blocks/org.md


def test_ambiguous_label_lists_the_candidates(store: Store) -> None:
    """A label shared by several blocks is ambiguous when it is not also one of their file names."""
    a = store.create_block("one", "one")
    b = store.create_block("two", "two")
    store.update_block("one", label="notes")
    store.update_block("two", label="notes")
    with pytest.raises(AmbiguousNameError) as err:
        store.get_block("notes")
    assert a.id in str(err.value) and b.id in str(err.value)
    assert store.get_block("one").id == a.id  # the file names still name each


def test_unknown_block_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.get_block("nothing")
    with pytest.raises(NotFoundError):
        store.get_block("block-00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize("label", ["../etc/passwd", "/abs", "a/b", "", "x" * 200, "bad\x07"])
def test_labels_that_could_be_paths_are_refused(store: Store, label: str) -> None:
    with pytest.raises(InvalidNameError):
        store.create_block(label)
    assert commit_count(store.ws.root) == 1


def test_value_over_the_limit_is_refused_at_creation(store: Store) -> None:
    with pytest.raises(LimitExceededError, match=r"Exceeds 5 character limit \(requested 6\)"):
        store.create_block("x", "123456", limit=5)


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": -1}, {"limit": True}, {"read_only": "yes"},
                                 {"metadata": [1]}, {"description": 5}])
def test_bad_block_arguments_are_refused(store: Store, bad: dict) -> None:
    with pytest.raises(InvalidInputError):
        store.create_block("x", **bad)


def test_update_block_changes_metadata_in_one_commit(store: Store) -> None:
    store.create_block("org", "value")
    before = commit_count(store.ws.root)
    result = store.update_block("org", description="new", limit=100, read_only=True, metadata={"a": 1})
    assert (result.block.description, result.block.limit, result.block.read_only) == ("new", 100, True)
    assert result.block.value == "value"
    assert commit_count(store.ws.root) == before + 1


def test_lowering_the_limit_below_the_value_is_refused(store: Store) -> None:
    store.create_block("org", "0123456789")
    with pytest.raises(LimitExceededError):
        store.update_block("org", limit=5)


def test_delete_block_detaches_it_in_the_same_commit(store: Store) -> None:
    block = store.create_block("org", "v")
    keep = store.create_block("keep", "k")
    for name in ("a1", "a2"):
        store.create_agent(name, "openai/gpt-4o-mini", block_ids=[block.id, keep.id])
    before = commit_count(store.ws.root)
    store.delete_block("org")
    assert not (store.ws.root / "blocks/org.md").exists()
    assert [store.get_agent(n).blocks for n in ("a1", "a2")] == [[keep.id], [keep.id]]
    assert commit_count(store.ws.root) == before + 1  # one edit, one commit: no agent ever lists a deleted block
    assert git(store.ws.root, "log", "-1", "--format=%s").strip() == "delete_block org"
    assert sorted(git(store.ws.root, "show", "--name-status", "--format=", "HEAD").splitlines()) == [
        "D\tblocks/org.md", "M\tagents/a1.md", "M\tagents/a2.md"]
    assert_clean_repo(store.ws.root)


def test_create_and_delete_agent_are_one_commit_each(store: Store) -> None:
    """An agent with blocks made inline, and the log an earlier agent of its name left, is one commit; so
    is deleting it with its conversation log."""
    (store.ws.root / "agents/a1").mkdir(parents=True)
    (store.ws.root / "agents/a1/messages.jsonl").write_text("")
    git(store.ws.root, "add", "agents/a1/messages.jsonl")
    git(store.ws.root, "commit", "-q", "-m", "an old log")
    before = commit_count(store.ws.root)
    agent = store.create_agent("a1", "openai/gpt-4o-mini",
                               new_blocks=[new_block("persona", "I help."), new_block("human", "A person.")])
    assert commit_count(store.ws.root) == before + 1
    assert git(store.ws.root, "log", "-1", "--format=%s%n%an").splitlines() == ["create_agent a1", store.person.name]
    assert sorted(git(store.ws.root, "show", "--name-status", "--format=", "HEAD").splitlines()) == [
        "A\tagents/a1.md", "A\tblocks/human.md", "A\tblocks/persona.md", "D\tagents/a1/messages.jsonl"]
    assert [b.label for b in store.agent_blocks(agent.id)] == ["persona", "human"]
    assert store.get_block("persona").version == git(store.ws.root, "rev-parse", "HEAD").strip()

    (store.ws.root / "agents/a1/messages.jsonl").write_text("")  # as a turn leaves it (committed)
    git(store.ws.root, "add", "agents/a1/messages.jsonl")
    git(store.ws.root, "commit", "-q", "-m", "a log")
    store.delete_agent("a1")
    assert commit_count(store.ws.root) == before + 3
    assert sorted(git(store.ws.root, "show", "--name-status", "--format=", "HEAD").splitlines()) == [
        "D\tagents/a1.md", "D\tagents/a1/messages.jsonl"]
    assert store.list_agents() == [] and [b.label for b in store.list_blocks()] == ["human", "persona"]
    assert_clean_repo(store.ws.root)


# -- edits ---------------------------------------------------------------------------------


@pytest.fixture
def agent1(store: Store) -> Actor:
    org = store.create_block("organization", "Organization: Letta", limit=200)
    policies = store.create_block("policies", "Be kind.", read_only=True)
    return store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[org.id, policies.id]).actor()


def test_each_edit_is_one_commit_authored_by_the_agent_with_trailers(store: Store, agent1: Actor) -> None:
    before = commit_count(store.ws.root)
    result = store.memory_insert("organization", "agent1: founded 2023", actor=agent1)
    assert result.block.value == "Organization: Letta\nagent1: founded 2023"
    assert commit_count(store.ws.root) == before + 1
    root = store.ws.root
    assert git(root, "log", "-1", "--format=%an <%ae>").strip() == f"agent1 <{agent1.agent_id}@agents.memstore>"
    assert git(root, "log", "-1", "--format=%cn").strip() == "memstore"
    trailers = git(root, "log", "-1", "--format=%(trailers:only,unfold)")
    assert "Memstore-Op: memory_insert" in trailers
    assert f"Memstore-Block: {result.block.id}" in trailers
    assert f"Memstore-Agent: {agent1.agent_id}" in trailers
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == ["blocks/organization.md"]
    assert result.version == git(root, "rev-parse", "HEAD").strip()
    assert_clean_repo(root)


def test_replace_rethink_append_and_replace_all(store: Store, agent1: Actor) -> None:
    store.memory_replace("organization", "Letta", "Letta Inc", actor=agent1)
    store.core_memory_append("organization", "x x", actor=agent1)
    store.core_memory_replace("organization", "x", "y", actor=agent1)
    assert store.get_block("organization").value == "Organization: Letta Inc\ny y"
    store.memory_rethink("organization", "fresh", actor=agent1)
    assert store.get_block("organization").value == "fresh"
    assert_clean_repo(store.ws.root)


def _refused(store: Store, exc: type[Exception], call, match: str) -> None:
    before = commit_count(store.ws.root)
    files = {p: p.read_bytes() for p in (store.ws.root / "blocks").glob("*.md")}
    with pytest.raises(exc, match=match):
        call()
    assert commit_count(store.ws.root) == before
    assert {p: p.read_bytes() for p in (store.ws.root / "blocks").glob("*.md")} == files
    assert_clean_repo(store.ws.root)


def test_read_only_block_refuses_agents_and_writes_nothing(store: Store, agent1: Actor) -> None:
    _refused(store, ReadOnlyError, lambda: store.memory_insert("policies", "x", actor=agent1),
             "Error This block is read-only and cannot be edited.")
    _refused(store, ReadOnlyError, lambda: store.memory_rethink("policies", "x", actor=agent1), "read-only")


def test_people_may_edit_read_only_blocks(store: Store, agent1: Actor) -> None:
    store.memory_insert("policies", "Be brief.")
    assert store.get_block("policies").value == "Be kind.\nBe brief."


def test_hosts_are_bound_by_read_only(store: Store, agent1: Actor) -> None:
    with pytest.raises(ReadOnlyError):
        store.memory_insert("policies", "x", actor=Actor.host("Claude Desktop"))


def test_over_limit_edit_is_refused_and_writes_nothing(store: Store, agent1: Actor) -> None:
    _refused(store, LimitExceededError, lambda: store.memory_insert("organization", "x" * 200, actor=agent1),
             r"Exceeds 200 character limit \(requested 220\)")


def test_replace_errors_write_nothing(store: Store, agent1: Actor) -> None:
    _refused(store, ReplaceError, lambda: store.memory_replace("organization", "Nope", "x", actor=agent1),
             "did not appear verbatim in memory block with label `organization`")
    store.memory_insert("organization", "Letta again", actor=agent1)
    _refused(store, ReplaceError, lambda: store.memory_replace("organization", "Letta", "x", actor=agent1),
             r"Multiple occurrences of old_str `Letta` in lines \[1, 2\]")


def test_invalid_insert_line_writes_nothing(store: Store, agent1: Actor) -> None:
    _refused(store, Exception, lambda: store.memory_insert("organization", "x", 7, actor=agent1),
             r"Invalid `insert_line` parameter: 7")


def test_agent_cannot_edit_a_block_it_does_not_have(store: Store, agent1: Actor) -> None:
    store.create_block("secret", "s")
    _refused(store, NotFoundError, lambda: store.memory_insert("secret", "x", actor=agent1),
             r"Block field secret does not exist \(available sections = organization, policies\)")


def test_huge_and_non_text_arguments_are_refused(store: Store, agent1: Actor) -> None:
    with pytest.raises(InvalidInputError):
        store.memory_insert("organization", 5, actor=agent1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        store.memory_insert("organization", "x" * 2_000_000, actor=agent1)
    with pytest.raises(InvalidInputError):
        store.memory_insert("organization", "nul\x00", actor=agent1)


def test_unicode_values_round_trip_through_the_store(store: Store) -> None:
    value = "  emoji 🧠, RTL עברית, combining é, CJK 記憶\r\ntrailing spaces  \n\n"
    store.create_block("uni", value)
    assert store.get_block("uni").value == value
    store.memory_insert("uni", "ß")
    assert store.get_block("uni").value == value + "\nß"


# -- hand edits ----------------------------------------------------------------------------


def test_uncommitted_hand_edit_is_committed_first_under_the_persons_name(store: Store, agent1: Actor) -> None:
    path = store.ws.root / "blocks" / "organization.md"
    path.write_bytes(path.read_bytes().replace(b"Organization: Letta", b"Organization: Letta (by hand)"))
    before = commit_count(store.ws.root)
    store.memory_insert("organization", "agent1: note", actor=agent1)
    assert commit_count(store.ws.root) == before + 2
    authors = git(store.ws.root, "log", "-2", "--format=%an|%s").strip().splitlines()
    assert authors == ["agent1|memory_insert organization", f"{PERSON_NAME}|Hand edit blocks/organization.md"]
    assert "(by hand)" in git(store.ws.root, "show", "HEAD~1:blocks/organization.md")
    assert store.get_block("organization").value == "Organization: Letta (by hand)\nagent1: note"
    assert_clean_repo(store.ws.root)


def test_an_agents_edit_of_the_value_keeps_a_persons_front_matter_byte_for_byte(store: Store, agent1: Actor) -> None:
    path = store.ws.root / "blocks" / "organization.md"
    data = path.read_bytes()
    front, body = data.split(b"\n---\n", 1)
    mine = front.replace(b"limit: 200", b"limit: 200  # raised by ops in March\n# owner: ops") + b"\n---\n"
    path.write_bytes(mine + body)
    store.memory_insert("organization", "agent1: note", actor=agent1)
    assert path.read_bytes() == mine + b"Organization: Letta\nagent1: note\n"
    diff = git(store.ws.root, "show", "-U0", "--format=", "HEAD").splitlines()
    assert [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")] == ["+agent1: note"]
    store.update_block("organization", limit=300)  # the front matter itself changes: written afresh
    assert b"# owner" not in path.read_bytes() and b"limit: 300" in path.read_bytes()
    assert_clean_repo(store.ws.root)


def test_broken_hand_edit_blocks_the_edit_and_is_left_alone(store: Store, agent1: Actor) -> None:
    path = store.ws.root / "blocks" / "organization.md"
    broken = path.read_bytes().replace(b"limit: 200", b"limit: [oops")
    path.write_bytes(broken)
    before = commit_count(store.ws.root)
    with pytest.raises(FileFormatError, match="blocks/organization.md, line"):
        store.memory_insert("organization", "x", actor=agent1)
    assert path.read_bytes() == broken
    assert commit_count(store.ws.root) == before
    assert [str(p) for p in store.problems()][0].startswith("blocks/organization.md")


def test_hand_edit_over_the_limit_is_not_committed(store: Store, agent1: Actor) -> None:
    path = store.ws.root / "blocks" / "organization.md"
    path.write_bytes(path.read_bytes() + b"y" * 300)
    with pytest.raises(FileFormatError, match="over its limit of 200"):
        store.memory_insert("organization", "x", actor=agent1)


# -- agents --------------------------------------------------------------------------------


def test_agents_registry(store: Store) -> None:
    org = store.create_block("org", "v")
    a1 = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[org.id], description="d")
    store.create_agent("agent2", "openai/gpt-4o-mini")
    assert a1.tools == ["memory_insert", "memory_replace", "conversation_search"]
    assert [a.name for a in store.list_agents()] == ["agent1", "agent2"]
    assert store.get_agent(a1.id).name == "agent1"
    store.attach_block("agent2", "org")
    assert [a.name for a in store.block_agents("org")] == ["agent1", "agent2"]
    store.detach_block("agent1", "org")
    assert [a.name for a in store.block_agents(org.id)] == ["agent2"]
    store.delete_agent("agent2")
    assert [a.name for a in store.list_agents()] == ["agent1"]
    assert_clean_repo(store.ws.root)


def test_attaching_a_second_block_with_the_same_label_is_refused(store: Store) -> None:
    first = store.create_block("notes", "one")
    second = store.create_block("notes", "two")
    store.create_agent("a", "m/x", block_ids=[first.id])
    before = commit_count(store.ws.root)
    with pytest.raises(ConflictError, match="two blocks labelled 'notes'"):
        store.attach_block("a", second.id)
    with pytest.raises(ConflictError):
        store.create_agent("b", "m/x", block_ids=[first.id, second.id])
    assert commit_count(store.ws.root) == before


def test_relabel_that_clashes_within_an_agent_is_refused(store: Store) -> None:
    a = store.create_block("a", "1")
    b = store.create_block("b", "2")
    store.create_agent("ag", "m/x", block_ids=[a.id, b.id])
    with pytest.raises(ConflictError):
        store.update_block("b", label="a")


def test_duplicate_agent_name_and_bad_tools_are_refused(store: Store) -> None:
    store.create_agent("a", "m/x")
    with pytest.raises(ConflictError):
        store.create_agent("a", "m/x")
    with pytest.raises(InvalidInputError, match="Unknown tool"):
        store.create_agent("b", "m/x", tools=["rm_rf"])
    with pytest.raises(InvalidInputError):
        store.create_agent("c", "")


# -- history -------------------------------------------------------------------------------


def test_history_value_at_version_diff_and_revert(store: Store, agent1: Actor) -> None:
    first = store.memory_insert("organization", "one", actor=agent1)
    second = store.memory_insert("organization", "two", actor=agent1)
    entries = store.block_history("organization")
    assert [e.op for e in entries] == ["memory_insert", "memory_insert", "create_block"]
    assert entries[0].version == second.version and entries[0].author_name == "agent1"
    assert entries[0].agent_id == agent1.agent_id
    assert store.get_block("organization", version=first.version).value == "Organization: Letta\none"
    assert "+two" in store.block_diff("organization", first.version, second.version)
    reverted = store.revert_block("organization", first.version[:10])
    assert reverted.block.value == "Organization: Letta\none"
    assert store.block_history("organization", limit=1)[0].op == "revert_block"
    assert len(store.block_history("organization")) == 4
    assert_clean_repo(store.ws.root)


def test_unknown_version_is_not_found(store: Store, agent1: Actor) -> None:
    with pytest.raises(NotFoundError):
        store.get_block("organization", version="deadbeef")
    with pytest.raises(NotFoundError):
        store.block_diff("organization", "--output=/tmp/x")


def test_history_stops_at_the_blocks_creation(store: Store) -> None:
    old = store.create_block("notes", "old")
    store.delete_block(old.id)
    new = store.create_block("notes", "new")
    assert new.name == "notes"
    assert [e.op for e in store.block_history(new.id)] == ["create_block"]


def test_a_blocks_version_is_the_commit_that_last_changed_it(store: Store) -> None:
    old = store.create_block("old", "still")
    store.create_block("busy", "b")
    assert store.get_block("old").version == old.version
    for i in range(80):  # more than the cold walk looks at
        store.memory_insert("busy", f"line {i}")
    fresh = Store.open(store.ws.root)  # a cold cache, as in a new server process
    assert fresh.get_block("old").version == old.version
    changed = store.memory_insert("old", "again").version
    for i in range(3):
        store.memory_insert("busy", f"more {i}")
    assert fresh.get_block("old").version == changed
    assert git(store.ws.root, "log", "-1", "--format=%H", "--", "blocks/old.md").strip() == changed


def test_background_maintenance_packs_objects_and_writes_the_commit_graph(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """What memstore starts every 500 commits: git's gc and a commit-graph with changed-path filters."""
    from memstore import history
    from memstore import store as store_module

    # no run of its own during the set-up (1 in 500 per commit): one started before gc.auto=1
    # would find nothing to pack, write the graph, and hold the lock that the run below needs
    monkeypatch.setattr(store_module.random, "random", lambda: 1.0)
    store.create_block("b", "")
    for i in range(30):
        store.memory_insert("b", f"line {i}")
    subprocess.run(["git", "config", "gc.auto", "1"], cwd=store.ws.root, check=True)  # pack even this few
    in_17 = 0  # git estimates the loose objects from those in objects/17: make sure it sees some
    for i in range(100_000):
        in_17 += store.ws.git.write_blob(b"%d" % i).startswith("17")
        if in_17 == 3:
            break
    history.maintain(str(store.ws.root))
    from filelock import lock_descriptor

    fd = os.open(store.ws.root / ".memstore/locks/maintain.lock", os.O_RDWR)
    try:  # under way from the start: whoever waits for maintenance (fsck below) sees it at once
        assert not lock_descriptor(fd, blocking=False)
    finally:
        os.close(fd)
    graphs = store.ws.root / ".git/objects/info/commit-graphs"
    deadline = time.monotonic() + 60
    while not (graphs.exists() and any(graphs.glob("*.graph"))):
        assert time.monotonic() < deadline, "maintenance never wrote the commit-graph"
        time.sleep(0.1)
    assert list((store.ws.root / ".git/objects/pack").glob("*.pack"))  # gc ran first: objects are packed
    time.sleep(0.5)  # let it finish before the folder goes
    assert_clean_repo(store.ws.root)


def test_housekeeping_starts_at_most_once_in_its_gap_however_fast_commits_come(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run costs CPU; fast writers must not start one every few hundred commits."""
    from memstore import history
    from memstore import store as store_module

    started: list[str] = []
    start = history.maintain
    monkeypatch.setattr(store_module.random, "random", lambda: 0.0)  # every commit is due by the count
    monkeypatch.setattr(history, "maintain", lambda workdir: (started.append(workdir), start(workdir)))
    store.create_block("b", "")
    for i in range(5):
        store.memory_insert("b", f"line {i}")
    assert started == [str(store.ws.root)]
    assert 0 <= history.since_maintenance(str(store.ws.root)) < 60
    wait_for_maintenance(store.ws.root)


def test_housekeeping_starts_after_the_block_lock_is_let_go(store: Store) -> None:
    """Starting it takes a while; the block's next writer must not wait for that."""
    from filelock import lock_descriptor, unlock_descriptor

    free: list[bool] = []

    def probe() -> None:
        fd = os.open(store.ws.locks_dir / "blocks__b.md.lock", os.O_RDWR)
        try:
            free.append(lock_descriptor(fd, blocking=False))
            if free[-1]:
                unlock_descriptor(fd)
        finally:
            os.close(fd)

    store.create_block("b", "")
    store.commits.on_commit = probe
    store.memory_insert("b", "line")
    store.memory_replace("b", "line", "new line")
    assert free == [True, True]


def test_expected_version_guards_every_edit(store: Store, ws_path: Path) -> None:
    block = store.create_block("notes", "one")
    assert block.version is not None
    done = store.memory_insert("notes", "two", expected_version=block.version)
    before = commit_count(ws_path)
    for edit in (lambda v: store.memory_rethink("notes", "x", expected_version=v),
                 lambda v: store.core_memory_append("notes", "x", expected_version=v),
                 lambda v: store.update_block("notes", value="x", expected_version=v),
                 lambda v: store.revert_block("notes", block.version, expected_version=v)):
        with pytest.raises(PreconditionFailedError, match="has changed since version"):
            edit(block.version)
    with pytest.raises(InvalidInputError, match="too short"):
        store.memory_insert("notes", "x", expected_version=done.version[:4])
    assert commit_count(ws_path) == before
    store.memory_insert("notes", "three", expected_version=done.version[:7].upper())
    store.memory_insert("notes", "four", expected_version="*")
    assert store.get_block("notes").value == "one\ntwo\nthree\nfour"


def test_expected_version_refuses_over_an_uncommitted_hand_edit(store: Store, ws_path: Path) -> None:
    block = store.create_block("notes", "one")
    path = ws_path / block.path
    by_hand = path.read_text() + "by hand\n"
    path.write_text(by_hand)
    with pytest.raises(PreconditionFailedError, match="whose commit is not made yet"):
        store.memory_insert("notes", "agent line", expected_version=block.version)
    assert path.read_text() == by_hand


def test_update_block_sets_the_value_in_one_commit_and_read_only_binds_agents(store: Store, ws_path: Path) -> None:
    policy = store.create_block("policies", "Rules", read_only=True)
    before = commit_count(ws_path)
    result = store.update_block("policies", value="New rules", description="The rules")
    assert (result.block.value, result.block.description) == ("New rules", "The rules")
    assert commit_count(ws_path) == before + 1
    agent = store.create_agent("agent1", "openai/x", block_ids=[policy.id])
    with pytest.raises(ReadOnlyError):
        store.update_block("policies", value="agent rules", actor=agent.actor())
    with pytest.raises(LimitExceededError):
        store.update_block("policies", value="x" * 30, limit=20)
    assert store.get_block("policies").value == "New rules"


def test_update_agent_and_agent_block(store: Store, ws_path: Path) -> None:
    org = store.create_block("organization", "Org")
    twin = store.create_block("organization", "Other org")
    agent = store.create_agent("agent1", "openai/a", block_ids=[org.id])
    assert store.agent_block("agent1", "organization").id == org.id
    with pytest.raises(NotFoundError, match="Block field policies does not exist"):
        store.agent_block("agent1", "policies")
    with pytest.raises(ConflictError):
        store.update_agent("agent1", block_ids=[org.id, twin.id])
    updated = store.update_agent(agent.id, model="anthropic/claude", system="Be brief.", tools=["web_search"],
                                 block_ids=[twin.id])
    assert (updated.model, updated.system, updated.tools, updated.blocks) == (
        "anthropic/claude", "Be brief.", ["web_search"], [twin.id])
    assert updated.version == git(ws_path, "rev-parse", "HEAD").strip() and updated.pending is None
    assert store.get_agent("agent1") == updated.model_copy(update={"version": None})  # a read names no commit


def test_a_pending_commit_has_no_version_and_fails_every_precondition(store: Store, ws_path: Path) -> None:
    block = store.create_block("notes", "one")
    lock = ws_path / ".git" / "index.lock"
    lock.write_bytes(b"")  # a git command holds the index
    first = store.memory_insert("notes", "two")
    assert first.pending and first.version is None
    assert store.get_block("notes").version is None  # never the old commit beside the new value
    for expected in (block.version, block.version[:7]):
        with pytest.raises(PreconditionFailedError, match="whose commit is not made yet"):
            store.memory_rethink("notes", "clobbered", expected_version=expected)
    lock.unlink()
    done = store.memory_insert("notes", "three", expected_version="*")  # commits the pending edit first
    assert done.version == git(ws_path, "rev-parse", "HEAD").strip()
    assert store.get_block("notes").value == "one\ntwo\nthree"
    assert git(ws_path, "log", "-3", "--format=%s").splitlines() == [
        "memory_insert notes", "memory_insert notes", "create_block notes"]


def test_reading_a_block_with_a_hand_edit_commits_it_so_its_version_is_true(store: Store, ws_path: Path) -> None:
    block = store.create_block("notes", "one")
    path = ws_path / block.path
    path.write_text(path.read_text() + "by hand\n")
    shown = store.get_block("notes")
    assert shown.value == "one\nby hand"
    assert shown.version == git(ws_path, "rev-parse", "HEAD").strip() != block.version
    assert git(ws_path, "log", "-1", "--format=%an|%s").strip() == f"{PERSON_NAME}|Hand edit blocks/notes.md"
    store.memory_insert("notes", "agent", expected_version=shown.version)  # the version read is the one to use


def test_an_agents_label_follows_the_file_when_a_person_relabels_by_hand(store: Store, agent1: Actor) -> None:
    """The catalog's answer is checked against the file: a hand relabel is seen before any rescan."""
    path = store.ws.root / "blocks" / "organization.md"
    path.write_text(path.read_text().replace("label: organization", "label: company"))
    git(store.ws.root, "commit", "-qam", "relabel by hand")
    assert store.memory_insert("company", "agent1: by its new label", actor=agent1).version
    assert store.memory_insert("organization", "agent1: by its file name", actor=agent1).version
    with pytest.raises(ReadOnlyError):
        store.memory_insert("policies", "x", actor=agent1)
    with pytest.raises(NotFoundError, match="Block field persona does not exist"):
        store.memory_insert("persona", "x", actor=agent1)
    assert store.get_block("company").value.endswith("by its new label\nagent1: by its file name")


def _paused_label_check(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make an attach pause right after it checked the labels: (it paused, let it go on)."""
    from memstore import store as store_module

    paused, go = threading.Event(), threading.Event()
    check = store_module.check_unique_labels

    def slow_check(name: str, blocks: list) -> None:
        check(name, blocks)
        if threading.current_thread().name == "attach":
            paused.set()
            go.wait(5)

    monkeypatch.setattr(store_module, "check_unique_labels", slow_check)
    return paused, go


def _race(store: Store, attach: Callable[[], object], other: Callable[[], object],
          monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Run `attach` until it paused inside, then `other` meanwhile; let both end; what each raised."""
    paused, go = _paused_label_check(monkeypatch)
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    first = threading.Thread(target=run, args=(attach,), name="attach")
    first.start()
    assert paused.wait(10)
    second = threading.Thread(target=run, args=(other,), name="other")
    second.start()
    second.join(0.5)  # unprotected, it would be done by now
    go.set()
    first.join(30)
    second.join(30)
    return errors


def test_a_block_deleted_while_it_is_attached_is_never_left_listed(store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    block = store.create_block("organization", "Org")
    agent = store.create_agent("agent1", "openai/gpt-4o-mini")
    errors = _race(store, lambda: store.attach_block(agent.id, block.id), lambda: store.delete_block(block.id),
                   monkeypatch)
    assert errors == []
    assert block.id not in store.get_agent(agent.id).blocks  # detached by the delete that came second
    assert_clean_repo(store.ws.root)


def test_a_relabel_while_a_block_is_attached_never_gives_an_agent_two_blocks_of_one_label(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = store.create_block("notes", "n")
    org = store.create_block("organization", "Org")
    agent = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[mine.id])
    errors = _race(store, lambda: store.attach_block(agent.id, org.id),
                   lambda: store.update_block(mine.id, label="organization"), monkeypatch)
    assert len(errors) == 1 and isinstance(errors[0], ConflictError) and "already has a block labelled" in str(
        errors[0])
    labels = [b.label for b in store.agent_blocks(agent.id)]
    assert sorted(labels) == ["notes", "organization"]
    assert_clean_repo(store.ws.root)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_a_store_let_go_of_closes_its_lock_files(store: Store, ws_path: Path) -> None:
    import gc

    store.create_block("notes", "a")
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for i in range(20):  # as a program that opens the workspace per request does
        Store.open(ws_path).memory_insert("notes", f"line {i}")
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_deleting_an_agent_never_deletes_a_new_one_of_its_name(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent is found before its file is locked; one deleted and made again meanwhile is not the one asked for."""
    old = store.create_agent("a1", "openai/gpt-4o-mini")
    store.delete_agent("a1")
    new = store.create_agent("a1", "openai/gpt-4o-mini")
    monkeypatch.setattr(store, "get_agent", lambda ref: old)  # as read just before the other writer's changes
    with pytest.raises(NotFoundError, match="deleted meanwhile"):
        store.delete_agent("a1")
    monkeypatch.undo()
    assert store.get_agent("a1").id == new.id
