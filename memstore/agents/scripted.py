"""A scripted OpenAI-compatible chat server on 127.0.0.1, for the offline demo and the tests.

Point an agent at it with `model="openai/<script name>"` and `api_base=server.api_base`;
litellm then makes real HTTP requests, and the server answers each with the next reply
queued for that script name: a text, tool calls, an HTTP error, a delay, or raw bytes.
Every request body is kept, so a test can read the prompt the agent sent.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: a chat completion body, or an HTTP error, after an optional delay."""

    body: dict[str, Any] | bytes | None = None
    status: int = 200
    delay: float = 0.0
    before: Callable[[], None] | None = None  # run when the request arrives, before answering


def text(content: str) -> Reply:
    """The model answers with text and no tool calls: the turn ends."""
    return Reply(_completion({"role": "assistant", "content": content}, "stop"))


def tool_calls(*calls: tuple[str, dict[str, Any] | str], content: str | None = None) -> Reply:
    """The model calls tools; a str argument is sent verbatim (to script malformed calls)."""
    message = {"role": "assistant", "content": content, "tool_calls": [
        {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
         "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
        for name, args in calls]}
    return Reply(_completion(message, "tool_calls"))


def http_error(status: int, message: str = "scripted failure") -> Reply:
    return Reply({"error": {"message": message, "type": "scripted", "code": status}}, status=status)


def _completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": "scripted", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}


@dataclass
class ScriptedModel:
    """The server: `enqueue(name, *replies)`, then read `requests[name]` afterwards."""

    requests: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    _queues: dict[str, deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def api_base(self) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def enqueue(self, name: str, *replies: Reply) -> None:
        with self._lock:
            self._queues[name].extend(replies)

    def pending(self, name: str) -> int:
        with self._lock:
            return len(self._queues[name])

    def start(self) -> ScriptedModel:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="scripted-model", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, body: dict[str, Any]) -> Reply:
        name = str(body.get("model", ""))
        with self._lock:
            self.requests[name].append(body)
            queue = self._queues[name]
            return queue.popleft() if queue else http_error(500, f"the script for {name!r} has no reply left")


def _handler(model: ScriptedModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {}
            reply = model._next(body if isinstance(body, dict) else {})
            if reply.before is not None:
                reply.before()
            if reply.delay:
                time.sleep(reply.delay)
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a scripted timeout)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            return

    return Handler
