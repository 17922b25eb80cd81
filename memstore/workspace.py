"""A workspace: one git repository of block and agent files, plus git-ignored local state.

Opening checks that the folder really is a workspace and that the repository is in a
state memstore may commit to; every problem is a WorkspaceError naming the way out.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import WorkspaceError
from .gitrepo import GitRepo, Ident, git_config

ENV_WORKSPACE = "MEMSTORE_WORKSPACE"
COMMITTER = Ident("memstore", "memstore@agents.memstore")
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
    git: GitRepo
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
    def pending_dir(self) -> Path:
        """Journals of edits written but not yet committed (see commits.py)."""
        return self.state_dir / "pending"

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
        problem = self.git.in_progress()
        if problem is not None:
            raise WorkspaceError(f"{self.root}: {problem}.")
        self.git.branch()


def resolve_root(path: str | os.PathLike[str] | None) -> Path:
    """The workspace folder: the given path, else $MEMSTORE_WORKSPACE, else the workspace the
    current folder is in (its nearest folder, upwards, with a git repository and `blocks/`)."""
    chosen = path or os.environ.get(ENV_WORKSPACE)
    if chosen:
        return Path(chosen).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists() and (folder / "blocks").is_dir():
            return folder
    return here


def open_workspace(path: str | os.PathLike[str] | None = None) -> Workspace:
    """Open an existing workspace, or raise WorkspaceError saying why it is not one."""
    root = resolve_root(path)
    named = f"{root} (${ENV_WORKSPACE})" if not path and os.environ.get(ENV_WORKSPACE) else str(root)
    if not root.is_dir():
        raise WorkspaceError(f"{named} does not exist. Create a workspace with `memstore init {root}`.")
    if not (root / ".git").exists():
        raise WorkspaceError(
            f"{named} is not a memstore workspace (no git repository). Run `memstore init DIR` to make one."
        )
    if not (root / "blocks").is_dir():
        raise WorkspaceError(f"{named} is not a memstore workspace (no blocks/ folder). Run `memstore init DIR`.")
    store = GitRepo(root)
    if store.tip() is None:
        raise WorkspaceError(f"{root}: the repository has no commits yet. Run `memstore init` on a new folder.")
    store.check_tip()
    ws = Workspace(root=root, git=store, person=person_ident(store.config))
    for folder in (ws.locks_dir, ws.tmp_dir, ws.pending_dir, ws.agents_dir):
        folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(ws.tmp_dir)
    return ws


def _remove_stale_temp_files(folder: Path, age: float = 3600) -> None:
    """Temp files of writers that were killed mid-write; a live writer renames its own in ms."""
    cutoff = time.time() - age
    for entry in os.scandir(folder):
        try:
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def person_ident(config: dict[str, str] | None = None) -> Ident:
    """The person's identity: MEMSTORE_AUTHOR_*, else git's user.name/email, else the login."""
    config = config or {}
    name = os.environ.get("MEMSTORE_AUTHOR_NAME") or config.get("user.name")
    email = os.environ.get("MEMSTORE_AUTHOR_EMAIL") or config.get("user.email")
    login = _login()
    return Ident(name or login, email or f"{login}@localhost")


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "person"


def init_workspace(path: str | os.PathLike[str]) -> Workspace:
    """Create a workspace: the template in a new repository, first commit.

    It is built in a temp folder beside the target and moved into place at the end, so a
    failure never leaves a half-made workspace.
    """
    root = Path(path).expanduser().resolve()
    if root.is_dir() and (root / ".git").exists():
        return _init_in_repository(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise WorkspaceError(f"{root} already exists and is not an empty folder or a git repository; choose a new "
                             "folder, or the top folder of a git repository.")
    fmt = os.environ.get("GIT_DEFAULT_HASH", "sha1").lower()
    if fmt != "sha1":
        raise WorkspaceError(f"GIT_DEFAULT_HASH={fmt}: memstore works with SHA-1 repositories only (git's default); "
                             "unset GIT_DEFAULT_HASH and run `memstore init` again.")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{root.name}.init-", dir=root.parent))
    except OSError as exc:
        raise WorkspaceError(f"cannot create {root}: {exc.strerror or exc}") from None
    try:
        shutil.copytree(template_dir(), build, dirs_exist_ok=True)
        _git(build, "init", "--quiet", "--initial-branch=main", "--object-format=sha1")
        _git(build, "config", "gc.auto", "1000")
        _git(build, "add", "-A")
        person = person_ident(git_config(build))
        _git(build, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", "Initialize memstore workspace",
             "-m", "Memstore-Op: init", env={
                 "GIT_AUTHOR_NAME": person.name, "GIT_AUTHOR_EMAIL": person.email,
                 "GIT_COMMITTER_NAME": COMMITTER.name, "GIT_COMMITTER_EMAIL": COMMITTER.email})
        if root.exists():
            root.rmdir()
        build.rename(root)
    except (OSError, WorkspaceError) as exc:
        shutil.rmtree(build, ignore_errors=True)
        if isinstance(exc, WorkspaceError):
            raise
        raise WorkspaceError(f"cannot create {root}: {exc.strerror or exc}") from None
    return open_workspace(root)


IGNORE_RULE = ".memstore/"


def _init_in_repository(root: Path) -> Workspace:
    """Make an existing repository a workspace: blocks/, agents/ and the ignore rule, in one commit.

    Nothing else of the person's is touched: other staged or changed files stay as they
    are, and the commit goes through git's own machinery (hooks and signing as configured).
    """
    if (root / "blocks").is_dir() and (root / "agents").is_dir():
        raise WorkspaceError(f"{root} is already a memstore workspace.")
    GitRepo(root)  # a repository memstore cannot work in is refused before anything is changed
    top = _git_out(root, "rev-parse", "--show-toplevel")
    if Path(top).resolve() != root:
        raise WorkspaceError(f"{root} is inside the git repository {top}; run `memstore init {top}` to use that "
                             "repository, or choose a new folder.")
    for name in ("blocks", "agents"):
        if (root / name).exists() and not ((root / name).is_dir() and not any((root / name).iterdir())):
            raise WorkspaceError(f"{root / name} already exists and memstore did not make it; move it away, "
                                 "then run `memstore init` again.")
    ignore = root / ".gitignore"
    if _git_out(root, "status", "--porcelain", "--", ".gitignore"):
        raise WorkspaceError(f"{ignore} has uncommitted changes; commit or stash them first, so that memstore's "
                             "commit holds only its own rule.")
    old_ignore = ignore.read_bytes() if ignore.exists() else None
    made: list[Path] = []
    try:
        for name in ("blocks", "agents"):
            (root / name).mkdir(exist_ok=True)
            keep = root / name / ".gitkeep"
            keep.write_bytes(b"")
            made.append(keep)
        lines = (old_ignore or b"").decode("utf-8", errors="replace").splitlines()
        if IGNORE_RULE not in (line.strip() for line in lines):
            sep = b"" if not old_ignore or old_ignore.endswith(b"\n") else b"\n"
            ignore.write_bytes((old_ignore or b"") + sep + b"# memstore's local state: never committed.\n"
                               + IGNORE_RULE.encode() + b"\n")
        person = person_ident(git_config(root))
        _git(root, "add", "--", ".gitignore", *(str(p.relative_to(root)) for p in made))
        _git(root, "commit", "--quiet", "-m", "Make this repository a memstore workspace", "-m",
             "Memstore-Op: init\nMemstore-Author-Kind: person", "--", ".gitignore", *(str(p.relative_to(root)) for p in made), env={
                 "GIT_AUTHOR_NAME": person.name, "GIT_AUTHOR_EMAIL": person.email})
    except (OSError, WorkspaceError):
        _undo_init(root, made, ignore, old_ignore)
        raise
    return open_workspace(root)


def _undo_init(root: Path, made: list[Path], ignore: Path, old_ignore: bytes | None) -> None:
    """Put the repository back as it was after a failed `init` (a refusing hook, a full disk)."""
    subprocess.run(["git", "reset", "--quiet", "--", ".gitignore", *(str(p.relative_to(root)) for p in made)],
                   cwd=root, capture_output=True, check=False)
    for keep in made:
        keep.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            keep.parent.rmdir()
    if old_ignore is None:
        ignore.unlink(missing_ok=True)
    else:
        ignore.write_bytes(old_ignore)


def _git_out(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise WorkspaceError(f"git {args[0]} failed in {cwd}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise WorkspaceError(f"git {args[0]} failed: {(proc.stderr or proc.stdout).strip()}")
