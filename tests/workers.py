"""Writer processes for the concurrency and crash tests: `python -m tests.workers CMD …`.

`insert WS AGENT LABEL COUNT PREFIX GO`: wait for the file GO, then insert COUNT lines.
`serve WS AGENT`: read `replace LABEL OLD NEW` lines on stdin, answer `ok` or `error …`.
`forever WS AGENT LABEL PREFIX`: insert lines until killed, printing each index once committed.
`die_amid WS OP WHERE`: make an edit of several files (OP: `delete_block` of `org`, `create_agent`
`agent2` with a new block) but exit abruptly at WHERE (`second-write`: one file written, the other
not; `before-commit`: both written, no commit asked for).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from memstore import MemstoreError, Store


def _wait_for(go: Path) -> None:
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("gave up waiting for the start signal")
        time.sleep(0.001)


def insert(ws: str, agent: str, label: str, count: str, prefix: str, go: str) -> None:
    store = Store.open(ws)
    actor = store.get_agent(agent).actor()
    _wait_for(Path(go))
    for i in range(int(count)):
        store.memory_insert(label, f"{prefix}-{i}", actor=actor)


def serve(ws: str, agent: str) -> None:
    store = Store.open(ws)
    actor = store.get_agent(agent).actor()
    print("ready", flush=True)
    for line in sys.stdin:
        _, label, old, new = line.split()
        try:
            store.memory_replace(label, old, new, actor=actor)
            print("ok", flush=True)
        except MemstoreError as exc:
            print(f"error {exc}", flush=True)


def forever(ws: str, agent: str, label: str, prefix: str) -> None:
    store = Store.open(ws)
    actor = store.get_agent(agent).actor()
    i = 0
    while True:
        store.memory_insert(label, f"{prefix}-{i}", actor=actor)
        print(i, flush=True)
        i += 1


def die_amid(ws: str, op: str, where: str) -> None:
    import os

    from memstore.commits import Committer
    from memstore.store import new_block

    if where == "second-write":
        put, calls = Committer._put, []

        def put_once(self: Committer, *args: object, **kwargs: object) -> object:
            calls.append(args[0])
            if len(calls) == 2:
                os._exit(9)
            return put(self, *args, **kwargs)  # type: ignore[arg-type]

        Committer._put = put_once  # type: ignore[method-assign,assignment]
    elif where == "before-commit":
        Committer._commit_journal = lambda *args, **kwargs: os._exit(9)  # type: ignore[method-assign]
    store = Store.open(ws)
    if op == "delete_block":
        store.delete_block("org")
    else:
        store.create_agent("agent2", "openai/gpt-4o-mini", new_blocks=[new_block("persona", "I help.")])


if __name__ == "__main__":
    {"insert": insert, "serve": serve, "forever": forever, "die_amid": die_amid}[sys.argv[1]](
        *sys.argv[2:])
