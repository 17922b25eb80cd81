"""The watcher: a watchdog observer on `blocks/` and `agents/` that picks up hand edits.

Events are collected per file and handled once the file has been quiet for a moment
(editors save with several events: write a temp file, rename it over, touch a backup).
Only `blocks/<name>.md` and `agents/<name>.md` count; swap, backup and temp files never
match a block or agent name. git's index is watched too: an entry a racing `git commit` put
back to before memstore's commit is set to the branch's again within a moment
(`Committer.repair_index`), before the person's next commit could undo an agent's edit. Each settled file goes through `handedits.pick_up`, which
commits a valid hand edit once however many watchers see it. Every settled change, from
any writer, is also reported to `on_change`, which the MCP server turns into resource
notifications.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .gitrepo import blob_id
from .errors import MemstoreError
from .handedits import PickUp, is_watched, pick_up

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("memstore.watcher")

DEBOUNCE = 0.15  # seconds a file must stay quiet before it is handled
DELETE_GRACE = 1.5  # seconds a file must stay gone before its deletion is committed
RETRY_PENDING = 0.5  # seconds between tries to commit edits a git command held up
INDEX_SETTLE = 0.1  # seconds after git's index changes before it is looked at (changes meanwhile: one look)
ChangeKind = str  # "updated" | "created" | "deleted"


def _not_a_stop_race(record: logging.LogRecord) -> bool:
    """Drop watchdog's error for an inotify read that ends as the observer stops (watchdog 7.x logs it at
    every stop that races a read): shown under memstore's name, a host's log would carry it as an error."""
    return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_not_a_stop_race)


class Watcher:
    """Watch a workspace; `start()` / `stop()`, or use as a context manager."""

    def __init__(self, store: Store, on_change: Callable[[str, ChangeKind], None] | None = None,
                 on_pick_up: Callable[[PickUp], None] | None = None, debounce: float = DEBOUNCE) -> None:
        self.store = store
        self.on_change = on_change
        self.on_pick_up = on_pick_up
        self.debounce = debounce
        self._due: dict[str, float] = {}
        self._seen: dict[str, str | None] = {}  # rel -> blob last reported
        self._grace: dict[str, float] = {}  # missing files -> when their deletion may be committed
        self._next_retry = 0.0  # when pending edits are next tried
        self._index_due: float | None = None  # when git's index, changed since, is next looked at
        self.ready = threading.Event()  # set once the start-up scan is done
        self._cond = threading.Condition()
        self._stopping = False
        self._error_of: str | None = None  # the file (or "(pending edits)") of the error recorded last
        self._blocked: set[str] = set()  # files refused while a git operation was under way: looked at once it ends
        self._observer = Observer()
        self._worker = threading.Thread(target=self._run, name="memstore-watcher", daemon=True)

    def start(self) -> Watcher:
        root = self.store.ws.root
        handler = _Handler(root, self._touch)
        for folder in (self.store.ws.blocks_dir, self.store.ws.agents_dir):
            folder.mkdir(exist_ok=True)
            self._observer.schedule(handler, str(folder), recursive=False)
        git_dir = self.store.ws.git.git_dir
        self._observer.schedule(_IndexHandler(git_dir / "index", self._index_touched), str(git_dir),
                                recursive=False)
        self._remember_current()
        self._observer.start()
        self._worker.start()  # it first looks for waiting hand edits, so a server's start is not delayed
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._worker.join(timeout=5)

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _touch(self, rel: str) -> None:
        with self._cond:
            self._due[rel] = time.monotonic() + self.debounce
            self._cond.notify_all()

    def _index_touched(self) -> None:
        with self._cond:
            if self._index_due is None:
                self._index_due = time.monotonic() + INDEX_SETTLE
                self._cond.notify_all()

    def _index_ready(self) -> bool:
        with self._cond:
            due = self._index_due is not None and self._index_due <= time.monotonic()
            if due:
                self._index_due = None
            return due

    def _repair_index(self) -> None:
        try:
            self.store.commits.repair_index()
            for rel in self.store.commits.restore_aborted():  # a `git rebase --abort` writes the index too
                self._report(rel)
            self._cleared("(git's index)")
        except (MemstoreError, OSError) as exc:  # a lock held long: the next change of the index tries again
            self._record_error("(git's index)", exc)
            self._block_if_git_busy("(git's index)")
        except Exception as exc:  # the watcher must outlive any one look at the index  # noqa: BLE001
            self._record_error("(git's index)", exc, detail=traceback.format_exc())

    def _run(self) -> None:
        try:
            self._scan()
        finally:
            self.ready.set()
        while True:
            with self._cond:
                while not self._stopping and not self._ready() and not self._retry_due():
                    self._cond.wait(timeout=self._wait_time())
                if self._stopping:
                    return
                now = time.monotonic()
                ready = [rel for rel, due in self._due.items() if due <= now]
                for rel in ready:
                    del self._due[rel]
            for rel in ready:
                self._handle(rel)
            if self._index_ready():
                self._repair_index()
            if self._retry_due():
                self._retry_pending()
            if self._blocked and self.store.ws.git.in_progress() is None:
                self._unblock()

    def _retry_due(self) -> bool:
        return time.monotonic() >= self._next_retry and bool(self.store.commits.pending_files())

    def _retry_pending(self) -> None:
        """Commit edits that waited for a git command's lock, now that it may be let go."""
        self._next_retry = time.monotonic() + RETRY_PENDING
        try:
            waiting = self.store.commits.pending_files()
            still = set(self.store.commits.finish_all())
        except (MemstoreError, OSError) as exc:
            self._record_error("(pending edits)", exc)
            return
        except Exception as exc:  # the watcher must outlive any one retry  # noqa: BLE001
            self._record_error("(pending edits)", exc, detail=traceback.format_exc())
            return
        self._cleared("(pending edits)")
        for rel in waiting:
            if rel not in still:
                log.info("%s: committed an edit that waited for its commit", rel)
                self._report(rel)

    def _ready(self) -> bool:
        now = time.monotonic()
        return any(due <= now for due in (*self._due.values(), self._index_due or now + 1))

    def _wait_time(self) -> float | None:
        times = [*self._due.values(), *([self._index_due] if self._index_due is not None else [])]
        due = max(0.0, min(times) - time.monotonic()) if times else None
        if self._blocked:  # is the git operation that refused them over yet?
            due = RETRY_PENDING if due is None else min(due, RETRY_PENDING)
        if self.store.commits.pending_files():
            retry = max(0.0, self._next_retry - time.monotonic())
            due = retry if due is None else min(due, retry)
        return due

    def _handle(self, rel: str) -> None:
        try:
            if self._deletion_needs_grace(rel):
                return
            result = pick_up(self.store, rel)
            if result.action != "unchanged":
                _log_pick_up(result)
                if self.on_pick_up is not None:
                    self.on_pick_up(result)
            self._report(rel)
            self._cleared(rel)
        except (MemstoreError, OSError) as exc:
            self._record_error(rel, exc)
            self._block_if_git_busy(rel)
        except Exception as exc:  # the watcher must outlive any one file or callback  # noqa: BLE001
            self._record_error(rel, exc, detail=traceback.format_exc())

    def _scan(self) -> None:
        """Look at every file that differs from its last commit (at start, and after a git operation that
        refused the look ends)."""
        try:
            for rel in self._pending_at_start():
                self._touch(rel)
            self._cleared("(start-up scan)")
        except Exception as exc:  # the watcher must keep running without its start-up scan  # noqa: BLE001
            self._record_error("(start-up scan)", exc, detail=traceback.format_exc())
            self._block_if_git_busy("(start-up scan)")

    def _block_if_git_busy(self, rel: str) -> None:
        """A file refused while a git operation is under way (a rebase, a merge) is looked at again once it ends:
        a hand edit saved meanwhile is committed then, not at the next change of that file."""
        if self.store.ws.git.in_progress() is not None:
            self._blocked.add(rel)

    def _unblock(self) -> None:
        blocked, self._blocked = self._blocked, set()
        for rel in sorted(blocked):
            if rel == "(start-up scan)":
                self._scan()
            elif rel == "(git's index)":
                self._repair_index()
            else:
                self._touch(rel)

    def _deletion_needs_grace(self, rel: str) -> bool:
        """A vanished file may be an editor's save in progress: it must stay gone DELETE_GRACE."""
        now = time.monotonic()
        if (self.store.ws.root / rel).exists() or self.store.commits.head_blob(rel) is None:
            self._grace.pop(rel, None)
            return False
        deadline = self._grace.setdefault(rel, now + DELETE_GRACE)
        if now >= deadline:
            del self._grace[rel]
            return False
        with self._cond:
            self._due[rel] = max(self._due.get(rel, 0.0), deadline)
            self._cond.notify_all()
        return True

    def _report(self, rel: str) -> None:
        """Tell `on_change` when the file's content differs from what was last reported."""
        data = self.store.commits.read(rel)
        blob = blob_id(data) if data is not None else None
        before = self._seen.get(rel, "unknown")
        if blob == before:
            return
        self._seen[rel] = blob
        kind = "deleted" if blob is None else "created" if before in (None, "unknown") else "updated"
        if self.on_change is not None:
            self.on_change(rel, kind)

    def _record_error(self, rel: str, exc: BaseException, detail: str = "") -> None:
        message = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {rel}: {exc}"
        log.error("%s%s", message, f"\n{detail}" if detail else "")
        try:
            self.store.ws.write_state("watcher-error", message)
            self._error_of = rel
        except OSError:
            pass

    def _cleared(self, rel: str) -> None:
        """`rel` was handled fine: the error this watcher last recorded for it (`memstore status` shows it) is
        over (a rebase that refused it has ended), so it is no longer shown."""
        if self._error_of == rel:
            self._error_of = None
            with contextlib.suppress(OSError):
                self.store.ws.write_state("watcher-error", None)

    def _remember_current(self) -> None:
        """Each file as committed at start: a hand edit waiting now is news once picked up."""
        git = self.store.ws.git
        head = git.head_commit()  # also while HEAD is detached (a rebase under way when the watcher starts)
        for folder, kind in ((self.store.ws.blocks_dir, "blocks"), (self.store.ws.agents_dir, "agents")):
            for path in folder.glob("*.md"):
                rel = f"{kind}/{path.name}"
                if is_watched(rel):
                    self._seen[rel] = git.blob_at(head, rel) if head else None

    def _pending_at_start(self) -> list[str]:
        """Files that already differ from their last commit when the watcher starts."""
        from .handedits import status

        report = status(self.store)
        return [*report.uncommitted, *(p.path for p in report.invalid)]


def _log_pick_up(result: PickUp) -> None:
    if result.problem:
        log.warning("%s: not committed: %s", result.path, result.problem)
        return
    if result.action == "recovered":
        log.info("%s: committed edits that waited (for git, or after their writer died), commit %s", result.path,
                 (result.version or "?")[:12])
        return
    log.info("%s: %s by hand, commit %s", result.path, result.action, (result.version or "?")[:12])
    if result.notice:
        log.warning("%s", result.notice)


class _IndexHandler(FileSystemEventHandler):
    """Calls `touched` when git's index is written (git renames `index.lock` over it)."""

    def __init__(self, index: Path, touched: Callable[[], None]) -> None:
        self.index = str(index)
        self.touched = touched

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory and self.index in (str(event.src_path), str(getattr(event, "dest_path", ""))):
            self.touched()


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into workspace-relative paths of block and agent files."""

    def __init__(self, root: Path, touch: Callable[[str], None]) -> None:
        self.root = root
        self.touch = touch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            try:
                rel = Path(str(path)).relative_to(self.root).as_posix()
            except ValueError:
                continue
            if is_watched(rel):
                self.touch(rel)
