"""Shared helpers for the MCP tests: call a tool and get its structured result or its error."""

from __future__ import annotations

from typing import Any

from mcp import Client


async def ok(client: Client, tool: str, **args: Any) -> Any:
    """Call `tool`; fail the test on an error; return the structured result (lists unwrapped)."""
    result = await client.call_tool(tool, args)
    assert not result.is_error, f"{tool} failed: {result.content}"
    data = result.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


async def error(client: Client, tool: str, **args: Any) -> str:
    """Call `tool`; fail the test unless it is a tool error; return the error text."""
    result = await client.call_tool(tool, args)
    assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
    text = result.content[0].text
    assert "Traceback" not in text
    return text
