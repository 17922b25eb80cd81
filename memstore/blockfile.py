"""Parse and render block and agent files: YAML front matter plus a byte-exact body.

The file rule, defined once: a file is `---\\n<yaml>---\\n<value>\\n`. Reading removes exactly
one trailing newline from the body if there is one, so `parse(render(v)) == v` for every
value, and files end in a newline as editors and `git diff` expect. YAML goes through
python-frontmatter's handler (safe loading); the fences are split here because the
library strips the body, which would lose leading and trailing whitespace of a value.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from frontmatter.default_handlers import YAMLHandler
from pydantic import ValidationError

from .cache import LRU
from .errors import FileFormatError, InvalidNameError
from .models import DEFAULT_LIMIT, Agent, Block, validate_name
from .validation import BASE_TOOLS

_YAML = YAMLHandler()
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Front matter rarely changes while a block's text does, and YAML costs more than the rest
# of an edit's Python work: parsed and rendered front matter is kept by its text.
_LOADED: LRU[str, dict[str, Any]] = LRU(512)
_RENDERED: LRU[str, str] = LRU(512)
_CLOSING_FENCE = re.compile(r"^---[ \t]*\r?$", re.MULTILINE)
MAX_FRONT_MATTER = 64 * 1024  # characters: front matter is a few short fields
# An anchor (&a) or alias (*a) may start here; memstore never writes them, and nested aliases
# expand exponentially ("billion laughs"), so front matter that may hold one is parsed by a
# loader that refuses them before anything is expanded.
_MAYBE_ALIAS = re.compile(r"(?:^|[\s\[\]{},:?-])[&*]", re.MULTILINE)


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML that refuses anchors and aliases where they appear, before expanding any."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(problem="YAML anchors and aliases (&name, *name) are not allowed "
                                               "in front matter", problem_mark=event.start_mark)
        return super().compose_node(parent, index)


def parse_document(data: bytes, path: str) -> tuple[dict[str, Any], str]:
    """Split file bytes into (front matter mapping, body)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileFormatError(path, line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise FileFormatError(path, line, "contains a NUL byte: block and agent files are text")
    front, body_at = _split(text, path)
    return _load_yaml(front, path), text[body_at:].removesuffix("\n")


def _split(text: str, path: str) -> tuple[str, int]:
    """(the front matter's text, where the body starts) in a file's text without its BOM."""
    first, sep, rest = text.partition("\n")
    if first.rstrip("\r \t") != "---" or not sep:
        raise FileFormatError(path, 1, "missing front matter: the file must start with a '---' line")
    closing = _CLOSING_FENCE.search(rest)
    if closing is None:
        raise FileFormatError(path, None, "front matter is not closed by a '---' line")
    return rest[: closing.start()], len(first) + 1 + closing.end() + 1


def with_body(data: bytes, body: str, path: str) -> bytes:
    """A valid file's bytes with its body replaced by `body`, the front matter kept byte for byte.

    For an edit of a value alone: a person's comments, quoting and key order in the front
    matter survive it, and its commit's diff shows only the value's lines.
    """
    text = data.decode("utf-8")
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    _, body_at = _split(text[len(bom):], path)
    head = text[: len(bom) + body_at]
    if not head.endswith("\n"):  # the closing fence was the file's last line, without a newline
        head += "\n"
    return f"{head}{body}\n".encode()


def value_first_line(data: bytes) -> int:
    """The 1-based line of the file where the value starts (1 for a file without front matter)."""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    first, sep, rest = text.partition("\n")
    closing = _CLOSING_FENCE.search(rest) if first.rstrip("\r \t") == "---" and sep else None
    if closing is None:
        return 1
    return text.count("\n", 0, len(first) + 1 + closing.end()) + 2


def _load_yaml(front: str, path: str) -> dict[str, Any]:
    """The front matter mapping (a copy the caller may change); errors name the file and line."""
    return copy.deepcopy(_LOADED.get_or_make(front, lambda: _parse_yaml(front, path)))


def _parse_yaml(front: str, path: str) -> dict[str, Any]:
    if len(front) > MAX_FRONT_MATTER:
        raise FileFormatError(path, None, f"the front matter is {len(front):,} characters; the most memstore "
                                          f"reads is {MAX_FRONT_MATTER:,}")
    try:
        meta = yaml.load(front, Loader=_NoAliasLoader) if _MAYBE_ALIAS.search(front) else _YAML.load(front)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 2 if mark else None
        raise FileFormatError(path, line, f"invalid YAML front matter: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise FileFormatError(path, None, f"invalid YAML front matter: {exc}") from None
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise FileFormatError(path, 2, "front matter must be a mapping of 'key: value' lines")
    return meta


def render_document(meta: dict[str, Any], body: str) -> bytes:
    """Render front matter and body to file bytes (the inverse of parse_document)."""
    front = _RENDERED.get_or_make(repr(meta), lambda: _dump_yaml(meta))
    return f"---\n{front}\n---\n{body}\n".encode()


def _dump_yaml(meta: dict[str, Any]) -> str:
    """YAML for the front matter, without the final newline.

    Not the handler's `export`, which strips all whitespace at the ends: a last value
    ending in, say, a no-break space would lose it.
    """
    text = yaml.dump(meta, Dumper=_DUMPER, default_flow_style=False, allow_unicode=True,
                     sort_keys=False, width=10_000)
    return text.removesuffix("\n")


def _field_line(data: bytes, key: str) -> int | None:
    match = re.search(rb"^" + re.escape(key.encode()) + rb"\s*:", data, re.MULTILINE)
    return data.count(b"\n", 0, match.start()) + 1 if match else None


def _bad(path: str, data: bytes, key: str, problem: str) -> FileFormatError:
    return FileFormatError(path, _field_line(data, key), f"field '{key}' {problem}")


def _check_name(path: str, data: bytes, meta: dict[str, Any], key: str) -> str:
    try:
        return validate_name(meta.get(key), key)
    except InvalidNameError as exc:
        raise FileFormatError(path, _field_line(data, key), str(exc)) from None


def _optional_text(path: str, data: bytes, meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(path, data, key, f"must be text, got {value!r}")
    return value


def block_from_file(data: bytes, path: str, name: str) -> Block:
    """Build a Block from a block file's bytes; errors name the file and the line."""
    return load_block(data, path, name)[0]


def load_block(data: bytes, path: str, name: str) -> tuple[Block, dict[str, Any]]:
    """The Block in a file and its raw front matter (to keep unknown keys on rewrite)."""
    meta, body = parse_document(data, path)
    block_id = meta.get("id")
    if not isinstance(block_id, str) or not block_id.startswith("block-"):
        raise _bad(path, data, "id", f"must be a 'block-…' id, got {block_id!r}")
    label = _check_name(path, data, meta, "label")
    limit = meta.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise _bad(path, data, "limit", f"must be a positive whole number, got {limit!r}")
    read_only = meta.get("read_only", False)
    if not isinstance(read_only, bool):
        raise _bad(path, data, "read_only", f"must be true or false, got {read_only!r}")
    metadata = meta.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _bad(path, data, "metadata", f"must be a mapping, got {metadata!r}")
    with _as_format_error(path):
        block = Block(
            id=block_id,
            label=label,
            value=body,
            limit=limit,
            read_only=read_only,
            description=_optional_text(path, data, meta, "description"),
            metadata=metadata,
            name=name,
        )
    return block, meta


@contextmanager
def _as_format_error(path: str) -> Iterator[None]:
    """A value the model rejects (say, metadata keys that are not text) is a file format problem."""
    try:
        yield
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise FileFormatError(path, None, f"invalid `{where}`: {first['msg']}") from None


def block_meta(block: Block, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Front matter for a block, in the documented key order, keeping unknown keys."""
    meta: dict[str, Any] = {
        "id": block.id,
        "label": block.label,
        "description": block.description,
        "limit": block.limit,
        "read_only": block.read_only,
        "metadata": dict(block.metadata),
    }
    for key, value in (extra or {}).items():
        meta.setdefault(key, value)
    return meta


def render_block(block: Block, extra: dict[str, Any] | None = None) -> bytes:
    return render_document(block_meta(block, extra), block.value)


def agent_from_file(data: bytes, path: str) -> Agent:
    """Build an Agent from an agent file's bytes."""
    meta, body = parse_document(data, path)
    agent_id = meta.get("id")
    if not isinstance(agent_id, str) or not agent_id.startswith("agent-"):
        raise _bad(path, data, "id", f"must be an 'agent-…' id, got {agent_id!r}")
    name = _check_name(path, data, meta, "name")
    model = meta.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(path, data, "model", f"must be a model name such as 'openai/gpt-4o-mini', got {model!r}")
    lists: dict[str, list[str]] = {}
    for key in ("tools", "blocks"):
        value = meta.get(key) or []
        if key == "tools" and "tools" not in meta:  # a hand-written agent without the key: Letta's base tools
            value = list(BASE_TOOLS)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(path, data, key, f"must be a list of names, got {value!r}")
        lists[key] = value
    with _as_format_error(path):
        return Agent(
            id=agent_id,
            name=name,
            model=model,
            tools=lists["tools"],
            blocks=lists["blocks"],
            description=_optional_text(path, data, meta, "description"),
            api_base=_optional_text(path, data, meta, "api_base"),
            system=body,
        )


def render_agent(agent: Agent) -> bytes:
    meta: dict[str, Any] = {
        "id": agent.id,
        "name": agent.name,
        "model": agent.model,
        "description": agent.description,
        "tools": list(agent.tools),
        "blocks": list(agent.blocks),
    }
    if agent.api_base:
        meta["api_base"] = agent.api_base
    return render_document(meta, agent.system)
