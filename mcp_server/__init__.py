"""memstore's MCP front end: tools and resources over the core, served on stdio or HTTP.

`MemstoreServer` and `ServerConfig` load the MCP SDK on first use, so the `memstore`
command (which lives in `mcp_server.cli`) starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import MemstoreServer, ServerConfig

__all__ = ["MemstoreServer", "ServerConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'mcp_server' has no attribute {name!r}")
