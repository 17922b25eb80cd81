"""Running the server: stdio for hosts that launch it, streamable HTTP with a bearer token."""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import anyio

from memstore import MemstoreError, Store
from memstore.watcher import Watcher

from .server import MemstoreServer, ServerConfig

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

MCP_PATH = "/mcp"
API_PATH = "/v1"


class ServeError(MemstoreError):
    """The server cannot start as asked (a public address without a token, a taken port)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: addresses no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_http_options(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a bearer token."""
    if token is not None and not token.strip():
        raise ServeError("The bearer token is empty; pass a real secret with --token or MEMSTORE_TOKEN.")
    if not is_loopback(host) and not token:
        raise ServeError(
            f"Refusing to listen on {host} without a bearer token: anyone who can reach it could edit "
            "memory. Pass --token SECRET (or set MEMSTORE_TOKEN), or bind 127.0.0.1."
        )


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`, else 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            body = json.dumps({"detail": "Missing or wrong bearer token (Authorization: Bearer <token>).",
                               "error": "unauthorized",
                               "error_description": "missing or wrong bearer token"}).encode()
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="memstore"')]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        """`Bearer <token>`, the scheme in any case (RFC 9110 makes auth schemes case-insensitive)."""
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, credentials = given.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.expected)


def serve_stdio(store: Store, config: ServerConfig, *, watch: bool = True) -> None:
    """Serve one host over stdin/stdout until it closes the pipe."""
    server = MemstoreServer(store, config, notifications=watch)
    with _watching(server, watch):
        server.run("stdio")


@contextmanager
def _watching(server: MemstoreServer, watch: bool) -> Iterator[None]:
    """Run the hand-edit watcher beside the server; its changes become resource notifications."""
    if not watch:
        yield
        return
    with Watcher(server.store, on_change=server.notifier.changed):
        yield


class ByPath:
    """ASGI: requests under /v1 go to Letta's API, everything else (and the lifespan) to MCP.

    Bound to loopback, the API answers only requests addressed to a loopback name, so a web
    page cannot reach it through DNS rebinding (the MCP SDK checks /mcp the same way).
    """

    def __init__(self, mcp: ASGIApp, letta: ASGIApp, *, loopback_only: bool) -> None:
        self.mcp = mcp
        self.letta = letta
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        path = scope.get("path", "") if scope["type"] in ("http", "websocket") else ""
        if not (path == API_PATH or path.startswith(API_PATH + "/")):
            await self.mcp(scope, receive, send)
        elif self.loopback_only and not _addressed_to_loopback(scope):
            body = json.dumps({"detail": "This server answers only requests addressed to 127.0.0.1, ::1 or "
                                         "localhost."}).encode()
            await send({"type": "http.response.start", "status": 421, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        else:
            await self.letta(scope, receive, send)


def _addressed_to_loopback(scope: Scope) -> bool:
    host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
    try:
        name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return False
    return is_loopback(name)


def serve_http(store: Store, config: ServerConfig, *, host: str, port: int, token: str | None,
               watch: bool = True) -> None:
    """Serve MCP (streamable HTTP) at /mcp and Letta's API at /v1; port 0 picks a free port (printed on stderr)."""
    import uvicorn

    from .letta_api import create_app

    check_http_options(host, token)
    server = MemstoreServer(store, config, notifications=watch)
    app: ASGIApp = ByPath(server.streamable_http_app(streamable_http_path=MCP_PATH, host=host),
                          create_app(store, endpoints_allowed=bool(token)), loopback_only=is_loopback(host))
    if token:
        app = BearerAuth(app, token)
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{sock.getsockname()[1]}"
    print(f"memstore: serving MCP on {base}{MCP_PATH} and Letta's API on {base}{API_PATH}"
          f"{' (bearer token required)' if token else ''}", file=sys.stderr, flush=True)
    config_ = uvicorn.Config(app, log_level="warning", lifespan="on")
    with _watching(server, watch):
        anyio.run(lambda: uvicorn.Server(config_).serve(sockets=[sock]))


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
