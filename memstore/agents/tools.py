"""The tools a built-in agent may call: their schemas for the model, and running them.

Memory tools are the core's edit operations acting as the agent (its blocks only,
read-only enforced, commits authored by it). A refused call is not a failure of the turn:
its message goes back to the model as the tool's result, status "error".
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MemstoreError
from ..models import Agent
from .messages import parse_log

if TYPE_CHECKING:
    from ..store import Store

EXA_URL = "https://api.exa.ai/search"
ENV_EXA_KEY = "EXA_API_KEY"
ENV_EXA_URL = "MEMSTORE_EXA_URL"  # another Exa-compatible endpoint (tests use a local one)


def _spec(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }}


_LABEL = {"type": "string", "description": "Label of the memory block to edit."}

SPECS: dict[str, dict[str, Any]] = {
    "memory_insert": _spec(
        "memory_insert", "Insert text into a memory block at a given line. Other writers' text is never lost.",
        {"label": _LABEL, "new_str": {"type": "string", "description": "The text to insert."},
         "insert_line": {"type": "integer", "description": "Insert after this line: 0 for the top, -1 (default) "
                                                          "for the end."}},
        ["label", "new_str"]),
    "memory_replace": _spec(
        "memory_replace", "Replace text in a memory block. old_str must occur exactly once; include enough "
                          "context to make it unique. An empty new_str deletes old_str.",
        {"label": _LABEL, "old_str": {"type": "string", "description": "The exact text to replace."},
         "new_str": {"type": "string", "description": "The text to put in its place."}},
        ["label", "old_str", "new_str"]),
    "memory_rethink": _spec(
        "memory_rethink", "Rewrite a whole memory block: use it to reorganise or condense a block.",
        {"label": _LABEL, "new_memory": {"type": "string", "description": "The block's complete new value."}},
        ["label", "new_memory"]),
    "core_memory_append": _spec(
        "core_memory_append", "Append text to a memory block, on a new line.",
        {"label": _LABEL, "content": {"type": "string", "description": "The text to append."}},
        ["label", "content"]),
    "core_memory_replace": _spec(
        "core_memory_replace", "Replace every occurrence of old_content in a memory block with new_content.",
        {"label": _LABEL, "old_content": {"type": "string"}, "new_content": {"type": "string"}},
        ["label", "old_content", "new_content"]),
    "conversation_search": _spec(
        "conversation_search", "Search your own past conversation (all turns, not just those in context).",
        {"query": {"type": "string", "description": "Text to look for (case-insensitive)."},
         "limit": {"type": "integer", "description": "How many matches to return (default 5)."}},
        ["query"]),
    "web_search": _spec(
        "web_search", "Search the web (Exa). Returns titles, URLs and highlighted passages.",
        {"query": {"type": "string", "description": "What to search for."},
         "num_results": {"type": "integer", "description": "How many results (default 5, at most 10)."}},
        ["query"]),
}


class ToolCallError(Exception):
    """A tool call the model got wrong or the tool refused; the message goes back to the model."""


@dataclass
class ToolContext:
    """What a tool call needs: the store, the agent it acts as, and the agent's log so far."""

    store: Store
    agent: Agent
    log_rel: str


def specs_for(agent: Agent) -> list[dict[str, Any]]:
    return [SPECS[name] for name in agent.tools if name in SPECS]


def run_tool(ctx: ToolContext, name: str, args: dict[str, Any]) -> str:
    """Run one tool call; raise ToolCallError with a message for the model when it fails."""
    if name not in ctx.agent.tools or name not in _RUNNERS:
        raise ToolCallError(f"Error: there is no tool named {name!r}; your tools are: {', '.join(ctx.agent.tools)}.")
    _check_args(name, args)
    try:
        return _RUNNERS[name](ctx, args)
    except MemstoreError as exc:
        text = str(exc)
        raise ToolCallError(text if text.startswith("Error") else f"Error: {text}") from None
    except (TypeError, KeyError) as exc:
        raise ToolCallError(f"Error: bad arguments for {name}: {exc}") from None


