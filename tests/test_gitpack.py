"""Group commit's small packs: valid for git, readable by every memstore process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from memstore import Store, history
from memstore.gitobjects import GitStore
from memstore.gitpack import build_pack, parse_index

from .conftest import assert_clean_repo, git, wait_for_maintenance

ROOT = Path(__file__).resolve().parent.parent


def _loose(root: Path) -> set[str]:
    objects = root / ".git/objects"
    return {f"{d.name}{f.name}" for d in objects.iterdir() if len(d.name) == 2 for f in d.iterdir()
            if not f.name.startswith("tmp_")}


def _packs(root: Path) -> list[Path]:
    return sorted((root / ".git/objects/pack").glob("pack-*.pack"))


def test_an_edit_writes_its_blob_trees_and_commit_as_one_pack_git_reads(store: Store) -> None:
    store.create_block("notes", "first")
    loose, packs = _loose(store.ws.root), _packs(store.ws.root)
    result = store.memory_insert("notes", "second")
    assert _loose(store.ws.root) == loose  # the writer left the new content in the file's lock
    new_packs = sorted(set(_packs(store.ws.root)) - set(packs))
    assert len(new_packs) == 1
    listed = git(store.ws.root, "verify-pack", "-v", str(new_packs[0].with_suffix(".idx")))
    kinds = sorted(line.split()[1] for line in listed.splitlines() if len(line.split()) > 2
                   and line.split()[1] in ("commit", "tree", "blob"))
    assert kinds == ["blob", "commit", "tree", "tree"]  # the block, the root tree, blocks/, the commit
    assert result.version in listed
    assert git(store.ws.root, "show", "-s", "--format=%an", result.version).strip() == "Pat Person"
    assert_clean_repo(store.ws.root)


def test_index_parses_back_what_was_built() -> None:
    bodies = [b"x" * n for n in (1, 300, 70_000)]
    objects = [(hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest(), b"blob", b) for b in bodies]
    built = build_pack(objects)
    assert built is not None
    index = parse_index(built.index)
    assert index == built.offsets and len(index) == 3


def test_another_process_reads_objects_from_packs_it_did_not_write(ws_path: Path) -> None:
    writer = Store.init(ws_path)
    reader = Store.open(ws_path)
    writer.create_block("notes", "one")
    for i in range(5):
        result = writer.memory_insert("notes", f"line {i}")
    assert reader.ws.git.packs.read(result.version) is not None  # found by scanning the new packs
    assert reader.get_block("notes").value == "one\nline 0\nline 1\nline 2\nline 3\nline 4"
    assert reader.memory_insert("notes", "from the reader").version
    assert [h.version for h in reader.block_history("notes", limit=7)][1] == result.version
    assert_clean_repo(ws_path)


def test_packs_rolled_up_by_git_meanwhile_are_read_through_git(ws_path: Path) -> None:
    first = Store.init(ws_path)
    second = Store.open(ws_path)
    first.create_block("notes", "one")
    for i in range(3):
        first.memory_insert("notes", f"a{i}")
    second.get_block("notes")  # knows today's small packs
    git(ws_path, "repack", "-a", "-d", "-q")  # one pack, with deltas; the small packs are gone
    assert len(_packs(ws_path)) == 1
    second.ws.git._trees.clear()
    second.ws.git._commit_trees.clear()
    second.memory_insert("notes", "after the repack")
    first.memory_insert("notes", "and another")
    assert first.get_block("notes").value.endswith("a2\nafter the repack\nand another")
    assert_clean_repo(ws_path)


def test_maintenance_rolls_small_packs_up(store: Store) -> None:
    store.create_block("b", "")
    for i in range(40):
        store.memory_insert("b", f"line {i}")
    before = len(_packs(store.ws.root))
    assert before >= 40
    history.maintain(str(store.ws.root))
    deadline = time.monotonic() + 60
    while len(_packs(store.ws.root)) > before // 4:
        assert time.monotonic() < deadline, "maintenance never rolled the packs up"
        time.sleep(0.1)
    wait_for_maintenance(store.ws.root)
    counts = dict(line.split(": ") for line in git(store.ws.root, "count-objects", "-v").splitlines())
    assert counts["garbage"] == "0" and counts["count"] == "0"  # the loose blobs were packed too
    assert_clean_repo(store.ws.root)
    store.memory_insert("b", "after maintenance")
    assert store.get_block("b").value.endswith("line 39\nafter maintenance")


def test_the_newest_pack_is_found_from_the_hint_without_scanning(ws_path: Path, monkeypatch) -> None:
    writer = Store.init(ws_path)
    reader = Store.open(ws_path)
    writer.create_block("notes", "one")
    reader.get_block("notes")
    result = writer.memory_insert("notes", "two")

    def no_scan() -> bool:
        raise AssertionError("scanned the pack folder")

    monkeypatch.setattr(reader.ws.git.packs, "_rescan", no_scan)
    assert reader.ws.git.read_object(result.version)[0] == b"commit"
    assert reader.memory_insert("notes", "three").version  # builds on the writer's commit
    assert writer.get_block("notes").value == "one\ntwo\nthree"


def test_writers_in_processes_lose_nothing_while_git_repacks_all_the_time(ws_path: Path) -> None:
    """Packs vanish under readers (rolled up by git) while the writers build on them."""
    store = Store.init(ws_path)
    ids = [store.create_block(f"b{i}", "", limit=1_000_000).id for i in range(2)]
    for n in range(4):
        store.create_agent(f"w{n}", "m/x", block_ids=[ids[n % 2]])
    go, count = ws_path / ".memstore/go", 60
    procs = [subprocess.Popen([sys.executable, "-m", "tests.workers", "insert", str(ws_path), f"w{n}", f"b{n % 2}",
                               str(count), f"w{n}", str(go)], cwd=ROOT) for n in range(4)]
    time.sleep(1)
    go.touch()
    repacks = 0
    while any(p.poll() is None for p in procs):
        how = ["-a"] if repacks % 2 == 0 else ["--geometric=2"]  # everything, or just the small packs
        subprocess.run(["git", "repack", *how, "-d", "-q"], cwd=ws_path, capture_output=True, check=False)
        repacks += 1
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    assert repacks >= 2
    lines = store.get_block("b0").value.split("\n") + store.get_block("b1").value.split("\n")
    assert sorted(lines) == sorted(f"w{n}-{i}" for n in range(4) for i in range(count))
    assert git(ws_path, "rev-list", "--count", "HEAD", "--author=agents.memstore").strip() == str(4 * count)
    assert_clean_repo(ws_path)


def test_a_full_repack_between_the_pack_and_the_branch_update_keeps_the_batch(store: Store, monkeypatch) -> None:
    """`git repack -a -d` drops objects no ref reaches: a batch's pack is kept until the branch does."""
    store.create_block("org", "hello")
    real = GitStore.update_ref
    fired: list[str] = []

    def repack_first(self, *args, **kwargs):
        if not fired:
            fired.append(git(store.ws.root, "repack", "-a", "-d", "-q"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GitStore, "update_ref", repack_first)
    result = store.memory_insert("org", "more text")
    assert fired
    assert git(store.ws.root, "show", f"{result.version}:blocks/org.md").endswith("hello\nmore text\n")
    assert_clean_repo(store.ws.root)
    assert list((store.ws.root / ".git/objects/pack").glob("*.keep")) == []  # let go once published


def test_keep_files_left_by_a_dead_committer_are_removed_and_gits_own_stay(store: Store) -> None:
    store.create_block("org", "hello")
    packs = store.ws.root / ".git/objects/pack"
    spare = store.ws.locks_dir / "pack.keep"
    assert spare.exists()  # the one `.keep` memstore moves onto each new pack and back
    ours, gits = packs / f"pack-{'1' * 40}.keep", packs / f"pack-{'2' * 40}.keep"
    spare.rename(ours)  # as a committer killed before it let go of its pack leaves it
    gits.write_text("fetch-pack 123 on host\n")
    store.memory_insert("org", "more")
    assert not ours.exists() and gits.exists()
    assert spare.exists()


def test_big_objects_are_written_loose_beside_the_batchs_pack(store: Store) -> None:
    """A big blob (or the tree of thousands of blocks): hashing it into the pack too costs more than its file."""
    store.create_block("big", "", limit=1_000_000)
    loose, packs = _loose(store.ws.root), set(_packs(store.ws.root))
    value = "".join(f"line {i}: {'é' * 40}\n" for i in range(1500))[:-1]  # ~100 KB
    result = store.memory_rethink("big", value)
    (blob,) = _loose(store.ws.root) - loose
    assert int(git(store.ws.root, "cat-file", "-s", blob)) == len((store.ws.root / "blocks/big.md").read_bytes())
    (new_pack,) = set(_packs(store.ws.root)) - packs  # the trees and the commit
    assert new_pack.stat().st_size < 2_000
    assert git(store.ws.root, "show", f"{result.version}:blocks/big.md").endswith(value + "\n")
    assert store.get_block("big").value == value
    assert_clean_repo(store.ws.root)
