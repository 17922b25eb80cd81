"""Every error memstore raises, so front ends can translate one tree at their edge.

    MemstoreError
    ├── WorkspaceError          not a workspace, a repository in a state memstore will not touch
    ├── InvalidNameError        a label or name that could be a path, or is empty/too long/odd
    ├── InvalidInputError       any other bad argument (text, limit, metadata, version)
    ├── FileFormatError         a block or agent file that does not parse (names file and line)
    ├── NotFoundError           no such block / agent / version
    ├── AmbiguousNameError      a label shared by several blocks (lists the candidates)
    ├── ConflictError           a name or label that is already taken
    ├── LockTimeoutError        another process held a lock for too long
    ├── NotAllowedError         an agent asked for a change only people and admins may make
    ├── AgentTurnError          a built-in agent's turn ended by a provider fault or a malformed call
    └── EditError               a memory edit refused with nothing written (Letta's wording)
        ├── ReadOnlyError
        ├── LimitExceededError
        ├── InvalidInsertLineError
        └── ReplaceError        old text missing or not unique
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class MemstoreError(Exception):
    """Base of every memstore error; the message is meant for people and models alike."""


class WorkspaceError(MemstoreError):
    """The folder is not a memstore workspace, or its repository is in a state we must not touch."""


class InvalidNameError(MemstoreError, ValueError):
    """A label, block name or agent name that is not allowed."""


class InvalidInputError(MemstoreError, ValueError):
    """A bad argument other than a name."""


_MAX_PROBLEM = 500  # characters of a file problem's text


class FileFormatError(MemstoreError):
    """A block or agent file that cannot be parsed."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        if len(problem) > _MAX_PROBLEM:  # a value quoted from a hostile file stays readable
            problem = problem[: _MAX_PROBLEM - 20] + " … (cut)"
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}, line {line}" if line else path
        super().__init__(f"{where}: {problem}")


class NotFoundError(MemstoreError, LookupError):
    """No block, agent or version by that name."""


class AmbiguousNameError(MemstoreError, LookupError):
    """A name that matches several blocks."""

    def __init__(self, name: str, candidates: Sequence[str]) -> None:
        self.name, self.candidates = name, list(candidates)
        listed = ", ".join(self.candidates)
        super().__init__(
            f"Label '{name}' is used by {len(self.candidates)} blocks: {listed}. "
            "Name the block by its id or file name instead."
        )


class ConflictError(MemstoreError):
    """A name or label that is already taken where it must be unique."""


class PreconditionFailedError(ConflictError):
    """An edit made against a version of a block that is no longer its current one; nothing was written."""


class LockTimeoutError(MemstoreError, TimeoutError):
    """A lock stayed held by another process past the timeout."""


class NotAllowedError(MemstoreError, PermissionError):
    """An agent (or MCP host) asked for a change reserved to people and admins."""


class AgentTurnError(MemstoreError):
    """A turn the provider or the model ended early; `result` (a TurnResult) holds what it did."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class EditError(MemstoreError):
    """A memory edit refused; nothing was written."""


class ReadOnlyError(EditError):
    def __init__(self, label: str) -> None:
        self.label = label
        super().__init__(f"Error This block is read-only and cannot be edited. (block `{label}`)")


class LimitExceededError(EditError):
    def __init__(self, label: str, limit: int, requested: int) -> None:
        self.label, self.limit, self.requested = label, limit, requested
        super().__init__(
            f"Edit failed: Exceeds {limit} character limit (requested {requested}) in block `{label}`. "
            "Shorten the text or raise the block's limit."
        )


class InvalidInsertLineError(EditError):
    def __init__(self, insert_line: object, n_lines: int) -> None:
        self.insert_line, self.n_lines = insert_line, n_lines
        super().__init__(
            f"Invalid `insert_line` parameter: {insert_line}. It should be within the range of lines "
            f"of the memory block: [0, {n_lines}], or -1 to append to the end of the memory block."
        )


class ReplaceError(EditError):
    """`old_str` did not occur exactly once (or, for core_memory_replace, not at all)."""


def os_error_text(exc: OSError) -> str:
    """One line for a failure of the system (a full disk, a read-only file system), naming the file."""
    import errno

    reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.EDQUOT: "the disk quota is exceeded"}.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{reason}{where}"
