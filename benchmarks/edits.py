"""Edit, concurrency and history figures for memstore, all measured in one run.

    python benchmarks/edits.py            # full run (a few minutes: builds a 100k-commit repo)
    python benchmarks/edits.py --quick    # smaller counts, for a smoke run
    python benchmarks/edits.py --dir D    # make the test repositories under D (default: the temp folder)

Prints memstore's single-writer edit latency beside two references made in the same run on
the same machine: the naive GitPython path (`repo.index.add` + `repo.index.commit`) and the
fastest raw commit this script can make (objects written directly plus a ref update).
The 8-writer runs are repeated (`--rounds`, default 3) with two probes before each, because
a virtual disk's speed can swing several-fold within minutes: a raw commit, and the cost of
creating one new file. A commit by git's rules creates at least six (blob, two trees,
commit, the branch's new ref file, the new index) and an edit a seventh (the block file's
replacement), so on a file system where creating a file is slow, that cost bounds every
figure here. Run with `--dir` on another file system (a RAM disk, say) to separate the two.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import git
import pygit2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ms, pct  # noqa: E402 - beside this script
from memstore import Store  # noqa: E402
from memstore.gitrepo import GitRepo, Ident  # noqa: E402

WHO = pygit2.Signature("bench", "bench@example.com")


def timed(n: int, step) -> list[float]:
    return interleaved(n, [step])[0]


def interleaved(n: int, steps: list) -> list[list[float]]:
    """Time each step n times, taking turns, so a disk that slows down mid-run hits all alike."""
    out: list[list[float]] = [[] for _ in steps]
    for i in range(n):
        for step, lat in zip(steps, out):
            start = time.perf_counter()
            step(i)
            lat.append(time.perf_counter() - start)
    return out


def line(name: str, lat: list[float]) -> str:
    return (f"  {name:<44} p50 {ms(pct(lat, 50)):>10}  p95 {ms(pct(lat, 95)):>10}  "
            f"{len(lat) / sum(lat):8.0f} edits/s")


# -- single writer --------------------------------------------------------------------------

def memstore_step(root: Path):
    store = Store.init(root / "memstore")
    block = store.create_block("organization", "Organization: Letta", limit=1_000_000)
    actor = store.create_agent("agent1", "openai/gpt-4o-mini", block_ids=[block.id]).actor()
    store.memory_insert("organization", "warm-up", actor=actor)
    return lambda i: store.memory_insert("organization", f"agent1: fact {i}", actor=actor)


def gitpython_step(root: Path):
    repo = git.Repo.init(root / "naive", initial_branch="main")
    path = Path(repo.working_tree_dir) / "blocks" / "organization.md"
    path.parent.mkdir()
    path.write_text("---\nlabel: organization\n---\nOrganization: Letta\n")
    repo.index.add(["blocks/organization.md"])
    repo.index.commit("init")
    actor = git.Actor("agent1", "agent1@agents.memstore")

    def step(i: int) -> None:
        with open(path, "a") as handle:
            handle.write(f"agent1: fact {i}\n")
        repo.index.add(["blocks/organization.md"])
        repo.index.commit(f"memory_insert organization {i}", author=actor, committer=actor)

    return step


def new_file_us(root: Path, count: int = 200) -> float:
    """Median microseconds to create (and write 100 bytes to) a new file in `root`."""
    root.mkdir(parents=True)
    times = []
    for i in range(count):
        start = time.perf_counter()
        fd = os.open(root / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x" * 100)
        os.close(fd)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def settle() -> str:
    """Have the disk write out what earlier steps left (a 100,000-commit history, 10,000 block
    files), so that writing it back does not slow the figure measured next."""
    if not hasattr(os, "sync"):
        return "(the disk not flushed first: no os.sync here)"
    start = time.perf_counter()
    os.sync()
    return f"(the disk flushed first: {time.perf_counter() - start:.1f} s)"


def raw_step(root: Path):
    """libgit2's plumbing alone: blob, the two trees on the path, commit, branch move (no index)."""
    repo = git.Repo.init(root / "raw", initial_branch="main")
    (Path(repo.working_tree_dir) / "x").write_text("x")
    repo.index.add(["x"])
    repo.index.commit("init")
    lg = pygit2.Repository(repo.working_tree_dir)
    state = {"value": b"Organization: Letta\n"}

    def step(i: int) -> None:
        state["value"] += b"agent1: fact %d\n" % i
        blob = lg.create_blob(state["value"])
        head = lg.references["refs/heads/main"]
        tree = lg[head.target].peel(pygit2.Tree)
        sub = lg.TreeBuilder(tree["blocks"]) if "blocks" in tree else lg.TreeBuilder()
        sub.insert("organization.md", blob, pygit2.GIT_FILEMODE_BLOB)
        top = lg.TreeBuilder(tree)
        top.insert("blocks", sub.write(), pygit2.GIT_FILEMODE_TREE)
        commit = lg.create_commit(None, WHO, WHO, f"edit {i}\n", top.write(), [head.target])
        head.set_target(commit, "bench")

    return step