def _check_args(name: str, args: dict[str, Any]) -> None:
    schema = SPECS[name]["function"]["parameters"]
    missing = [a for a in schema["required"] if a not in args]
    unknown = [a for a in args if a not in schema["properties"]]
    if missing or unknown:
        problems = [f"missing argument `{a}`" for a in missing] + [f"no argument named `{a}`" for a in unknown]
        raise ToolCallError(f"Error: {name}: {'; '.join(problems)}. It takes: {', '.join(schema['properties'])}.")


def _memory(op: str) -> Callable[[ToolContext, dict[str, Any]], str]:
    def run(ctx: ToolContext, args: dict[str, Any]) -> str:
        args = dict(args)
        label = _arg(args, "label", str)
        result = getattr(ctx.store, op)(label, **args, actor=ctx.agent.actor())
        where = f"commit {result.version[:12]}" if result.version else "its commit is pending"
        return (f"The memory block `{result.block.label}` was edited ({op}, {where}); "
                f"it now holds {result.block.chars_current} of {result.block.limit} characters.")
    return run


def _arg(args: dict[str, Any], name: str, kind: type) -> Any:
    if name not in args:
        raise ToolCallError(f"Error: missing argument `{name}`.")
    value = args.pop(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ToolCallError(f"Error: argument `{name}` must be {kind.__name__}, got {type(value).__name__}.")
    return value


def _conversation_search(ctx: ToolContext, args: dict[str, Any]) -> str:
    query = _arg(dict(args), "query", str).casefold()
    limit = args.get("limit", 5)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ToolCallError("Error: `limit` must be a positive whole number.")
    data = ctx.store.commits.read(ctx.log_rel) or b""
    found = []
    for message in reversed(parse_log(data, ctx.log_rel)):
        text = _message_text(message)
        if query and query in text.casefold():
            found.append({"date": message.date, "type": message.message_type, "text": text})
            if len(found) >= limit:
                break
    if not found:
        return f"No messages match {args['query']!r}."
    return json.dumps(found, ensure_ascii=False)


def _message_text(message: Any) -> str:
    for field in ("content", "reasoning", "tool_return"):
        if isinstance(getattr(message, field, None), str):
            return getattr(message, field)
    call = getattr(message, "tool_call", None)
    return f"{call.name}({call.arguments})" if call else ""


def _web_search(ctx: ToolContext, args: dict[str, Any]) -> str:
    args = dict(args)
    query = _arg(args, "query", str)
    num = args.get("num_results", 5)
    if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= 10:
        raise ToolCallError("Error: `num_results` must be a whole number from 1 to 10.")
    key = os.environ.get(ENV_EXA_KEY)
    if not key:
        raise ToolCallError(f"Error: web_search is not configured: set {ENV_EXA_KEY} to an Exa API key. "
                            "No search was made.")
    body = json.dumps({"query": query, "numResults": num, "contents": {"highlights": True}}).encode()
    request = urllib.request.Request(os.environ.get(ENV_EXA_URL, EXA_URL), data=body, method="POST", headers={
        "x-api-key": key, "Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - fixed https URL or a configured one
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ToolCallError(f"Error: web_search failed: Exa answered HTTP {exc.code}.") from None
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise ToolCallError(f"Error: web_search failed: {exc}.") from None
    results = [{"title": r.get("title"), "url": r.get("url"), "highlights": r.get("highlights") or []}
               for r in payload.get("results", [])]
    return json.dumps(results, ensure_ascii=False)


_RUNNERS: dict[str, Callable[[ToolContext, dict[str, Any]], str]] = {
    "memory_insert": _memory("memory_insert"),
    "memory_replace": _memory("memory_replace"),
    "memory_rethink": _memory("memory_rethink"),
    "core_memory_append": _memory("core_memory_append"),
    "core_memory_replace": _memory("core_memory_replace"),
    "conversation_search": _conversation_search,
    "web_search": _web_search,
}
