"""memstore: shared memory blocks for LLM agents, kept as markdown files in a git repository."""

from .agents.messages import TurnResult
from .errors import (
    AgentTurnError,
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
    PreconditionFailedError,
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
    "AgentTurnError",
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
    "PreconditionFailedError",
    "ReadOnlyError",
    "ReplaceError",
    "Store",
    "TurnResult",
    "WorkspaceError",
    "__version__",
    "validate_name",
]