# -- many writers ---------------------------------------------------------------------------

def worker(ws: str, agent: str, label: str, count: int, go: str, out: str) -> None:
    store = Store.open(ws)
    actor = store.get_agent(agent).actor()
    Path(f"{out}.ready").touch()
    while not Path(go).exists():
        time.sleep(0.0005)
    lat, starts = [], []
    for i in range(count):
        start = time.perf_counter()
        starts.append(time.time())
        store.memory_insert(label, f"{agent}-{i}", actor=actor)
        lat.append(time.perf_counter() - start)
    Path(out).write_text(json.dumps({"lat": lat, "start": starts[0], "end": time.time()}))


def bench_writers(root: Path, writers: int, count: int, shared: bool) -> dict[str, float]:
    store = Store.init(root)
    labels = ["shared"] if shared else [f"b{n}" for n in range(writers)]
    ids = {label: store.create_block(label, "", limit=1_000_000).id for label in labels}
    for n in range(writers):
        store.create_agent(f"w{n}", "m/x", block_ids=[ids[labels[0 if shared else n]]])
    go = root / ".memstore" / "go"
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(root), f"w{n}",
                               labels[0 if shared else n], str(count), str(go), str(root / f".memstore/out{n}")])
             for n in range(writers)]
    deadline = time.monotonic() + 120
    while not all((root / f".memstore/out{n}.ready").exists() for n in range(writers)):
        if time.monotonic() > deadline:  # every worker imports and opens the store before the start
            raise SystemExit("the writer processes did not start")
        time.sleep(0.01)
    go.touch()
    for proc in procs:
        proc.wait()
    results = [json.loads((root / f".memstore/out{n}").read_text()) for n in range(writers)]
    lat = [x for r in results for x in r["lat"]]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    values = "\n".join(store.get_block(label).value for label in labels).split("\n")
    expected = {f"w{n}-{i}" for n in range(writers) for i in range(count)}
    lost = len(expected - set(values))
    commits = int(subprocess.run(["git", "rev-list", "--count", "HEAD", "--author=agents.memstore"], cwd=root,
                                 capture_output=True, text=True).stdout)
    return {"rate": len(lat) / span, "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat), "lost": lost,
            "missing_commits": writers * count - commits}


# -- history and size -----------------------------------------------------------------------

def block_file(n: int, value: str) -> str:
    return (f"---\nid: block-00000000-0000-0000-0000-{n:012d}\nlabel: b{n}\ndescription: null\nlimit: 100000\n"
            f"read_only: false\nmetadata: {{}}\n---\n{value}\n")


