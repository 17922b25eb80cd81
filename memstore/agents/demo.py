"""`memstore demo`: Letta's shared-memory tutorial, run for real in a fresh workspace.

A block `organization` is created; `agent1` gets it at creation, `agent2` later; each
inserts what it learned, prefixed with its name; a read-only `policies` block refuses
agent2's edit. With a provider key the agents use a real model; without one the same
agent loop runs against a scripted model on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import WorkspaceError
from ..store import Store
from .messages import TurnResult
from .scripted import Reply, ScriptedModel, text, tool_calls

ENV_MODEL = "MEMSTORE_DEMO_MODEL"
DEFAULT_REAL_MODEL = "openai/gpt-4o-mini"
PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")

AGENT1_TASK = ("Research Letta (the company behind MemGPT) and insert one fact about how it was founded into "
               "the `organization` memory block, as a new line that starts with 'agent1: '.")
AGENT2_TASK = ("Read the `organization` block, then insert one fact about Letta's product into it, as a new line "
               "that starts with 'agent2: '. Then add the line 'agent2 was here' to the `policies` block.")
FACT1 = "agent1: Letta was founded in 2023 by the researchers behind MemGPT at UC Berkeley."
FACT2 = "agent2: Letta's platform builds stateful agents whose memory persists between conversations."

# Letta's tutorial programs (examples/): the model their agents use, and what the scripted one has them write
TUTORIAL_MODEL = "gpt-4o-mini"
TUTORIAL_LINE1 = "Agent1: Letta agents keep memory blocks in their context window and edit them with tools."
TUTORIAL_LINE2 = "Agent2: Letta grew out of the MemGPT research project at UC Berkeley."


@dataclass
class DemoModel:
    """Which model the agents use, and where (api_base None: the provider's own endpoint)."""

    agent1: str
    agent2: str
    api_base: str | None
    scripted: bool


def choose_model(model: str | None) -> str | None:
    """A real model when one is configured: --model, $MEMSTORE_DEMO_MODEL, or a provider key."""
    if model or os.environ.get(ENV_MODEL):
        return model or os.environ[ENV_MODEL]
    return DEFAULT_REAL_MODEL if os.environ.get("OPENAI_API_KEY") else None


@contextmanager
def demo_model(model: str | None) -> Iterator[DemoModel]:
    """The real model, or a scripted one serving the tutorial's replies on 127.0.0.1."""
    if model:
        yield DemoModel(model, model, None, scripted=False)
        return
    with ScriptedModel() as scripted:
        scripted.enqueue("demo-agent1", tool_calls(("memory_insert", {"label": "organization", "new_str": FACT1}),
                                                   content="I know this one; saving it to shared memory."),
                         text("I added how Letta was founded to the organization block."))
        scripted.enqueue("demo-agent2",
                         tool_calls(("memory_insert", {"label": "organization", "new_str": FACT2}),
                                    content="agent1 covered the founding; I will add the product."),
                         tool_calls(("memory_insert", {"label": "policies", "new_str": "agent2 was here"})),
                         text("I added Letta's product to the organization block. The policies block is "
                              "read-only, so I could not change it."))
        key_was_set = "OPENAI_API_KEY" in os.environ
        os.environ.setdefault("OPENAI_API_KEY", "scripted-local-model")  # never leaves 127.0.0.1
        try:
            yield DemoModel("openai/demo-agent1", "openai/demo-agent2", scripted.api_base, scripted=True)
        finally:
            if not key_was_set:
                os.environ.pop("OPENAI_API_KEY", None)


def tutorial_replies() -> list[Reply]:
    """The scripted model's replies to the three turns of Letta's tutorial programs, in their order: agent1 and
    agent2 each insert a line into `organization`; agent3 tries the read-only `policies` block."""
    return [tool_calls(("memory_insert", {"label": "organization", "new_str": TUTORIAL_LINE1})),
            text("I inserted what I learned into the organization block."),
            tool_calls(("memory_insert", {"label": "organization", "new_str": TUTORIAL_LINE2})),
            text("I added the origin of Letta."),
            tool_calls(("memory_insert", {"label": "policies", "new_str": "Be concise."})),
            text("The policies block is read-only, so I could not add the policy.")]


def new_demo_folder(directory: Path | None) -> Path:
    """Where a demo's workspace goes: `directory` if it is new or empty, else a new temp folder."""
    folder = directory or Path(tempfile.mkdtemp(prefix="memstore-demo-")) / "workspace"
    if folder.exists() and any(folder.iterdir()):
        raise WorkspaceError(f"{folder} is not empty; the demo needs a new folder.")
    return folder


def run_demo(folder: Path, model: str | None, say: Callable[[str], None],
             show_turn: Callable[[str, TurnResult], None]) -> Store:
    """Run the tutorial in a new workspace at `folder`, narrating through `say`."""
    store = Store.init(folder)
    say(f"Workspace: {folder.resolve()}")
    with demo_model(model) as chosen:
        if chosen.scripted:
            say("No provider key found (set OPENAI_API_KEY, or MEMSTORE_DEMO_MODEL / --model for another "
                "provider), so the agents run the same litellm loop against a scripted local model on 127.0.0.1.")
        else:
            say(f"Model: {chosen.agent1}")
        org = store.create_block("organization", "Organization: Letta", limit=4000,
                                 description="Shared information between all agents.")
        policies = store.create_block("policies", "1. Cite a source for every fact.\n2. Never share personal data.",
                                      read_only=True, description="Company policies. Read-only for agents.")
        store.create_agent("agent1", chosen.agent1, block_ids=[org.id], api_base=chosen.api_base,
                           system="You are agent1, a research agent. Keep shared memory accurate and short.")
        store.create_agent("agent2", chosen.agent2, block_ids=[policies.id], api_base=chosen.api_base,
                           system="You are agent2, a research agent. Keep shared memory accurate and short.")
        say("\n$ memstore agent send agent1 ...")
        show_turn("agent1", store.send_message("agent1", AGENT1_TASK))
        store.attach_block("agent2", "organization")
        say("\n(attached `organization` to agent2)\n$ memstore agent send agent2 ...")
        turn = store.send_message("agent2", AGENT2_TASK)
        show_turn("agent2", turn)
    refusals = [m.tool_return for m in turn.messages
                if m.message_type == "tool_return_message" and m.status == "error"]
    say("\nThe read-only block refused agent2: " + refusals[0] if refusals
        else "\n(agent2 did not try to edit the read-only `policies` block this time.)")
    say("\n$ memstore block show organization")
    say(store.get_block("organization").value)
    say("\n$ git log --format='%h %an <%ae>: %s'")
    say(subprocess.run(["git", "log", "--format=%h %an <%ae>: %s"], cwd=folder, capture_output=True, text=True,
                       check=True).stdout.rstrip())
    return store
