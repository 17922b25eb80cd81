"""Memory blocks rendered the way Letta places them in an agent's system prompt."""

from __future__ import annotations

from collections.abc import Iterable

from .models import Block

_HEADER = "The following memory blocks are currently engaged in your core memory unit:"


def render_block_element(block: Block) -> str:
    """One `<label>…</label>` element: description, metadata (chars, limit, read-only), value."""
    meta = []
    if block.read_only:
        meta.append("- read_only=true")
    meta += [f"- chars_current={block.chars_current}", f"- chars_limit={block.limit}"]
    return "\n".join([
        f"<{block.label}>",
        "<description>", block.description or "", "</description>",
        "<metadata>", *meta, "</metadata>",
        "<value>", block.value, "</value>",
        f"</{block.label}>",
    ])


def render_memory_blocks(blocks: Iterable[Block]) -> str:
    """The `<memory_blocks>` section: every block, in the agent's order."""
    parts = ["<memory_blocks>", _HEADER, ""]
    for block in blocks:
        parts += [render_block_element(block), ""]
    parts.append("</memory_blocks>")
    return "\n".join(parts)
