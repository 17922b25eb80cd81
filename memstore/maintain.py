"""Background maintenance of a workspace's repository: `python -m memstore.maintain WORKDIR`.

Packs loose objects (`git gc --auto`) and refreshes the commit-graph with changed-path
filters, so a block's history stays fast in a repository of 100k commits. It runs at the
lowest priority, one run at a time (a second start while one runs does nothing), and
leaves out the steps that lock the branch (packing refs, expiring reflogs): run slowly,
they would hold up every commit; a person's own `git gc` still does them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import filelock

_GC = ["git", "-c", "gc.autoDetach=false", "-c", "gc.writeCommitGraph=false", "-c", "gc.packRefs=false",
       "-c", "gc.reflogExpire=never", "-c", "gc.reflogExpireUnreachable=never", "gc", "--auto", "--quiet"]
_GRAPH = ["git", "commit-graph", "write", "--reachable", "--changed-paths", "--split", "--size-multiple=4"]


def run(workdir: str) -> None:
    if hasattr(os, "nice"):
        os.nice(19)
    lock = filelock.FileLock(os.path.join(workdir, ".memstore", "locks", "maintain.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return
    try:
        for command in (_GC, _GRAPH):
            subprocess.run(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
    finally:
        lock.release()


if __name__ == "__main__":
    run(sys.argv[1])
