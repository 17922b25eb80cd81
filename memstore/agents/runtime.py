"""One agent turn: a tool-calling loop through litellm, memory re-read from disk every step.

The system prompt is the agent's persona plus its blocks in Letta's `<memory_blocks>`
format, rebuilt before every model call, so an edit by another agent, a host or a person
shows at this agent's next step. Tool errors go back to the model; provider failures and
malformed tool calls end the turn. Whatever happens, the turn's messages are appended to
the agent's log in one commit, and memory edits made before a failure stay committed.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import AgentTurnError, MemstoreError
from ..models import Agent
from ..prompt import render_memory_blocks
from ..validation import check_count, check_text
from .log import append_turn, context_messages, log_path
from .messages import (
    AssistantMessage,
    ErrorMessage,
    ReasoningMessage,
    StopReason,
    StopReasonName,
    ToolCall,
    ToolCallMessage,
    ToolReturnMessage,
    TurnResult,
    Usage,
    UserMessage,
)
from .tools import ToolCallError, ToolContext, run_tool, specs_for

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("memstore.agents")

DEFAULT_MAX_STEPS = 10
DEFAULT_TIMEOUT = 60.0
CONTEXT_MESSAGES = 100  # log messages replayed to the model before this turn


class _Stop(Exception):
    def __init__(self, reason: StopReasonName, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def system_prompt(store: Store, agent: Agent) -> str:
    """The persona, then the agent's blocks as they are on disk now."""
    return f"{agent.system.rstrip()}\n\n{render_memory_blocks(store.agent_blocks(agent.id))}"


def send_message(
    store: Store, agent_ref: str, message: str, *, max_steps: int = DEFAULT_MAX_STEPS,
    timeout: float = DEFAULT_TIMEOUT, on_message: Callable[[Any], None] | None = None,
) -> TurnResult:
    """Run one turn of a built-in agent; raise AgentTurnError (after logging) if it ends early.

    `on_message` sees each produced message as its step ends (a stream's hook).
    """
    check_text(message, "message")
    check_count(max_steps, "max_steps")
    agent = store.get_agent(agent_ref)
    history = context_messages(store, agent, CONTEXT_MESSAGES)
    user = UserMessage(content=message)
    produced: list[Any] = []
    usage = Usage()
    reason: StopReasonName = "max_steps"
    error: str | None = None
    emitted = 0

    def emit() -> None:
        nonlocal emitted
        if on_message is not None:
            for message in produced[emitted:]:
                on_message(message)
        emitted = len(produced)

    try:
        for _ in range(max_steps):
            agent = store.get_agent(agent.id)  # tools and blocks may have changed
            done = _step(store, agent, [*history, user, *produced], produced, usage, timeout)
            emit()
            if done:
                reason = "end_turn"
                break
        else:
            error = f"The agent did not finish within {max_steps} steps."
    except _Stop as stop:
        reason, error = stop.reason, str(stop)
    except MemstoreError as exc:  # e.g. the agent was deleted mid-turn
        reason, error = "error", str(exc)
    except Exception as exc:  # the turn's edge: log the bug, keep the turn's log consistent  # noqa: BLE001
        log.exception("agent turn failed")
        reason, error = "error", f"unexpected {type(exc).__name__}: {exc}"
    finally:
        note = [ErrorMessage(error_type=reason, message=error)] if error else []
        append_turn(store, agent, [user, *produced, *note])  # the log says why a turn ended early
        emit()
    result = TurnResult(messages=produced, stop_reason=StopReason(stop_reason=reason), usage=usage, error=error)
    if reason not in ("end_turn", "max_steps"):
        raise AgentTurnError(f"Agent '{agent.name}': {error}", result)
    return result


def _step(store: Store, agent: Agent, conversation: list[Any], produced: list[Any], usage: Usage,
          timeout: float) -> bool:
    """One model call and its tool calls; True when the model answered without tools."""
    step_id = f"step-{uuid.uuid4()}"
    reply = _complete(agent, [{"role": "system", "content": system_prompt(store, agent)},
                              *to_chat(conversation)], timeout)
    usage.step_count += 1
    _add_usage(usage, reply)
    choices = getattr(reply, "choices", None) or []
    choice = getattr(choices[0], "message", None) if choices else None
    if choice is None:
        raise _Stop("llm_api_error", f"model {agent.model} returned no message (an empty `choices` list).")
    calls = list(getattr(choice, "tool_calls", None) or [])
    thinking = getattr(choice, "reasoning_content", None)
    if thinking:
        produced.append(ReasoningMessage(reasoning=thinking, step_id=step_id))
    if not calls:
        produced.append(AssistantMessage(content=choice.content or "", step_id=step_id))
        return True
    if choice.content:
        produced.append(ReasoningMessage(reasoning=choice.content, step_id=step_id))
    parsed = [_parse_call(call, step_id) for call in calls]
    produced += [message for message, _ in parsed]
    bad = [message for message, args in parsed if args is None]
    if bad:
        produced += [ToolReturnMessage(tool_return="Error: malformed tool call; it was not run.", status="error",
                                       tool_call_id=m.tool_call.tool_call_id, step_id=step_id) for m in
                     (m for m, _ in parsed)]
        raise _Stop("invalid_tool_call", f"the model sent a malformed tool call ({bad[0].tool_call.name or '?'}"
                                         f" with arguments {bad[0].tool_call.arguments[:200]!r}).")
    ctx = ToolContext(store, agent, log_path(agent))
    for message, args in parsed:
        produced.append(_run(ctx, message.tool_call, args or {}, step_id))
    return False


