"""Every test runs hermetic: its own HOME, git identity and workspace."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import lock_descriptor, unlock_descriptor

from memstore import Store

PERSON_NAME = "Pat Person"
PERSON_EMAIL = "pat@example.com"


@pytest.fixture(autouse=True)
def hermetic_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[user]\n\tname = {PERSON_NAME}\n\temail = {PERSON_EMAIL}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in list(os.environ):
        if name == "MEMSTORE_PORTABLE":  # set by tests/test_portable.py for a whole run, child processes too
            continue
        if name.startswith(("MEMSTORE_", "GIT_AUTHOR_", "GIT_COMMITTER_")) or name in ("GIT_DIR", "GIT_WORK_TREE"):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
def ws_path(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def store(ws_path: Path) -> Store:
    return Store.init(ws_path)


def git(ws: Path, *args: str) -> str:
    """Run the real git binary in a workspace and return its output."""
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout


def commit_count(ws: Path) -> int:
    return int(git(ws, "rev-list", "--count", "HEAD").strip())


def wait_for_maintenance(ws: Path, timeout: float = 60) -> None:
    """Wait until no background maintenance runs (a repack deletes packs that fsck is reading)."""
    lock = ws / ".memstore/locks/maintain.lock"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout
        while not lock_descriptor(fd, blocking=False):
            assert time.monotonic() < deadline, "background maintenance never finished"
            time.sleep(0.05)
        unlock_descriptor(fd)
    finally:
        os.close(fd)


def wait_for_gits_gc(ws: Path, timeout: float = 60) -> None:
    """Wait until no `git gc --auto` that a person's git command started in the background runs: it
    packs loose objects and deletes them while fsck reads them. git holds `.git/gc.pid` meanwhile."""
    deadline = time.monotonic() + timeout
    while (ws / ".git/gc.pid").exists():
        assert time.monotonic() < deadline, "git's background gc never finished"
        time.sleep(0.05)


def assert_clean_repo(ws: Path) -> None:
    """fsck is clean and the work tree matches HEAD (nothing uncommitted, index in sync)."""
    wait_for_maintenance(ws)
    wait_for_gits_gc(ws)
    result = subprocess.run(["git", "fsck", "--strict"], cwd=ws, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert git(ws, "status", "--porcelain") == ""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
