"""Letta's REST shapes: request bodies as Letta's clients send them, responses as their models read them.

Responses follow the models of Letta's own clients (`letta_client` 0.1.x and 1.x in Python,
`@letta-ai/letta-client` 0.1.x in TypeScript, which checks every required field). Fields
memstore has no notion of are left out where the clients allow it, and given their
"nothing here" value where a client requires them (an agent's `sources: []`, an embedding
config whose model is `none`).
"""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from memstore import Agent, Block, InvalidInputError, Store, TurnResult
from memstore.agents.tools import SPECS
from memstore.validation import BASE_TOOLS

# Letta request fields memstore accepts and has no use for: it keeps no embeddings, tool
# rules or sleep-time agents. Any other field Letta knows must be unset, else a 422 says so.
IGNORED_FIELDS = frozenset({
    "embedding", "embedding_config", "embedding_chunk_size", "agent_type", "include_base_tool_rules",
    "context_window_limit", "timezone", "hidden", "use_assistant_message", "assistant_message_tool_name",
    "assistant_message_tool_kwarg", "include_return_message_types", "enable_thinking", "stream_tokens",
    "include_pings", "background", "initial_message_sequence", "include_default_source", "message_buffer_autoclear",
})

# litellm provider prefixes, as Letta names the endpoint type in an agent's llm_config.
ENDPOINT_TYPES = {
    "openai": "openai", "anthropic": "anthropic", "gemini": "google_ai", "vertex_ai": "google_vertex",
    "azure": "azure", "groq": "groq", "ollama": "ollama", "mistral": "mistral", "together_ai": "together",
    "bedrock": "bedrock", "deepseek": "deepseek", "xai": "xai", "vllm": "vllm", "huggingface": "hugging-face",
    "lm_studio": "lmstudio", "llamafile": "llamacpp",
}
PROVIDER_OF = {v: k for k, v in ENDPOINT_TYPES.items()}
DEFAULT_CONTEXT_WINDOW = 32_000  # when litellm does not know the model

_TOOL_NAMESPACE = uuid.UUID("6b0f4a52-9a53-4c1e-9d1e-6d656d73746f")


class _Body(BaseModel):
    """A request body: Letta's fields memstore keeps; a set field it cannot honour is a 422, not a silent drop."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _no_unsupported_fields(self) -> _Body:
        unsupported = sorted(k for k, v in (self.model_extra or {}).items()
                             if k not in IGNORED_FIELDS and v not in (None, [], {}, False, ""))
        if unsupported:
            raise ValueError(f"memstore does not support the field(s) {', '.join(unsupported)}")
        return self


class BlockCreate(_Body):
    label: str
    value: str = ""
    limit: int | None = None
    description: str | None = None
    read_only: bool = False
    metadata: dict[str, Any] | None = None


class BlockUpdate(_Body):
    value: str | None = None
    label: str | None = None
    limit: int | None = None
    description: str | None = None
    read_only: bool | None = None
    metadata: dict[str, Any] | None = None


class LlmConfigIn(_Body):
    model: str
    model_endpoint_type: str = "openai"
    model_endpoint: str | None = None
    context_window: int | None = None


class AgentUpdate(_Body):
    name: str | None = None
    model: str | None = None
    llm_config: LlmConfigIn | None = None
    system: str | None = None
    description: str | None = None
    block_ids: list[str] | None = None
    tools: list[str] | None = None

    def model_and_base(self) -> tuple[str, str | None]:
        """The litellm model string and endpoint: `model`, else Letta's `llm_config`."""
        if self.model:
            return self.model, self.llm_config.model_endpoint if self.llm_config else None
        if self.llm_config:
            provider = PROVIDER_OF.get(self.llm_config.model_endpoint_type, self.llm_config.model_endpoint_type)
            return f"{provider}/{self.llm_config.model}", self.llm_config.model_endpoint
        raise InvalidInputError("Give the agent a `model` (such as 'openai/gpt-4o-mini') or an `llm_config`.")


class AgentCreate(AgentUpdate):
    memory_blocks: list[BlockCreate] | None = None
    include_base_tools: bool = True


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user"] = Field(description="memstore's agents take user messages")
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class MessagesCreate(_Body):
    messages: list[MessageIn] = Field(min_length=1)
    max_steps: int | None = Field(default=None, ge=1, le=100)
    streaming: bool = Field(default=False, description="answer as server-sent events (1.x clients)")

    def text(self) -> str:
        """The user's messages as one turn's input."""
        return "\n\n".join(m.text() for m in self.messages)


# -- responses -----------------------------------------------------------------------------


def _set(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that have a value: Letta's clients read a missing optional field, not always a null."""
    return {k: v for k, v in fields.items() if v is not None}


def block_json(block: Block) -> dict[str, Any]:
    """A Letta block (`Block` / `BlockResponse`)."""
    return _set({
        "id": block.id, "label": block.label, "value": block.value, "limit": block.limit,
        "description": block.description, "read_only": block.read_only, "metadata": block.metadata,
        "is_template": False, "hidden": False,
    })


def tool_json(name: str) -> dict[str, Any]:
    """A Letta tool: the schema memstore's agents see for it."""
    function = SPECS[name]["function"]
    return {
        "id": f"tool-{uuid.uuid5(_TOOL_NAMESPACE, name)}", "name": name,
        "tool_type": "letta_memory_core" if name in BASE_TOOLS and name != "conversation_search"
        else "letta_core" if name == "conversation_search" else "letta_builtin",
        "description": function["description"], "json_schema": function, "tags": [], "source_type": "python",
        "metadata_": {},
    }


def agent_json(store: Store, agent: Agent) -> dict[str, Any]:
    """A Letta `AgentState`: the agent's file, its blocks as they are now, its tools."""
    blocks = [block_json(b) for b in store.agent_blocks(agent.id)]
    provider, _, model = agent.model.partition("/")
    if not model:
        provider, model = "openai", agent.model
    return _set({
        "id": agent.id, "name": agent.name, "system": agent.system, "description": agent.description,
        "agent_type": "memgpt_v2_agent", "model": agent.model,
        "llm_config": _set({
            "model": model, "model_endpoint_type": ENDPOINT_TYPES.get(provider, "openai"),
            "model_endpoint": agent.api_base, "context_window": context_window(agent.model),
            "handle": agent.model, "provider_name": provider,
        }),
        "embedding_config": {"embedding_endpoint_type": "openai", "embedding_model": "none", "embedding_dim": 0},
        "memory": {"blocks": blocks, "file_blocks": []},
        "blocks": blocks,
        "tools": [tool_json(t) for t in agent.tools if t in SPECS],
        "sources": [], "tags": [], "tool_rules": [], "metadata": {}, "identity_ids": [],
    })


@cache
def context_window(model: str) -> int:
    """The model's context window as litellm's local model map gives it."""
    from memstore.agents.runtime import _litellm

    try:
        info = _litellm().get_model_info(model)
    except Exception:  # noqa: BLE001 - litellm raises plain Exception for an unknown model
        return DEFAULT_CONTEXT_WINDOW
    return int(info.get("max_input_tokens") or info.get("max_tokens") or DEFAULT_CONTEXT_WINDOW)


def message_json(message: Any) -> dict[str, Any]:
    return message.model_dump(exclude_none=True)


def turn_json(result: TurnResult) -> dict[str, Any]:
    """Letta's `LettaResponse`: `{messages, stop_reason, usage}`."""
    return {
        "messages": [message_json(m) for m in result.messages],
        "stop_reason": result.stop_reason.model_dump(),
        "usage": result.usage.model_dump(),
    }
