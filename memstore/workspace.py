"""A workspace: one git repository of block and agent files, plus git-ignored local state.

Opening checks that the folder really is a workspace and that the repository is in a
state memstore may commit to; every problem is a WorkspaceError naming the way out.
"""

from __future__ import annotations

import getpass
import os
import shutil
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import git

from .errors import WorkspaceError
from .gitobjects import GitStore, Ident

ENV_WORKSPACE = "MEMSTORE_WORKSPACE"
COMMITTER = Ident("memstore", "memstore@agents.memstore")
_IN_PROGRESS = {
    "MERGE_HEAD": "a merge is in progress: finish it or run `git merge --abort`",
    "rebase-merge": "a rebase is in progress: finish it or run `git rebase --abort`",
    "rebase-apply": "a rebase or `git am` is in progress: finish it or abort it",
    "CHERRY_PICK_HEAD": "a cherry-pick is in progress: finish it or run `git cherry-pick --abort`",
    "REVERT_HEAD": "a revert is in progress: finish it or run `git revert --abort`",
}


def template_dir() -> Path:
    """The workspace template: packaged with memstore, or beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "workspace_template", here.parent / "workspace_template"):
        if candidate.is_dir():
            return candidate
    raise WorkspaceError("memstore's workspace_template is missing from this installation")


@dataclass
class Workspace:
    """Paths, the repository and identities of one open workspace."""

    root: Path
    git: GitStore
    person: Ident

    @cached_property
    def blocks_dir(self) -> Path:
        return self.root / "blocks"

    @cached_property
    def agents_dir(self) -> Path:
        return self.root / "agents"

    @cached_property
    def state_dir(self) -> Path:
        return self.root / ".memstore"

    @cached_property
    def locks_dir(self) -> Path:
        return self.state_dir / "locks"

    @cached_property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @cached_property
    def trash_dir(self) -> Path:
        """Replaced git files (index, branch ref) waiting to be freed off the lock."""
        return self.state_dir / "trash"


    def read_state(self, name: str) -> str | None:
        """A small local-state note in `.memstore/` (never committed), or None."""
        try:
            return (self.state_dir / name).read_text(encoding="utf-8") or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def write_state(self, name: str, text: str | None) -> None:
        """Replace (None: remove) a local-state note atomically."""
        target = self.state_dir / name
        if text is None:
            target.unlink(missing_ok=True)
            return
        tmp = self.tmp_dir / f"{name}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)

    def check_state(self) -> None:
        """Refuse to commit while git is in the middle of a multi-step operation."""
        git_dir = str(self.git.git_dir)
        for marker, problem in _IN_PROGRESS.items():
            if os.path.exists(f"{git_dir}/{marker}"):
                raise WorkspaceError(f"{self.root}: {problem}.")
        self.git.head_ref()


def resolve_root(path: str | os.PathLike[str] | None) -> Path:
    """The workspace folder: the given path, else $MEMSTORE_WORKSPACE, else the current folder."""
    chosen = path or os.environ.get(ENV_WORKSPACE) or "."
    return Path(chosen).expanduser().resolve()


def open_workspace(path: str | os.PathLike[str] | None = None) -> Workspace:
    """Open an existing workspace, or raise WorkspaceError saying why it is not one."""
    root = resolve_root(path)
    if not root.is_dir():
        raise WorkspaceError(f"{root} does not exist. Create a workspace with `memstore init {root}`.")
    if not (root / ".git").exists():
        raise WorkspaceError(
            f"{root} is not a memstore workspace (no git repository). Run `memstore init DIR` to make one."
        )
    if not (root / "blocks").is_dir():
        raise WorkspaceError(f"{root} is not a memstore workspace (no blocks/ folder). Run `memstore init DIR`.")
    try:
        repo = git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise WorkspaceError(f"{root}: the git repository is unreadable ({exc}).") from None
    store = GitStore(repo)
    try:
        head = store.read_ref(store.head_ref())
    except OSError as exc:
        raise WorkspaceError(f"{root}: cannot read HEAD ({exc}).") from None
    if head is None:
        raise WorkspaceError(f"{root}: the repository has no commits yet. Run `memstore init` on a new folder.")
    ws = Workspace(root=root, git=store, person=person_ident(repo))
    for folder in (ws.locks_dir, ws.tmp_dir, ws.trash_dir, ws.agents_dir):
        folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(ws.tmp_dir)
    _remove_stale_temp_files(ws.trash_dir, age=60)  # left by a committer that died
    return ws


def _remove_stale_temp_files(folder: Path, age: float = 3600) -> None:
    """Temp files of writers that were killed mid-write; a live writer renames its own in ms.

    Spare files a live process made ahead for its next write (`<kind>.<pid>.<random>`) stay.
    """
    cutoff = time.time() - age
    for entry in os.scandir(folder):
        try:
            if entry.stat().st_mtime < cutoff and not _spare_of_live_process(entry.name):
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def _spare_of_live_process(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and parts[1].isdigit() and process_alive(int(parts[1]))


def process_alive(pid: object) -> bool:
    """True if process `pid` exists (it may belong to another user)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def person_ident(repo: git.Repo | None = None) -> Ident:
    """The person's identity: MEMSTORE_AUTHOR_*, else git's user.name/email, else the login."""
    name = os.environ.get("MEMSTORE_AUTHOR_NAME")
    email = os.environ.get("MEMSTORE_AUTHOR_EMAIL")
    if (not name or not email) and repo is not None:
        reader = repo.config_reader()
        name = name or str(reader.get_value("user", "name", "") or "")
        email = email or str(reader.get_value("user", "email", "") or "")
    login = _login()
    return Ident(name or login, email or f"{login}@localhost")


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "person"


def init_workspace(path: str | os.PathLike[str]) -> Workspace:
    """Create a workspace: copy the template into a new repository and commit it."""
    root = Path(path).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise WorkspaceError(f"{root} already exists and is not an empty folder; choose a new folder.")
    try:
        shutil.copytree(template_dir(), root, dirs_exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(f"cannot create {root}: {exc.strerror or exc}") from None
    repo = git.Repo.init(root, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("gc", "auto", "1000")
    repo.git.add("-A")
    person = person_ident(repo)
    actor = git.Actor(person.name, person.email)
    repo.index.commit(
        "Initialize memstore workspace\n\nMemstore-Op: init\n",
        author=actor,
        committer=git.Actor(COMMITTER.name, COMMITTER.email),
    )
    repo.close()
    return open_workspace(root)
