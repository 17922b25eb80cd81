"""Portable file operations: whole writes, atomic replacement, process checks.

Windows refuses to replace a file that another program (an editor, a virus scanner)
holds open for a moment; `replace_file` retries there instead of failing the edit.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

_REPLACE_TRIES = 50  # about a second of retries where Windows refuses a rename

# MEMSTORE_PORTABLE=1 takes, on Linux too, the paths other systems need: locks made without
# hard links (as on FAT and some network shares) and renames retried as on Windows. The
# suite runs the engine's tests this way (tests/test_portable.py).
PORTABLE = os.environ.get("MEMSTORE_PORTABLE") == "1"


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
            if (sys.platform != "win32" and not PORTABLE) or attempt == _REPLACE_TRIES - 1:
                raise
            time.sleep(0.02)


def write_atomic(path: Path, data: bytes, tmp_dir: Path, *, flush: bool = False,
                 tmp_name: str | None = None, before: Callable[[], None] | None = None) -> os.stat_result:
    """Replace `path` with `data` by writing a temp file and renaming it: never a torn file.

    The new file's stat, taken before it is in place (so it is this file's, whatever
    happens to `path` afterwards). The temp file is `<tmp_name or path's name>.<pid>.<random>`.
    `before` runs right before the rename; what it raises leaves `path` untouched.
    """
    tmp = tmp_dir / f"{tmp_name or path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        write_all(fd, data)
        if flush:
            os.fsync(fd)
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if before is not None:
            before()
        try:
            replace_file(tmp, path)
        except FileNotFoundError:  # a new folder (an agent's first conversation log)
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return st


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


MAX_FILE = 64 * 1024 * 1024  # bytes: no workspace file memstore reads may be bigger


class RefusedFile(Exception):
    """A path memstore will not read: a symbolic link, a special file, or too big."""


def read_regular(root: Path, rel: str, max_size: int = MAX_FILE) -> bytes | None:
    """The bytes of workspace file `rel` (a `/` path), or None if there is none.

    Only a regular file reached through real folders is read: a symbolic link (to a file or
    a folder), a FIFO, a device or a file over `max_size` raises RefusedFile, so nothing
    outside the workspace is ever read and no read can hang or fill memory.
    """
    path = root
    parts = rel.split("/")
    for part in parts[:-1]:
        path = path / part
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            raise RefusedFile(f"{path.relative_to(root).as_posix()}/ is a symbolic link; memstore reads only "
                              "files inside the workspace")
        if not stat.S_ISDIR(st.st_mode):
            return None
    path = path / parts[-1]
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    _check_regular(st, rel, max_size)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a link since
            raise RefusedFile(f"{rel} is a symbolic link; memstore reads only regular files") from None
        raise
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            _check_regular(now, rel, max_size)  # replaced since the check: judge what was opened
        chunks, left = [], max_size + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_size:
        raise RefusedFile(f"{rel} is larger than {max_size:,} bytes")
    return data


def _check_regular(st: os.stat_result, rel: str, max_size: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise RefusedFile(f"{rel} is a symbolic link; memstore reads only regular files inside the workspace")
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(rel)
    if not stat.S_ISREG(st.st_mode):
        raise RefusedFile(f"{rel} is not a regular file (a FIFO, socket or device)")
    if st.st_size > max_size:
        raise RefusedFile(f"{rel} is {st.st_size:,} bytes; memstore reads files up to {max_size:,} bytes")
