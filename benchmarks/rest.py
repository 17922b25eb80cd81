"""Letta's API over HTTP: a block read and a block PATCH, side by side with a no-op route.

    python benchmarks/rest.py            # 400 requests of each kind
    python benchmarks/rest.py --quick    # 100 of each, for a smoke run
    python benchmarks/rest.py --pin 1    # the server process kept on CPU 1 (Linux), a probe

The server is `serve --http`'s application (MCP at /mcp, Letta's API at /v1) under uvicorn in
its own process, with routes the benchmark adds (not shipped): GET and PATCH /v1/noop, whose
round trip is the HTTP floor, and PATCH /v1/noop-core, the no-op route making the same core
edit as a block PATCH (on a block of its own), which separates the API's own cost from the
cost of making a disk-heavy call inside a request; PATCH /v1/noop-core-loop makes it on the
event loop's thread instead of a worker thread, which shows what the hand-over costs. One keep-alive client sends the requests
in turn. Goals: a read at most 1.5x the no-op; a write at most the no-op plus the core edit,
which is measured in process in the same run (store.update_block with a new value, on
another block). Every PATCH of the write comparison, the no-op's included, is sent right
after such an in-process edit, so all meet the same disk and history: here a request that
follows disk-heavy work costs more than one in a run of no-ops, whatever the route.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ms, pct  # noqa: E402 - beside this script
from memstore import Store  # noqa: E402


def serve(workspace: str, port: int) -> None:
    """The benchmark's server: serve --http's application plus the no-op routes."""
    import anyio
    import uvicorn

    from mcp_server import MemstoreServer, ServerConfig
    from mcp_server.letta_api import create_app
    from mcp_server.run import MCP_PATH, ByPath

    store = Store.open(workspace)
    letta = create_app(store)
    inside: list[float] = []  # the core's share of each PATCH, measured in the server
    update_block = store.update_block

    def timed_update(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return update_block(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            inside.append(time.perf_counter() - start)

    store.update_block = timed_update  # type: ignore[method-assign]
    control = store.get_block("control")

    @letta.patch("/v1/noop-core")
    def noop_core(body: dict[str, str]) -> dict[str, str]:
        update_block(control.id, value=body["value"])
        return {"status": "ok"}

    @letta.patch("/v1/noop-core-loop")
    async def noop_core_loop(body: dict[str, str]) -> dict[str, str]:
        """The same edit run on the event loop's thread, not handed to a worker thread (a probe only:
        a server that did this would stall every request behind an edit's lock wait)."""
        update_block(control.id, value=body["value"])
        return {"status": "ok"}

    @letta.get("/v1/noop-inside")
    def core_inside() -> list[float]:
        return inside

    @letta.get("/v1/noop")
    def noop_get() -> dict[str, str]:
        return {"status": "ok"}

    @letta.patch("/v1/noop")
    def noop_patch(body: dict[str, str]) -> dict[str, str]:
        return body

    mcp = MemstoreServer(store, ServerConfig(), notifications=False)
    app = ByPath(mcp.streamable_http_app(streamable_http_path=MCP_PATH, host="127.0.0.1"), letta, loopback_only=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    anyio.run(uvicorn.Server(config).serve)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(call, n: int) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pin", type=int, metavar="CPU",
                        help="keep the server process on one CPU: the edit then runs where the request came in")
    parser.add_argument("--serve", nargs=2, metavar=("WORKSPACE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.pin is not None:
            os.sched_setaffinity(0, {args.pin})
        serve(args.serve[0], int(args.serve[1]))
        return
    import httpx

    n = 100 if args.quick else 400
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        store = Store.init(ws)
        block = store.create_block("organization", "Organization: Letta", limit=100_000)
        core = store.create_block("core-only", "x", limit=100_000)
        store.create_block("control", "x", limit=100_000)
        core_edit: list[float] = []

        port = free_port()
        pin = [] if args.pin is None else ["--pin", str(args.pin)]
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(ws), str(port), *pin],
                                env={k: os.environ[k] for k in ("HOME", "PATH") if k in os.environ})
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                for _ in range(300):
                    try:
                        http.get("/v1/noop").raise_for_status()
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                for _ in range(20):  # warm both paths
                    http.get("/v1/noop")
                    http.get(f"/v1/blocks/{block.id}")
                noop_get = timed(lambda i: http.get("/v1/noop").raise_for_status(), n)
                read = timed(lambda i: http.get(f"/v1/blocks/{block.id}").raise_for_status(), n)
                noop_patch = timed(lambda i: http.patch("/v1/noop", json={"value": f"v{i}"}).raise_for_status(), n)
                write: list[float] = []
                noop_after: list[float] = []
                control: list[float] = []
                on_loop: list[float] = []
                for i in range(n):  # each request right after an in-process core edit: all meet the same disk
                    for kind, times in (("block", write), ("noop", noop_after), ("control", control),
                                         ("loop", on_loop)):
                        core_edit += timed(lambda _: store.update_block(core.id, value=f"core {kind} {i}"), 1)
                        path, body = {"block": (f"/v1/blocks/{block.id}", f"value {i}"),
                                      "noop": ("/v1/noop", f"v{i}"), "control": ("/v1/noop-core", f"control {i}"),
                                      "loop": ("/v1/noop-core-loop", f"loop {i}")}[kind]
                        times += timed(lambda _: http.patch(path, json={"value": body}).raise_for_status(), 1)
                inside = http.get("/v1/noop-inside").json()
        finally:
            proc.terminate()
            proc.wait(10)

    med = statistics.median
    print(f"REST over HTTP/1.1 keep-alive, {n} requests each (median, p95)")
    for name, times in (("GET /v1/noop", noop_get), ("GET /v1/blocks/{id}", read),
                        ("PATCH /v1/noop", noop_patch), ("PATCH /v1/noop, after a core edit", noop_after),
                        ("PATCH /v1/blocks/{id}", write), ("core update_block (in process)", core_edit),
                        ("  the same, inside the PATCHes", inside), ("PATCH /v1/noop-core", control),
                        ("  the same on the event loop", on_loop)):
        print(f"  {name:34s} {ms(med(times)):>10s}  {ms(pct(times, 95)):>10s}")
    read_ratio = med(read) / med(noop_get)
    budget = med(noop_after) + med(core_edit)
    print(f"read / no-op: {read_ratio:.2f}x (goal <= 1.5x: {'met' if read_ratio <= 1.5 else 'NOT met'})")
    print(f"write {ms(med(write))} vs no-op + core edit {ms(budget)}, the no-op measured where the write is, "
          f"right after a core edit (goal: {'met' if med(write) <= budget else 'NOT met'}); "
          f"with the no-op of a run of no-ops: {ms(med(noop_patch) + med(core_edit))}")
    print(f"the API's own share: PATCH /v1/blocks/{{id}} - PATCH /v1/noop-core = {ms(med(write) - med(control))}")
    print(f"handing the edit to a worker thread: PATCH /v1/noop-core - the same on the event loop = "
          f"{ms(med(control) - med(on_loop))}")


if __name__ == "__main__":
    main()