def fast_import(root: Path, commits: int, blocks: int) -> None:
    """Build a workspace with `blocks` blocks and `commits` commits through git fast-import."""
    Store.init(root)
    proc = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=root, stdin=subprocess.PIPE)
    write = proc.stdin.write
    rng = random.Random(7)
    when = 1_700_000_000

    def commit(files: dict[str, str], msg: str) -> None:
        nonlocal when
        when += 1
        write(f"commit refs/heads/main\ncommitter bench <bench@example.com> {when} +0000\n".encode())
        data = msg.encode()
        write(b"data %d\n%s\n" % (len(data), data))
        if when == 1_700_000_001:
            write(b"from refs/heads/main^0\n")
        for path, text in files.items():
            raw = text.encode()
            write(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(raw), raw))

    commit({f"blocks/b{n}.md": block_file(n, "start") for n in range(blocks)}, "create blocks")
    for i in range(commits - 1):
        n = rng.randrange(blocks)
        commit({f"blocks/b{n}.md": block_file(n, f"edit {i}")}, f"memory_insert b{n}")
    proc.stdin.close()
    proc.wait()
    subprocess.run(["git", "reset", "-q", "--hard"], cwd=root, check=True)


def bench_history(root: Path, commits: int, blocks: int, runs: int = 20) -> tuple[float, float]:
    fast_import(root, commits, blocks)
    store = Store.open(root)
    store.block_history("b1", 20)

    def measure() -> float:
        return statistics.median(timed(runs, lambda i: store.block_history("b1", 20)))

    plain = measure()
    subprocess.run(["git", "commit-graph", "write", "--reachable", "--changed-paths"], cwd=root, check=True,
                   capture_output=True)
    return plain, measure()


def blocks_step(root: Path, blocks: int):
    fast_import(root, 1, blocks)
    store = Store.open(root)
    labels = [f"b{i}" for i in range(blocks)]
    rng = random.Random(3)
    store.memory_insert(labels[0], "warm-up")
    return lambda i: store.memory_insert(rng.choice(labels), f"fact {i}")


def engine_steps(root: Path, blocks: int) -> list:
    """The commit of one block change, two designs side by side on copies of one workspace.

    libgit2 alone rewrites both trees (TreeBuilder) and the whole index (`Index.add` +
    `write`); memstore's `GitRepo.commit` patches the one tree entry and index entry.
    Each step writes the file and its blob first, as an edit does.
    """
    fast_import(root / "libgit2", 1, blocks)
    fast_import(root / "memstore", 1, blocks)
    lg = pygit2.Repository(str(root / "libgit2"))
    ours = GitRepo(root / "memstore")
    who = Ident("bench", "bench@example.com")

    def libgit2(i: int) -> None:
        data = block_file(0, f"libgit2 {i}").encode()
        (root / "libgit2/blocks/b0.md").write_bytes(data)
        blob = lg.create_blob(data)
        head = lg.references["refs/heads/main"]
        tree = lg[head.target].peel(pygit2.Tree)
        sub = lg.TreeBuilder(tree["blocks"])
        sub.insert("b0.md", blob, pygit2.GIT_FILEMODE_BLOB)
        top = lg.TreeBuilder(tree)
        top.insert("blocks", sub.write(), pygit2.GIT_FILEMODE_TREE)
        head.set_target(lg.create_commit(None, WHO, WHO, f"edit {i}\n", top.write(), [head.target]), "bench")
        index = lg.index
        index.read()
        index.add("blocks/b0.md")
        index.write()

    def memstore(i: int) -> None:
        data = block_file(0, f"memstore {i}").encode()
        path = root / "memstore/blocks/b0.md"
        path.write_bytes(data)
        ours.commit([("blocks/b0.md", ours.write_blob(data))], who, f"edit {i}\n", who,
                    written={"blocks/b0.md": os.stat(path)})

    return [libgit2, memstore]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--rounds", type=int, help="rounds of the 8-writer runs (default 3, quick 1)")
    parser.add_argument("--dir", help="where to make the test repositories (default: the system temp folder)")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="memstore-bench-", dir=args.dir))
    try:
        _run(args, root)
    finally:
        _remove(root)


def _remove(root: Path) -> None:
    """Delete the test repositories; memstore's background `git gc` may still be writing in one."""
    for _ in range(30):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(1)
    print(f"could not remove {root}", file=sys.stderr)


