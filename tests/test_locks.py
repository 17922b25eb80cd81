"""FairLock: first come, first served, and never two holders, even when a waiter dies in line."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from memstore.errors import LockTimeoutError
from memstore.locks import FairLock

ROOT = Path(__file__).resolve().parent.parent
WAITER = """
import sys
from pathlib import Path
from memstore.locks import FairLock
FairLock(Path(sys.argv[1])).acquire(queued=lambda ticket: print("queued", flush=True))
print("acquired", flush=True)
"""


def _dead_waiter(path: Path) -> None:
    """A process that queues behind the holder and is killed while it waits."""
    proc = subprocess.Popen([sys.executable, "-c", WAITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "queued"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()


def test_a_waiter_dying_in_line_lets_no_one_past_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = FairLock(path)
    holder.acquire()
    _dead_waiter(path)
    entered = threading.Event()
    late = FairLock(path)
    thread = threading.Thread(target=lambda: (late.acquire(), entered.set(), late.release()))
    thread.start()
    assert not entered.wait(0.5)  # its predecessor in line is gone, but the holder is not
    holder.release()
    assert entered.wait(10)
    thread.join(10)


def test_waiting_past_the_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = FairLock(path)
    holder.acquire()
    _dead_waiter(path)
    started = time.monotonic()
    with pytest.raises(LockTimeoutError, match="x.lock stayed locked"):
        FairLock(path, timeout=0.3).acquire()
    assert time.monotonic() - started < 10
    holder.release()
    with FairLock(path):  # nothing was left held by the one that gave up
        pass


def test_waiters_enter_in_arrival_order(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = FairLock(path)
    holder.acquire()
    order: list[int] = []
    threads = []
    for n in range(5):
        lock = FairLock(path)
        queued = threading.Event()

        def run(lock: FairLock = lock, n: int = n, queued: threading.Event = queued) -> None:
            lock.acquire(queued=lambda _ticket: queued.set())
            order.append(n)
            lock.release()

        threads.append(threading.Thread(target=run))
        threads[-1].start()
        assert queued.wait(10)
    holder.release()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_waiters_behind_a_hung_holder_all_give_up_at_their_timeout(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = FairLock(path)
    holder.acquire()
    gave_up: list[float] = []
    started = time.monotonic()

    def wait() -> None:
        with pytest.raises(LockTimeoutError):
            FairLock(path, timeout=1.0).acquire()
        gave_up.append(time.monotonic() - started)

    threads = [threading.Thread(target=wait) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(gave_up) == 4
    assert max(gave_up) < 3.0  # not one timeout after another (4 s)
    holder.release()
