"""Letta's message shapes for one agent turn, and the agent's conversation log.

A turn returns `TurnResult`: the messages in order (`reasoning_message`,
`tool_call_message`, `tool_return_message`, `assistant_message`), a `stop_reason` and
`usage`. The log, `agents/<name>/messages.jsonl`, holds one message per line, user
messages included; each turn is appended in one commit, so the file is never half-written.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ..errors import FileFormatError


def _message_id() -> str:
    return f"message-{uuid.uuid4()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _Base(BaseModel):
    id: str = Field(default_factory=_message_id)
    date: str = Field(default_factory=_now)
    step_id: str | None = Field(default=None, description="the model step that produced it")


class UserMessage(_Base):
    message_type: Literal["user_message"] = "user_message"
    content: str


class ReasoningMessage(_Base):
    message_type: Literal["reasoning_message"] = "reasoning_message"
    reasoning: str


class ToolCall(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as the model sent them (a JSON string)")
    tool_call_id: str


class ToolCallMessage(_Base):
    message_type: Literal["tool_call_message"] = "tool_call_message"
    tool_call: ToolCall


class ToolReturnMessage(_Base):
    message_type: Literal["tool_return_message"] = "tool_return_message"
    tool_return: str
    status: Literal["success", "error"]
    tool_call_id: str


class AssistantMessage(_Base):
    message_type: Literal["assistant_message"] = "assistant_message"
    content: str


class ErrorMessage(_Base):
    """The log's note of a turn that ended early: why, in words (Letta's error message shape)."""

    message_type: Literal["error_message"] = "error_message"
    error_type: str = Field(description="the turn's stop reason, e.g. llm_api_error")
    message: str


Message = Annotated[
    UserMessage | ReasoningMessage | ToolCallMessage | ToolReturnMessage | AssistantMessage | ErrorMessage,
    Field(discriminator="message_type"),
]
_MESSAGE = TypeAdapter(Message)

StopReasonName = Literal["end_turn", "max_steps", "llm_api_error", "invalid_tool_call", "error"]


class StopReason(BaseModel):
    message_type: Literal["stop_reason"] = "stop_reason"
    stop_reason: StopReasonName


class Usage(BaseModel):
    message_type: Literal["usage_statistics"] = "usage_statistics"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    step_count: int = 0


class TurnResult(BaseModel):
    """What one `send_message` produced (the user's message is in the log, not here)."""

    messages: list[Message]
    stop_reason: StopReason
    usage: Usage
    error: str | None = Field(default=None, description="why the turn ended early, if it did")


def dump_lines(messages: list[Any]) -> bytes:
    """Messages as JSON lines, one per message."""
    return b"".join(m.model_dump_json().encode() + b"\n" for m in messages)


def parse_log(data: bytes, rel: str) -> list[Any]:
    """The messages in a log file; a broken line is an error naming the file and line."""
    messages = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages.append(_MESSAGE.validate_python(json.loads(line)))
        except (ValueError, ValidationError) as exc:
            raise FileFormatError(rel, number, f"not a message ({str(exc).splitlines()[0]})") from None
    return messages
