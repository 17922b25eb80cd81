"""The memory edit operations as pure functions: (current value, arguments) -> new value.

No I/O here. The store applies them to the *current* file under the block's lock, so
insert is additive, replace validates against what is really there, rethink overwrites.
Wording of refusals follows Letta's tools so models trained on them understand.
"""

from __future__ import annotations

from .errors import InvalidInputError, InvalidInsertLineError, LimitExceededError, ReplaceError


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"`{name}` must be text, got {type(value).__name__}.")
    return value


def _lines(value: str) -> list[str]:
    """Lines of a value split on '\\n'; an empty value has no lines."""
    return value.split("\n") if value else []


def memory_insert(value: str, new_str: str, insert_line: int = -1) -> str:
    """Insert `new_str` after line `insert_line` (0 = top, -1 = end)."""
    new_str = _text(new_str, "new_str")
    lines = _lines(value)
    if isinstance(insert_line, bool) or not isinstance(insert_line, int):
        raise InvalidInsertLineError(insert_line, len(lines))
    if insert_line == -1:
        insert_line = len(lines)
    elif not 0 <= insert_line <= len(lines):
        raise InvalidInsertLineError(insert_line, len(lines))
    return "\n".join(lines[:insert_line] + new_str.split("\n") + lines[insert_line:])


def occurrence_lines(value: str, old: str) -> list[int]:
    """1-based line numbers where each non-overlapping occurrence of `old` starts."""
    found, start = [], value.find(old)
    while start != -1:
        found.append(value.count("\n", 0, start) + 1)
        start = value.find(old, start + len(old))
    return found


def memory_replace(value: str, old_str: str, new_str: str, label: str) -> str:
    """Replace the single occurrence of `old_str`; refuse if it is missing or not unique."""
    old_str, new_str = _text(old_str, "old_str"), _text(new_str, "new_str")
    if not old_str:
        raise InvalidInputError("`old_str` must not be empty: quote the exact text to replace.")
    lines = occurrence_lines(value, old_str)
    if not lines:
        raise ReplaceError(
            f"No replacement was performed, old_str `{old_str}` did not appear verbatim "
            f"in memory block with label `{label}`."
        )
    if len(lines) > 1:
        raise ReplaceError(
            f"No replacement was performed. Multiple occurrences of old_str `{old_str}` "
            f"in lines {sorted(set(lines))}. Please ensure it is unique."
        )
    return value.replace(old_str, new_str, 1)


def memory_rethink(value: str, new_memory: str) -> str:
    """Overwrite the whole value."""
    return _text(new_memory, "new_memory")


def core_memory_append(value: str, content: str) -> str:
    """Append `content` on a new line (no leading blank line for an empty block)."""
    content = _text(content, "content")
    return f"{value}\n{content}" if value else content


def core_memory_replace(value: str, old_content: str, new_content: str, label: str) -> str:
    """Replace every occurrence of `old_content`."""
    old_content, new_content = _text(old_content, "old_content"), _text(new_content, "new_content")
    if not old_content:
        raise InvalidInputError("`old_content` must not be empty: quote the exact text to replace.")
    if old_content not in value:
        raise ReplaceError(f"Old content '{old_content}' not found in memory block '{label}'")
    return value.replace(old_content, new_content)


def check_limit(label: str, value: str, limit: int) -> None:
    """Refuse a value longer than the block's limit (characters, as Letta counts)."""
    if len(value) > limit:
        raise LimitExceededError(label, limit, len(value))
