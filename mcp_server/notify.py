"""Resource notifications: workspace changes seen by the watcher, fanned out to MCP clients.

Two client generations need two paths (see the SDK notes): 2025-protocol hosts subscribe
with `resources/subscribe` and get `notifications/resources/updated` on their session;
2026-protocol clients listen on the server's subscription bus. The watcher runs on its
own thread, so each change is handed to the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.lowlevel.server import Server
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

log = logging.getLogger("memstore.mcp")


class Notifier:
    """Keeps who subscribed to which resource, and tells them when it changes."""

    def __init__(self, bus: Any, uri_of: Callable[[str], str | None]) -> None:
        self.bus = bus
        self.uri_of = uri_of  # workspace path -> resource URI (None: not a resource)
        # The SDK hands each request its own session object over one connection: keep the
        # latest per subscribed connection, and forget it when sending fails (the client left).
        self.subscribers: dict[str, dict[int, Any]] = {}
        self.sessions: dict[int, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def install(self, lowlevel: Server[Any]) -> None:
        """Handle resources/subscribe and unsubscribe; note every session that talks to us."""
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)
        lowlevel.middleware.append(self._track)

    async def _track(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        self.loop = asyncio.get_running_loop()  # where the watcher thread hands changes over
        return await call_next(ctx)

    async def _subscribe(self, ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
        """A 2025-protocol client subscribes: it also hears when blocks are created or deleted."""
        key = _connection(ctx.session)
        self.subscribers.setdefault(str(params.uri), {})[key] = ctx.session
        self.sessions[key] = ctx.session
        return EmptyResult()

    async def _unsubscribe(self, ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        key = _connection(ctx.session)
        self.subscribers.get(str(params.uri), {}).pop(key, None)
        if not any(key in subscribed for subscribed in self.subscribers.values()):
            self.sessions.pop(key, None)
        return EmptyResult()

    def changed(self, rel: str, kind: str) -> None:
        """Called by the watcher thread: `rel` was updated, created or deleted."""
        uri, loop = self.uri_of(rel), self.loop
        if uri is None or loop is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._send(uri, kind != "updated"), loop)

    async def _send(self, uri: str, list_changed: bool) -> None:
        subscribed = self.subscribers.get(uri, {})
        for key, session in list(subscribed.items()):
            if not await _quietly(session.send_resource_updated(uri)):
                subscribed.pop(key, None)
        await _quietly(self.bus.publish(ResourceUpdated(uri=uri)))
        if list_changed:
            for key, session in list(self.sessions.items()):
                if not await _quietly(session.send_resource_list_changed()):
                    self.sessions.pop(key, None)
            await _quietly(self.bus.publish(ResourcesListChanged()))


def _connection(session: Any) -> int:
    """One key per client connection (the SDK's per-request sessions share it)."""
    return id(getattr(session, "_connection", session))


async def _quietly(sending: Awaitable[Any]) -> bool:
    """A client that went away must not stop the others from hearing about a change."""
    try:
        await sending
    except Exception as exc:  # noqa: BLE001 - any transport failure of one session
        log.info("could not notify a client: %r", exc)
        return False
    return True
