"""MCP tool-call round trips over stdio, and memory_insert throughput from 4 host processes.

    python benchmarks/mcp_roundtrip.py            # 400 calls per tool, 4 hosts x 100 inserts
    python benchmarks/mcp_roundtrip.py --quick    # smaller counts, for a smoke run

The server is memstore's own, launched over stdio the way a host launches it, with one
extra tool that the benchmark adds (`noop`, not shipped): its round trip is the protocol
floor, so get_block and memory_insert show as ratios to it. The core's own edit latency
(store.memory_insert in process) is measured in the same run for the second goal:
memory_insert over MCP <= floor + core edit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ms, pct  # noqa: E402 - beside this script
from memstore import Store  # noqa: E402


def serve(workspace: str) -> None:
    """The benchmark's server: memstore's MCP server plus a no-op tool, over stdio."""
    from mcp_server import MemstoreServer

    server = MemstoreServer(Store.open(workspace))

    def noop() -> str:
        """Do nothing (benchmark floor)."""
        return "ok"

    server.add_tool(noop, name="noop")
    server.run("stdio")


def server_params(workspace: str):
    from mcp import StdioServerParameters

    return StdioServerParameters(command=sys.executable, args=[__file__, "--serve", workspace],
                                 env={k: os.environ[k] for k in ("HOME", "PATH") if k in os.environ})


async def roundtrips(workspace: str, calls: int) -> dict[str, list[float]]:
    """Time get_block, then memory_insert, each taking turns with noop so drifts hit both alike.

    Reads and writes run in separate phases: a write's fsync slows the calls right after it,
    which would inflate the floor the read is compared with.
    """
    from mcp import Client

    phases = {
        "get_block": ("get_block", lambda i: {"block": "organization"}),
        "memory_insert": ("memory_insert", lambda i: {"label": "organization", "new_str": f"bench line {i}"}),
    }
    out: dict[str, list[float]] = {}
    async with Client(server_params(workspace), cache=None) as client:
        for name, (tool, args) in phases.items():
            floor, measured = out.setdefault(f"noop (floor for {name})", []), out.setdefault(name, [])
            for i in range(-20, calls):  # 20 warm-up rounds
                for lat, tool_, args_ in ((floor, "noop", {}), (measured, tool, args(i))):
                    start = time.perf_counter()
                    result = await client.call_tool(tool_, args_)
                    elapsed = time.perf_counter() - start
                    if result.is_error:
                        raise SystemExit(f"{tool_} failed: {result.content}")
                    if i >= 0:
                        lat.append(elapsed)
    return out


def core_edit(workspace: str, calls: int) -> list[float]:
    """store.memory_insert in this process: the core's own edit latency."""
    store = Store.open(workspace)
    lat = []
    for i in range(calls):
        start = time.perf_counter()
        store.memory_insert("organization", f"core line {i}")
        lat.append(time.perf_counter() - start)
    return lat


async def host(workspace: str, name: str, count: int, go: str) -> dict[str, object]:
    """One host process: wait for the go file, then insert `count` lines over MCP."""
    from mcp import Client
    from mcp.types import Implementation

    async with Client(server_params(workspace), cache=None, client_info=Implementation(name=name, version="1")) as c:
        await c.call_tool("noop", {})
        while not Path(go).exists():
            await anyio.sleep(0.005)
        lat = []
        start = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            result = await c.call_tool("memory_insert", {"label": "shared", "new_str": f"{name} {i}"})
            lat.append(time.perf_counter() - t)
            if result.is_error:
                raise SystemExit(f"insert failed: {result.content}")
        return {"start": start, "end": time.perf_counter(), "lat": lat}


def throughput(root: Path, hosts: int, count: int) -> None:
    ws = root / "ws-hosts"
    store = Store.init(ws)
    store.create_block("shared", limit=1_000_000)
    go = root / "go"
    procs = [subprocess.Popen([sys.executable, __file__, "--host", str(ws), f"host{n}", str(count), str(go)],
                              stdout=subprocess.PIPE, text=True) for n in range(hosts)]
    time.sleep(3)  # let every host start its server before the go signal
    go.touch()
    results = [json.loads(p.communicate()[0]) for p in procs]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    lat = [x for r in results for x in r["lat"]]
    lines = store.get_block("shared").value.split("\n")
    expected = {f"host{n} {i}" for n in range(hosts) for i in range(count)}
    lost = len(expected - set(lines))
    print(f"  {hosts} hosts x {count} memory_insert on one block: {len(lat) / wall:.0f} edits/s, "
          f"p50 {ms(pct(lat, 50))}, p99 {ms(pct(lat, 99))}, max {ms(max(lat))}, lost updates {lost}")


async def notification_latency(workspace: str, samples: int) -> list[float]:
    """Seconds from another process's edit to the subscribed client's resources/updated."""
    import warnings

    from mcp import Client, StdioServerParameters

    warnings.simplefilter("ignore")  # resources/subscribe is the 2025 protocol's way, and hosts use it
    params = StdioServerParameters(command=str(Path(sys.executable).with_name("memstore")),
                                   args=["serve", "-w", workspace],
                                   env={k: os.environ[k] for k in ("HOME", "PATH") if k in os.environ})
    arrived = anyio.Event()

    async def on_message(message: object) -> None:
        if getattr(message, "method", "") == "notifications/resources/updated":
            arrived.set()

    store = Store.open(workspace)
    out = []
    async with Client(params, mode="legacy", cache=None, message_handler=on_message) as client:
        await client.subscribe_resource("memstore://blocks/organization")
        for i in range(samples):
            arrived = anyio.Event()
            start = time.perf_counter()
            await anyio.to_thread.run_sync(lambda: store.memory_insert("organization", f"watched {i}"))
            with anyio.fail_after(10):
                await arrived.wait()
            out.append(time.perf_counter() - start)
            await anyio.sleep(0.3)  # let the watcher settle before the next sample
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", metavar="WORKSPACE", help=argparse.SUPPRESS)
    parser.add_argument("--host", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.host:
        ws, name, count, go = args.host
        print(json.dumps(anyio.run(host, ws, name, int(count), go)))
        return None
    calls, count = (100, 25) if args.quick else (400, 100)
    with tempfile.TemporaryDirectory(prefix="memstore-mcp-bench-") as tmp:
        root = Path(tmp)
        ws = root / "ws"
        Store.init(ws).create_block("organization", "Organization: memstore\n" * 20, limit=1_000_000)
        print(f"MCP round trips over stdio ({calls} calls each, taking turns):")
        lat = anyio.run(roundtrips, str(ws), calls)
        for name, values in lat.items():
            floor = statistics.median(lat[f"noop (floor for {name})"] if "floor" not in name else values)
            p50 = statistics.median(values)
            print(f"  {name:<30} p50 {ms(p50):>9}  p95 {ms(pct(values, 95)):>9}  {p50 / floor:5.2f}x floor")
        core = statistics.median(core_edit(str(ws), calls))
        insert, floor = statistics.median(lat["memory_insert"]), statistics.median(lat["noop (floor for memory_insert)"])
        print(f"  core edit (in process)         p50 {ms(core):>9}")
        print(f"  memory_insert - floor - core edit = {ms(insert - floor - core)} (goal: <= 0)")
        throughput(root, 4, count)
        late = anyio.run(notification_latency, str(ws), 10 if args.quick else 30)
        print(f"  resources/updated after another process's edit: p50 {ms(statistics.median(late))}, "
              f"max {ms(max(late))} (goal: within 1 s; the watcher waits {0.15 * 1000:.0f} ms for quiet)")


if __name__ == "__main__":
    main()
