"""`memstore status` and `memstore watch`: hand edits, seen and picked up."""

from __future__ import annotations

import logging
import signal
import threading

import click

from .cli import handle_errors, json_option, main, workspace_option
from .handedits import Status, status
from .store import Store
from .watcher import Watcher


def status_text(report: Status) -> str:
    lines = []
    if report.uncommitted:
        lines += ["Uncommitted hand edits (valid; the watcher or the next edit of the file commits them):",
                  *(f"  {rel}" for rel in report.uncommitted)]
    if report.invalid:
        lines += ["Invalid files (not committed; agents read the last committed version):",
                  *(f"  {p.problem}" for p in report.invalid)]
    if report.notices:
        lines += ["Notices:", *(f"  {n}" for n in report.notices)]
    if report.watcher_error:
        lines += [f"Watcher's last error: {report.watcher_error}"]
    return "\n".join(lines) or "Clean: every block and agent file is committed."


@main.command("status")
@workspace_option
@json_option
@handle_errors
def status_command(workspace: str | None, as_json: bool) -> None:
    """Uncommitted hand edits, invalid files with the reason, the watcher's last error."""
    report = status(Store.open(workspace))
    click.echo(report.model_dump_json(indent=2) if as_json else status_text(report))


@main.command("watch")
@workspace_option
@handle_errors
def watch_command(workspace: str | None) -> None:
    """Watch the workspace and commit hand edits as you save them (Ctrl-C stops)."""
    logging.getLogger().setLevel(logging.INFO)  # what is committed, as it happens (`main` set the format)
    store = Store.open(workspace)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with Watcher(store):
        click.echo(f"memstore: watching {store.ws.root} (Ctrl-C to stop)", err=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
