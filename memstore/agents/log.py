"""An agent's conversation log, `agents/<name>/messages.jsonl`: read it, append a turn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..commits import commit_message
from ..gitrepo import Ident
from ..models import Agent
from ..validation import check_count
from .messages import dump_lines, parse_log

if TYPE_CHECKING:
    from ..store import Store


def log_path(agent: Agent) -> str:
    return f"agents/{agent.name}/messages.jsonl"


def read_log(store: Store, agent: Agent) -> list[Any]:
    """Every logged message of the agent, oldest first."""
    rel = log_path(agent)
    return parse_log(store.commits.read(rel) or b"", rel)


def list_messages(store: Store, agent_ref: str, limit: int = 50) -> list[Any]:
    """The agent's last `limit` messages, oldest first."""
    check_count(limit, "limit")
    return read_log(store, store.get_agent(agent_ref))[-limit:]


def context_messages(store: Store, agent: Agent, limit: int) -> list[Any]:
    """The recent conversation to replay to the model: at most `limit` messages, starting at a user message."""
    recent = read_log(store, agent)[-limit:]
    starts = [i for i, m in enumerate(recent) if m.message_type == "user_message"]
    return recent[starts[0]:] if starts else []


def append_turn(store: Store, agent: Agent, messages: list[Any]) -> None:
    """Append one turn's messages to the log in one commit authored by the agent."""
    rel = log_path(agent)
    actor = agent.actor()
    with store.commits.locked(rel) as current:
        if store.commits.hand_edited(rel, current):
            parse_log(current or b"", rel)  # a log broken by hand is refused, not built upon
            store.commits.adopt_hand_edit(rel, current, f"Hand edit {rel}",
                                          {"Memstore-Op": "hand_edit", "Memstore-Author-Kind": "person"})
        message = commit_message(f"send_message {agent.name}", {"Memstore-Op": "send_message",
                                                                "Memstore-Agent": agent.id,
                                                                "Memstore-Author-Kind": "agent"})
        store.commits.write(rel, (current or b"") + dump_lines(messages), current, Ident(actor.name, actor.email),
                            message)
