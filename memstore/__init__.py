"""memstore: shared memory blocks for LLM agents, kept as markdown files in a git repository."""

from .errors import (
    AmbiguousNameError,
    ConflictError,
    EditError,
    FileFormatError,
    InvalidInputError,
    InvalidInsertLineError,
    InvalidNameError,
    LimitExceededError,
    LockTimeoutError,
    MemstoreError,
    NotAllowedError,
    NotFoundError,
    ReadOnlyError,
    ReplaceError,
    WorkspaceError,
)
from .models import DEFAULT_LIMIT, Actor, Agent, Block, EditResult, HistoryEntry, validate_name
from .store import Store
from .validation import KNOWN_TOOLS

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMIT",
    "KNOWN_TOOLS",
    "Actor",
    "Agent",
    "AmbiguousNameError",
    "Block",
    "ConflictError",
    "EditError",
    "EditResult",
    "FileFormatError",
    "HistoryEntry",
    "InvalidInputError",
    "InvalidInsertLineError",
    "InvalidNameError",
    "LimitExceededError",
    "LockTimeoutError",
    "MemstoreError",
    "NotAllowedError",
    "NotFoundError",
    "ReadOnlyError",
    "ReplaceError",
    "Store",
    "WorkspaceError",
    "__version__",
    "validate_name",
]
