"""Typed values that cross memstore's boundary: blocks, agents, edit results, history."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from .errors import InvalidNameError

DEFAULT_LIMIT = 20_000
MAX_NAME_LENGTH = 64
AuthorKind = Literal["agent", "host", "person"]
AGENT_EMAIL_DOMAIN = "agents.memstore"

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def validate_name(name: object, kind: str = "label") -> str:
    """Return `name` if it is safe as a label and a file name, else raise InvalidNameError.

    A name is never a path: no separators, no `..`, no control characters, bounded length.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"Invalid {kind}: expected text, got {type(name).__name__}.")
    shown = name if len(name) <= 80 else name[:77] + "..."
    if not name:
        raise InvalidNameError(f"Invalid {kind}: it is empty.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"Invalid {kind} '{shown}': longer than {MAX_NAME_LENGTH} characters.")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidNameError(f"Invalid {kind} {shown!r}: it contains control characters.")
    if "/" in name or "\\" in name or ".." in name:
        article = "an" if kind[0] in "aeiou" else "a"
        raise InvalidNameError(f"Invalid {kind} '{shown}': {article} {kind} is never a path (no '/', '\\' or '..').")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"Invalid {kind} '{shown}': use letters, digits, '_', '-' or '.', "
            "starting with a letter, digit or '_'."
        )
    return name


# File names Windows cannot create, whatever follows a dot ("con.md" included).
WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                              *(f"lpt{i}" for i in range(1, 10))})


def is_name(name: str) -> bool:
    """Whether `name` passes `validate_name` (for scans that skip what they cannot name)."""
    try:
        validate_name(name)
    except InvalidNameError:
        return False
    return True


def validate_agent_name(name: object) -> str:
    """An agent's name is its file name (`agents/<name>.md`) and its log folder (`agents/<name>/`).

    Label rules, and also: never ending in `.md` (its folder would take another agent's
    file name) and never a name Windows reserves.
    """
    validate_name(name, "agent name")
    assert isinstance(name, str)
    if name.lower().endswith(".md"):
        raise InvalidNameError(f"Invalid agent name '{name}': it may not end in '.md' (agents/{name}/ would "
                               f"collide with the file of agent '{name[:-3]}').")
    if name.split(".")[0].lower() in WINDOWS_RESERVED:
        raise InvalidNameError(f"Invalid agent name '{name}': Windows reserves the file name "
                               f"'{name.split('.')[0]}'; choose another.")
    return name


def file_name_for(label: str, n: int) -> str:
    """The n-th file name tried for a block labelled `label`: the label, then `<label>-2`, …

    Where Windows reserves the part before the first dot (`aux.notes`), the number goes
    there (`aux-2.notes`), so the name is portable.
    """
    if n == 1:
        return label
    head, dot, rest = label.partition(".")
    return f"{head}-{n}{dot}{rest}" if head.lower() in WINDOWS_RESERVED else f"{label}-{n}"


def file_name_free(name: str, taken_lower: set[str]) -> bool:
    """Whether a new file `<name>.md` is portable: no case twin among `taken_lower`, not reserved on Windows."""
    return name.lower() not in taken_lower and name.split(".")[0].lower() not in WINDOWS_RESERVED


@dataclass(frozen=True)
class Actor:
    """Who makes a change: the commit author, and whether agent rules apply.

    `agent_id` set: labels resolve among that agent's blocks. `is_agent`: read-only binds
    (agents and MCP hosts); people and administrative calls may edit read-only blocks.
    `admin`: an agent that may still change a block's `read_only` flag and `limit`.
    """

    name: str
    email: str
    agent_id: str | None = None
    is_agent: bool = False
    admin: bool = False
    kind: AuthorKind = "person"

    @classmethod
    def agent(cls, name: str, agent_id: str) -> Actor:
        return cls(name=name, email=f"{agent_id}@{AGENT_EMAIL_DOMAIN}", agent_id=agent_id, is_agent=True,
                   kind="agent")

    @classmethod
    def host(cls, name: str) -> Actor:
        """An outside LLM host without a registered agent: read-only still binds it."""
        name = re.sub(r"[<>\x00-\x1f\x7f]+", " ", name).strip()[:MAX_NAME_LENGTH] or "mcp-host"
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower() or "host"
        return cls(name=name, email=f"host-{slug}@{AGENT_EMAIL_DOMAIN}", is_agent=True, kind="host")

    @classmethod
    def client(cls, name: str, email: str | None = None) -> Actor:
        """A program calling the Letta API: an administrative caller, as in Letta (read-only does not bind it)."""
        name = re.sub(r"[<>\x00-\x1f\x7f]+", " ", name).strip()[:MAX_NAME_LENGTH] or "api-client"
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower() or "client"
        return cls(name=name, email=email or f"api-{slug}@{AGENT_EMAIL_DOMAIN}", kind="host")

    def with_admin(self, admin: bool = True) -> Actor:
        """This actor, allowed (or not) to change `read_only` and `limit`."""
        return dataclasses.replace(self, admin=admin)


class Block(BaseModel):
    """A memory block as stored in `blocks/<name>.md`."""

    model_config = ConfigDict(frozen=True)

    id: str
    label: str
    value: str
    limit: int = DEFAULT_LIMIT
    read_only: bool = False
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    name: str = Field(description="file name without .md; stable for the block's life")
    version: str | None = Field(default=None, description="commit id of the block's last change; null while the "
                                                         "commit of an edit is pending")
    pending: str | None = Field(default=None, description="why the commit of the block's last edit is not made yet "
                                                         "(the next memstore operation makes it)")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def chars_current(self) -> int:
        return len(self.value)

    @property
    def path(self) -> str:
        return f"blocks/{self.name}.md"


class Agent(BaseModel):
    """An agent as stored in `agents/<name>.md`: its config and system prompt."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    model: str
    tools: list[str] = Field(default_factory=list)
    blocks: list[str] = Field(default_factory=list, description="ids of attached blocks, in order")
    description: str | None = None
    system: str = ""
    api_base: str | None = None
    version: str | None = Field(default=None, description="in the result of a change: the commit that holds it "
                                                         "(null while it is pending)")
    pending: str | None = Field(default=None, description="in the result of a change: why its commit is not made "
                                                         "yet (the next memstore operation makes it)")

    @property
    def path(self) -> str:
        return f"agents/{self.name}.md"

    def actor(self) -> Actor:
        return Actor.agent(self.name, self.id)


class EditResult(BaseModel):
    """The outcome of one change: the commit that holds it, or why its commit is pending."""

    block: Block
    version: str | None = Field(description="the commit this edit made; null while its commit is pending")
    op: str
    pending: str | None = Field(default=None, description="why the commit is not made yet (it will be, by "
                                                          "the next memstore operation)")


class HistoryEntry(BaseModel):
    """One commit that changed a block."""

    version: str
    author_name: str
    author_email: str
    date: str
    op: str | None = None
    agent_id: str | None = None
    message: str
    history_cut: bool = Field(default=False, description="a shallow clone: history before this commit is not here")
    author_kind: AuthorKind = Field(default="person", description="who made it: an agent, a host (an MCP host or "
                                    "an API client) or a person; from the commit's Memstore-Author-Kind trailer")


class BlameLine(BaseModel):
    """One line of a block's value and the commit that last wrote it."""

    line: int = Field(description="1-based line number in the value")
    text: str
    version: str | None = Field(description="the commit; null for a line not committed yet (a hand edit)")
    author_name: str
    author_email: str
    author_kind: AuthorKind
    date: str | None
