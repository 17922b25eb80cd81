"""The hand-written git plumbing agrees with the real git binary."""

from __future__ import annotations

import os
import subprocess

from memstore import Store
from memstore.gitobjects import GitStore, fsync_components

from .conftest import assert_clean_repo, git


def test_big_objects_are_stored_in_a_form_git_reads(store: Store) -> None:
    gs: GitStore = store.ws.git
    body = os.urandom(200_000) + b"tail"
    sha = gs.write_object(b"blob", body)
    shown = subprocess.run(["git", "cat-file", "blob", sha], cwd=store.ws.root, capture_output=True, check=True)
    assert shown.stdout == body
    assert git(store.ws.root, "fsck", "--strict", "--no-dangling") == ""


def test_edits_keep_the_index_in_sync_after_git_rewrites_it(store: Store) -> None:
    store.create_block("a", "1")
    store.create_block("b", "2")
    git(store.ws.root, "update-index", "--refresh")
    git(store.ws.root, "status")  # git writes the index back with its own extensions (cache tree)
    git(store.ws.root, "write-tree")
    store.memory_insert("a", "more")
    assert_clean_repo(store.ws.root)
    store.create_block("c", "3")  # an insertion into the index, not a replacement
    store.delete_block("b")  # a removal
    assert_clean_repo(store.ws.root)


def test_a_split_index_is_updated_through_git(store: Store) -> None:
    store.create_block("a", "1")
    git(store.ws.root, "update-index", "--split-index")
    store.memory_insert("a", "more")
    store.create_block("z", "new")
    assert_clean_repo(store.ws.root)


def test_a_repository_with_packed_objects_and_refs_still_takes_edits(store: Store) -> None:
    store.create_block("a", "1")
    git(store.ws.root, "gc", "-q", "--prune=now")
    assert not (store.ws.git.common_dir / "refs/heads/main").exists()  # the branch is only in packed-refs
    (store.ws.git.common_dir / "refs/heads").rmdir()  # as a ref pruning may leave it
    fresh = Store.open(store.ws.root)  # no cached trees: everything read from the pack
    fresh.memory_insert("a", "2")
    assert fresh.get_block("a").value == "1\n2"
    assert_clean_repo(store.ws.root)


def test_a_missing_index_is_rebuilt_from_head_not_emptied(store: Store) -> None:
    store.create_block("a", "1")
    store.create_block("b", "2")
    (store.ws.git.git_dir / "index").unlink()
    store.memory_insert("a", "more")
    assert_clean_repo(store.ws.root)  # b.md and the template files are still tracked in the index


def test_an_object_folder_removed_by_git_gc_meanwhile_is_made_again(store: Store, monkeypatch) -> None:
    """`git gc` deletes empty object folders while memstore writes; a write never fails for it."""
    import memstore.gitobjects as gitobjects

    real_makedirs = os.makedirs
    removed: list[str] = []

    def makedirs_then_gc(path: str, exist_ok: bool = False) -> None:
        real_makedirs(path, exist_ok=exist_ok)
        if not removed:  # gc empties and removes the folder right after it is made
            os.rmdir(path)
            removed.append(path)

    monkeypatch.setattr(gitobjects.os, "makedirs", makedirs_then_gc)
    sha = GitStore(store.ws.git.repo).write_object(b"blob", b"a brand new object\n")
    assert removed and removed[0].endswith(sha[:2])
    assert git(store.ws.root, "cat-file", "-p", sha) == "a brand new object\n"


def test_fsync_components_read_gits_setting_as_git_does() -> None:
    assert fsync_components(None) == frozenset()  # git's default flushes no loose object, ref or index
    assert fsync_components("committed") == {"loose-object", "reference"}
    assert fsync_components("added") == fsync_components("all") == {"loose-object", "reference", "index"}
    assert fsync_components("all,-index") == {"loose-object", "reference"}
    assert fsync_components("index,none,reference") == {"reference"}
    assert fsync_components("pack,commit-graph") == frozenset()  # git's own files, not memstore's
    assert fsync_components("", object_files=True) == {"loose-object"}


def _count_fsyncs(store: Store, monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    store.memory_insert("a", "more")
    return calls


def test_edits_flush_nothing_by_default_like_git(store: Store, monkeypatch) -> None:
    store.create_block("a", "1")
    assert _count_fsyncs(store, monkeypatch) == []


def test_edits_flush_what_core_fsync_asks_for(tmp_path, monkeypatch) -> None:
    Store.init(tmp_path / "ws")
    git(tmp_path / "ws", "config", "core.fsync", "added")
    store = Store.open(tmp_path / "ws")
    store.create_block("a", "1")
    # the block file and its blob, the pack and its index (trees, commit), the branch ref, the index
    assert len(_count_fsyncs(store, monkeypatch)) == 6
    assert_clean_repo(store.ws.root)


def test_index_checksums_resumed_from_checkpoints_match_whole_ones() -> None:
    """A patched index's checksum, resumed part-way, is the SHA-1 git checks; across inserts too."""
    import hashlib
    import random

    from memstore.gitindex import patch_index

    rng = random.Random(5)
    paths = sorted(f"blocks/b{n:05d}.md".encode() for n in range(3000))  # ~300 KB: several checkpoints
    data = patch_index(bytearray(b"DIRC" + (2).to_bytes(4, "big") + bytes(4) + bytes(20)),
                       [(p, "1" * 40, None) for p in paths[:1]], None)
    data = patch_index(data, [(p, "2" * 40, None) for p in paths[1:]], None)
    checkpoints: list = []
    for step in range(40):
        path = rng.choice(paths) if step % 7 else f"blocks/new{step}.md".encode()  # in place, or an insert
        data = patch_index(data, [(path, f"{step:040x}", None)], len(data) - 20, checkpoints)
        assert bytes(data[-20:]) == hashlib.sha1(bytes(data[:-20])).digest()