def _run(args: argparse.Namespace, root: Path) -> None:
    """Every figure, printed as it is measured."""
    n = 200 if args.quick else 1000
    per_writer = 50 if args.quick else 200
    big_history = 10_000 if args.quick else 100_000
    print(f"memstore edit benchmark ({'quick' if args.quick else 'full'}), python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, repositories in {root} (creating a new file there: "
          f"{new_file_us(root / 'files-start'):.0f} us)")
    print(f"\nSingle writer, {n} memory_insert edits into one block (the three paths take turns):")
    mem, naive, raw = interleaved(n, [memstore_step(root), gitpython_step(root), raw_step(root)])
    for name, lat in (("memstore (lock+read+validate+write+commit)", mem),
                      ("naive GitPython (index.add + index.commit)", naive),
                      ("raw commit (objects + ref update)", raw)):
        print(line(name, lat))
    print(f"  memstore p50 / naive p50 = {pct(mem, 50) / pct(naive, 50):.2f}  (goal <= 0.50);  "
          f"memstore p50 / raw p50 = {pct(mem, 50) / pct(raw, 50):.2f}")

    print(f"\n8 writer processes x {per_writer} edits, {args.rounds} round(s); before each round the raw "
          "commit p50 of 100 commits and the median cost of creating a new file show how fast the disk is "
          "just then:")
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for rnd in range(args.rounds):
        probe = pct(timed(100, raw_step(root / f"probe-{rnd}")), 50)
        print(f"  round {rnd + 1} (raw commit p50 {ms(probe)}, new file {new_file_us(root / f'files-{rnd}'):.0f} us):")
        for shared in (True, False):
            where = "one block" if shared else "8 blocks"
            r = bench_writers(root / f"writers-{rnd}-{where[0]}", 8, per_writer, shared)
            runs[shared].append(r)
            print(f"    {where:<9} {r['rate']:4.0f} edits/s   p50 {ms(r['p50'])}   p99 {ms(r['p99'])}   "
                  f"max {ms(r['max'])}   p99/p50 {r['p99'] / r['p50']:.1f}   lost updates {r['lost']}   "
                  f"edits without a commit {r['missing_commits']}")
    for shared in (True, False):
        rs = runs[shared]
        print(f"  {'one block' if shared else '8 blocks'}: median {statistics.median(r['rate'] for r in rs):.0f}"
              f" edits/s (goal >= 250), worst p99/p50 {max(r['p99'] / r['p50'] for r in rs):.1f} (goal <= 10), "
              f"lost updates {sum(r['lost'] for r in rs):.0f} (goal 0)")

    print("\nblock_history(limit=20), one block among 200, median of 20 calls:")
    for commits in (1000, big_history):
        plain, graph = bench_history(root / f"history-{commits}", commits, 200)
        print(f"  {commits:>7} commits: {ms(plain)} without commit-graph, {ms(graph)} with "
              "commit-graph + changed-path filters (goal <= 100 ms)")

    steps = [blocks_step(root / "blocks-10", 10), blocks_step(root / "blocks-10000", 10_000)]
    print(f"\nEdit latency by workspace size, {n // 2} edits by label into random blocks (taking turns) "
          f"{settle()}:")
    small, large = interleaved(n // 2, steps)
    print(line("10 blocks", small))
    print(line("10,000 blocks", large))
    print(f"  10,000 / 10 p50 = {pct(large, 50) / pct(small, 50):.2f}  (goal <= 2.0)")

    print(f"\nThe commit of one change, two designs side by side (libgit2 rewrites trees and index; memstore "
          f"patches one entry of each), {n // 2} commits each, taking turns:")
    for blocks in (10, 10_000):
        steps = engine_steps(root / f"engine-{blocks}", blocks)
        settle()
        lib, ours = interleaved(n // 2, steps)
        print(line(f"{blocks:,} blocks, libgit2 TreeBuilder + Index", lib))
        print(line(f"{blocks:,} blocks, memstore patches", ours))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], sys.argv[7])
    else:
        main()
