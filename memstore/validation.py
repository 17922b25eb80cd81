"""Checks of arguments from any front end: text, limits, flags, metadata, tools, labels.

Each failure is an InvalidInputError or ConflictError whose message names the argument.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from .errors import ConflictError, InvalidInputError
from .models import Block

KNOWN_TOOLS = (
    "memory_insert", "memory_replace", "memory_rethink", "core_memory_append",
    "core_memory_replace", "conversation_search", "web_search",
)
# Letta's base tools for the agents memstore runs: every agent has them unless it is created
# with include_base_tools=False; `tools` adds to them.
BASE_TOOLS = ("memory_insert", "memory_replace", "conversation_search")
MAX_TEXT = 1_000_000  # characters of any one text argument


def check_unique_labels(agent_name: str, blocks: list[Block]) -> None:
    seen: dict[str, str] = {}
    for block in blocks:
        if block.label in seen and seen[block.label] != block.id:
            raise ConflictError(
                f"Agent '{agent_name}' would have two blocks labelled '{block.label}' "
                f"({seen[block.label]} and {block.id}); a label appears at most once per agent."
            )
        seen[block.label] = block.id


def check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"`{name}` must be text, got {type(value).__name__}.")
    if len(value) > MAX_TEXT:
        raise InvalidInputError(f"`{name}` is {len(value):,} characters; the most memstore accepts is {MAX_TEXT:,}.")
    if "\x00" in value:
        raise InvalidInputError(f"`{name}` contains a NUL character, which a text file cannot hold.")
    _check_encodable(value, name)
    return value


def _check_encodable(value: str, name: str) -> None:
    """Refuse a lone surrogate (JSON's `\ud800`): it is not a character, and no file can hold it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"`{name}` contains {value[exc.start]!r} at position {exc.start}, half of a "
                                "UTF-16 pair, which is not a character.") from None


def check_optional_text(value: object) -> str | None:
    return None if value is None else check_text(value, "description")


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"`{name}` must be true or false, got {value!r}.")
    return value


def check_limit_arg(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_TEXT:
        raise InvalidInputError(f"`limit` must be a whole number from 1 to {MAX_TEXT:,}, got {limit!r}.")
    return limit


def check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"`metadata` must be a mapping, got {type(metadata).__name__}.")
    try:
        yaml.safe_dump(metadata)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"`metadata` must hold plain values (text, numbers, lists, mappings): {exc}") from None
    _check_plain(metadata, "metadata")
    return metadata


def _check_plain(value: object, where: str) -> None:
    """Refuse what JSON cannot carry back to a client: NaN and infinities, lone surrogates."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"`{where}` holds {value!r}; numbers must be finite.")
    if isinstance(value, str):
        _check_encodable(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, where)


def check_tools(tools: list[str] | None, include_base_tools: bool = True) -> list[str]:
    """An agent's tool list as Letta builds it: the base tools (unless left out), then `tools`."""
    check_bool(include_base_tools, "include_base_tools")
    tools = [] if tools is None else tools
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise InvalidInputError("`tools` must be a list of tool names.")
    unknown = [t for t in tools if t not in KNOWN_TOOLS]
    if unknown:
        raise InvalidInputError(f"Unknown tool(s) {', '.join(unknown)}; known tools: {', '.join(KNOWN_TOOLS)}.")
    return list(dict.fromkeys([*(BASE_TOOLS if include_base_tools else ()), *tools]))


def check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"`{name}` must be a positive whole number, got {value!r}.")
    return value
