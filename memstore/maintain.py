"""Background maintenance of a workspace's repository: `python -P memstore/maintain.py WORKDIR`.

Packs loose objects (`git gc --auto`) and refreshes the commit-graph with changed-path
filters, so a block's history stays fast in a repository of 100k commits. It runs at the
lowest priority, one run at a time (a second start while one runs does nothing), and
leaves out the steps that lock the branch (packing refs, expiring reflogs): run slowly,
they would hold up every commit; a person's own `git gc` still does them. It is run as a
script and imports nothing of the package (see `history.maintain`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import filelock

_GC = ["git", "-c", "gc.autoDetach=false", "-c", "gc.writeCommitGraph=false", "-c", "gc.packRefs=false",
       "-c", "gc.reflogExpire=never", "-c", "gc.reflogExpireUnreachable=never", "gc", "--auto", "--quiet"]
_GRAPH = ["git", "commit-graph", "write", "--reachable", "--changed-paths", "--split", "--size-multiple=4"]


MAINTAIN_LOCK = "maintain.lock"  # in .memstore/locks/: held while a run is under way


def run(workdir: str, held_fd: int | None = None) -> None:
    """One run; `held_fd`: the lock, already taken by the process that started this one."""
    if hasattr(os, "nice"):
        os.nice(19)
    if held_fd is not None:
        try:
            _steps(workdir)
        finally:
            os.close(held_fd)
        return
    lock = filelock.FileLock(os.path.join(workdir, ".memstore", "locks", MAINTAIN_LOCK))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return
    try:
        _steps(workdir)
    finally:
        lock.release()


def _steps(workdir: str) -> None:
    for command in (_GC, _GRAPH):
        subprocess.run(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