def _parse_call(call: Any, step_id: str) -> tuple[ToolCallMessage, dict[str, Any] | None]:
    """The logged tool call, and its arguments (None: malformed)."""
    function = getattr(call, "function", None)
    name = getattr(function, "name", None) or ""
    raw = getattr(function, "arguments", None)
    raw = raw if isinstance(raw, str) else json.dumps(raw) if raw is not None else ""
    call_id = getattr(call, "id", None) or f"call-{uuid.uuid4()}"
    message = ToolCallMessage(tool_call=ToolCall(name=name, arguments=raw, tool_call_id=call_id), step_id=step_id)
    try:
        args = json.loads(raw or "{}")
    except ValueError:
        return message, None
    return message, (args if isinstance(args, dict) and name else None)


def _run(ctx: ToolContext, call: ToolCall, args: dict[str, Any], step_id: str) -> ToolReturnMessage:
    try:
        text, status = run_tool(ctx, call.name, args), "success"
    except ToolCallError as exc:
        text, status = str(exc), "error"
    return ToolReturnMessage(tool_return=text, status=status, tool_call_id=call.tool_call_id, step_id=step_id)


def _complete(agent: Agent, messages: list[dict[str, Any]], timeout: float) -> Any:
    """One litellm call; provider failures become a _Stop with a clear reason."""
    litellm = _litellm()
    kwargs: dict[str, Any] = {"model": agent.model, "messages": messages, "timeout": timeout,
                              "num_retries": 0, "max_retries": 0}
    tools = specs_for(agent)
    if tools:
        kwargs["tools"] = tools
    if agent.api_base:
        kwargs["api_base"] = agent.api_base
    try:
        return litellm.completion(**kwargs)
    except Exception as exc:  # litellm raises many provider-specific types; name the failure
        raise _Stop("llm_api_error", provider_error(exc, agent, timeout)) from None


def provider_error(exc: Exception, agent: Agent, timeout: float) -> str:
    """A one-line explanation of a provider failure, naming the model and the way out."""
    import litellm

    where = f"model {agent.model}" + (f" at {agent.api_base}" if agent.api_base else "")
    missing = _missing_keys(agent)
    if missing:
        return (f"no API key for {where}: set {' or '.join(missing)} in the environment of the memstore process "
                "(no request was sent).")
    if isinstance(exc, litellm.AuthenticationError):
        return f"the provider refused the API key for {where} (HTTP 401); check the key in the environment."
    if isinstance(exc, litellm.RateLimitError):
        return f"the provider rate-limited {where} (HTTP 429); try again later."
    if isinstance(exc, litellm.Timeout):
        return f"{where} did not answer within {timeout:g} s."
    status = getattr(exc, "status_code", None)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{where} failed" + (f" (HTTP {status})" if status else "") + f": {first[:300]}"


def _missing_keys(agent: Agent) -> list[str]:
    """The provider key variables litellm wants for this model and cannot find (empty when it has them)."""
    try:
        checked = _litellm().validate_environment(model=agent.model, api_base=agent.api_base)
    except Exception:  # noqa: BLE001 - an unknown provider: say what the provider said instead
        return []
    return [] if checked.get("keys_in_environment") else list(checked.get("missing_keys") or [])


def _litellm() -> Any:
    """Import litellm on first use (it is slow to import), offline-safe."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def _add_usage(usage: Usage, reply: Any) -> None:
    counts = getattr(reply, "usage", None)
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(counts, field, 0) if counts is not None else 0
        setattr(usage, field, getattr(usage, field) + (value if isinstance(value, int) else 0))


def _replayable(arguments: str) -> str:
    """Arguments as logged, or `{}` for a malformed call: some providers reject bad JSON in history."""
    try:
        return arguments if isinstance(json.loads(arguments or "{}"), dict) else "{}"
    except ValueError:
        return "{}"


def to_chat(messages: list[Any]) -> list[dict[str, Any]]:
    """Logged messages as chat-completion messages: one assistant message per step."""
    chat: list[dict[str, Any]] = []
    for message in messages:
        kind = message.message_type
        if kind == "user_message":
            chat.append({"role": "user", "content": message.content})
        elif kind == "tool_return_message":
            chat.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": message.tool_return})
        elif kind == "error_message":
            continue  # the log's note for people, not part of the conversation
        else:
            _into_assistant(chat, message)
    for entry in chat:
        entry.pop("_step", None)
    return chat


def _into_assistant(chat: list[dict[str, Any]], message: Any) -> None:
    last = chat[-1] if chat else None
    if not (last and last["role"] == "assistant" and last.get("_step") == message.step_id and message.step_id):
        last = {"role": "assistant", "content": None, "_step": message.step_id}
        chat.append(last)
    if message.message_type == "tool_call_message":
        call = message.tool_call
        last.setdefault("tool_calls", []).append({"id": call.tool_call_id, "type": "function", "function": {
            "name": call.name or "invalid_tool_call", "arguments": _replayable(call.arguments)}})
    elif message.message_type == "reasoning_message":
        last["content"] = message.reasoning if last["content"] is None else f"{last['content']}\n{message.reasoning}"
    else:
        last["content"] = message.content
