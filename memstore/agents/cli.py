"""`memstore agent send`, `memstore agent messages` and `memstore demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..cli import agent, handle_errors, json_option, main, workspace_option
from ..errors import AgentTurnError
from ..store import Store
from .messages import TurnResult
from .runtime import DEFAULT_MAX_STEPS


def message_lines(name: str, message: Any) -> list[str]:
    """One logged message as readable lines."""
    kind = message.message_type
    if kind == "user_message":
        return [f"you › {message.content}"]
    if kind == "reasoning_message":
        return [f"{name} (thinking) › {message.reasoning}"]
    if kind == "tool_call_message":
        return [f"{name} → {message.tool_call.name}({message.tool_call.arguments})"]
    if kind == "tool_return_message":
        return [f"  ← {message.status}: {message.tool_return}"]
    if kind == "error_message":
        return [f"(the turn ended early: {message.error_type}: {message.message})"]
    return [f"{name} › {message.content}"]


def turn_text(name: str, result: TurnResult) -> str:
    lines = [line for m in result.messages for line in message_lines(name, m)]
    u = result.usage
    lines.append(f"({result.stop_reason.stop_reason}; {u.step_count} step(s), {u.total_tokens} tokens)")
    return "\n".join(lines)


@agent.command("send")
@click.argument("name")
@click.argument("text")
@click.option("--max-steps", type=click.IntRange(1, 100), default=DEFAULT_MAX_STEPS, show_default=True,
              help="Most model calls in this turn; the turn stops there (stop reason max_steps).")
@workspace_option
@json_option
@handle_errors
def agent_send(name: str, text: str, max_steps: int, workspace: str | None, as_json: bool) -> None:
    """Send TEXT to agent NAME and print its turn (a tool-calling loop through litellm)."""
    store = Store.open(workspace)
    try:
        result = store.send_message(name, text, max_steps=max_steps)
    except AgentTurnError as exc:
        click.echo(_render(name, exc.result, as_json))
        raise
    click.echo(_render(name, result, as_json))


def _render(name: str, result: TurnResult, as_json: bool) -> str:
    return result.model_dump_json(indent=2) if as_json else turn_text(name, result)


@agent.command("messages")
@click.argument("name")
@click.option("-n", "--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="How many of the latest messages to show.")
@workspace_option
@json_option
@handle_errors
def agent_messages(name: str, limit: int, workspace: str | None, as_json: bool) -> None:
    """Show agent NAME's conversation log, newest last."""
    messages = Store.open(workspace).list_messages(name, limit)
    if as_json:
        click.echo(json.dumps([m.model_dump() for m in messages], indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(line for m in messages for line in message_lines(name, m)) or "(no messages)")


@main.command("demo")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", help="A litellm model for both agents (default: openai/gpt-4o-mini when "
                              "OPENAI_API_KEY is set, else a scripted local model).")
@handle_errors
def demo(directory: Path | None, model: str | None) -> None:
    """Run Letta's shared-memory tutorial in a new workspace (DIRECTORY, default a temp folder)."""
    from .demo import choose_model, new_demo_folder, run_demo

    folder = new_demo_folder(directory)
    try:
        run_demo(folder, choose_model(model), click.echo, lambda name, turn: click.echo(turn_text(name, turn)))
    except AgentTurnError as exc:
        click.echo(turn_text("agent", exc.result))
        raise
