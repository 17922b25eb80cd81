"""Portable file operations: whole writes, atomic replacement, process checks.

Windows refuses to replace a file that another program (an editor, a virus scanner)
holds open for a moment; `replace_file` retries there instead of failing the edit.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

_REPLACE_TRIES = 50  # about a second of retries where Windows refuses a rename


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename `src` over `dst` atomically; on Windows, retry while another program holds `dst`."""
    for attempt in range(_REPLACE_TRIES):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == _REPLACE_TRIES - 1:
                raise
            time.sleep(0.02)


def write_atomic(path: Path, data: bytes, tmp_dir: Path, *, flush: bool = False) -> None:
    """Replace `path` with `data` by writing a temp file and renaming it: never a torn file."""
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        write_all(fd, data)
        if flush:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        try:
            replace_file(tmp, path)
        except FileNotFoundError:  # a new folder (an agent's first conversation log)
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: object) -> bool:
    """True if process `pid` exists on this machine (it may belong to another user)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
