"""Letta's REST API under /v1, so Letta users' client code runs against memstore unchanged.

Each route is a few lines over the core (`memstore.Store`): every write is the core's one
edit path and one commit. Block and agent changes made here are authored by the caller
(`X-Memstore-Author: Name <email>`, else the client program's name), an agent's turn by
the agent. The caller is administrative, as in Letta: `read_only` binds agents' memory
tools, not this API. Beyond Letta, block edits honour `If-Match: <version>` (412 when
stale) and responses carry the block's version as an `ETag`.
"""

from __future__ import annotations

import email.utils
import inspect
import json
import queue
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from pydantic_core import to_jsonable_python
from starlette.exceptions import HTTPException as StarletteHTTPException

import memstore
from memstore import (
    Actor,
    Agent,
    AgentTurnError,
    AmbiguousNameError,
    ConflictError,
    EditResult,
    FileFormatError,
    InvalidInputError,
    InvalidNameError,
    LockTimeoutError,
    MemstoreError,
    NotAllowedError,
    NotFoundError,
    PreconditionFailedError,
    ReadOnlyError,
    Store,
    TurnResult,
    WorkspaceError,
)
from memstore.errors import EditError, os_error_text
from memstore.store import new_block
from memstore.validation import check_text

from .letta_shapes import (
    AgentCreate,
    AgentUpdate,
    BlockCreate,
    BlockUpdate,
    MessagesCreate,
    agent_json,
    block_json,
    message_json,
    turn_json,
)

PREFIX = "/v1"
T = TypeVar("T")

Limit = Annotated[int | None, Query(ge=1, le=1000, description="Most items to return.")]
Cursor = Annotated[str | None, Query(description="An id: return the items after (or before) it in this order.")]
Order = Annotated[Literal["asc", "desc"] | None, Query(description="asc: oldest first (blocks and agents: by id).")]
IfMatch = Annotated[str | None, Header(description="Apply only if the block is still at this version (else 412).")]

# Which core refusal is which HTTP status (Letta's codes where Letta has one).
STATUS: list[tuple[type[Exception], int]] = [
    (PreconditionFailedError, 412),
    (NotFoundError, 404),
    (AmbiguousNameError, 409),
    (ConflictError, 409),
    (ReadOnlyError, 403),
    (NotAllowedError, 403),
    (InvalidNameError, 422),
    (InvalidInputError, 422),
    (EditError, 422),
    (FileFormatError, 409),
    (WorkspaceError, 409),  # the repository's state refuses it: a merge under way, a refusing hook
    (LockTimeoutError, 503),
]


def create_app(store: Store, *, endpoints_allowed: bool = False) -> FastAPI:
    """The /v1 application over one store (mounted beside MCP by `serve --http`).

    `endpoints_allowed`: callers may point an agent's model at an endpoint of their choice
    (`llm_config.model_endpoint`). That endpoint would receive the server's provider key, so
    only a server whose callers prove themselves with a bearer token allows it.
    """
    app = FastAPI(title="memstore: Letta's API", version=memstore.__version__,
                  openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs", redoc_url=None)
    app.add_middleware(BodyLimit)
    _add_error_handlers(app)
    _add_block_routes(app, store)
    _add_agent_routes(app, store, endpoints_allowed)
    _add_message_routes(app, store)

    @app.get(f"{PREFIX}/health", tags=["health"])
    @app.get(f"{PREFIX}/health/", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok", "version": memstore.__version__}

    return app


class BodyLimit:
    """ASGI: a request body over `limit` bytes (MCP's own limit at /mcp) gets 413 with a JSON `detail`,
    before any of it is parsed. A declared length is checked up front (the server delivers no more than
    it); a chunked body, whose length is not declared, is read up to the limit and then handed on."""

    def __init__(self, app: Callable[..., Any], limit: int = DEFAULT_MAX_REQUEST_BODY_SIZE) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit():
            if int(declared) > self.limit:
                await self._too_large(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[dict[str, Any]] = []
        size, more = 0, True
        while more:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            more = message.get("more_body", False)

        async def replay() -> dict[str, Any]:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        detail = f"The request body is over {self.limit // (1024 * 1024)} MiB, the most this server reads."
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


# -- who is calling ------------------------------------------------------------------------


def caller(request: Request) -> Actor:
    """The commit author for this request: `X-Memstore-Author`, else the client program."""
    given = _header_text(request.headers.get("x-memstore-author", "")).strip()
    if given:
        name, address = email.utils.parseaddr(given)
        if not name and not address:
            raise InvalidInputError("X-Memstore-Author must be 'Name <email>' or a name.")
        if address and "@" in address:
            return Actor.client(name or address.split("@")[0], address)
        return Actor.client(name or given)
    sdk = request.headers.get("x-fern-sdk-name", "").strip()  # Letta's 0.1.x clients name themselves here
    if sdk:
        return Actor.client(sdk)
    agent = request.headers.get("user-agent", "").strip()  # else the product, e.g. `Letta/Python 1.12.1`
    return Actor.client(re.split(r"[\s/]", agent, maxsplit=1)[0] if agent else "letta-api-client")


def _header_text(value: str) -> str:
    """A header's text: HTTP carries bytes, which Starlette reads as Latin-1; clients send UTF-8 names."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


# -- lists ---------------------------------------------------------------------------------


def only_filters(request: Request, route: Callable[..., Any]) -> None:
    """Refuse a set query parameter that `route` does not take (Letta's `tags`, `identity_id`,
    `project_id`, `order_by`, …): ignored, it would list items the caller filtered out."""
    taken = set(inspect.signature(route).parameters)
    unsupported = sorted({key for key, value in request.query_params.multi_items()
                          if key not in taken and value.lower() not in ("", "false")})
    if unsupported:
        raise InvalidInputError(f"memstore does not support the list parameter(s) {', '.join(unsupported)}: "
                                "it keeps no tags, identities, projects or templates, and lists in id order.")


def _contains(text: str, search: str | None) -> bool:
    """Letta's `*_search` filters: a case-insensitive substring (no search: everything matches)."""
    return search is None or search.lower() in text.lower()


def page(items: Sequence[T], key: Callable[[T], str], *, limit: int | None, after: str | None,
         before: str | None, order: str, default_limit: int) -> list[T]:
    """Letta's cursor paging: items after/before a cursor id in the chosen order, at most `limit`.

    Blocks and agents are ordered by id, so a cursor keeps its place even when its item was
    deleted meanwhile; a client that asks with `after=<last id>` reaches an empty page.
    """
    ordered = sorted(items, key=key, reverse=order == "desc")
    if after is not None:
        ordered = [i for i in ordered if (key(i) < after if order == "desc" else key(i) > after)]
    if before is not None:
        ordered = [i for i in ordered if (key(i) > before if order == "desc" else key(i) < before)]
        return ordered[-(limit or default_limit):]
    return ordered[:limit or default_limit]


def page_by_position(items: Sequence[T], key: Callable[[T], str], *, limit: int | None, after: str | None,
                     before: str | None, order: str, default_limit: int, what: str) -> list[T]:
    """Paging for items kept in order (an agent's messages): the cursor must be one of them."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [key(i) for i in ordered]
    for cursor in (after, before):
        if cursor is not None and cursor not in ids:
            raise NotFoundError(f"No {what} with id {cursor}.")
    if after is not None:
        ordered = ordered[ids.index(after) + 1:]
        ids = ids[ids.index(after) + 1:]
    if before is not None:
        ordered = ordered[:ids.index(before)]
        return ordered[-(limit or default_limit):]
    return ordered[:limit or default_limit]


# -- responses -----------------------------------------------------------------------------


def with_version(body: Any, version: str | None, pending: str | None = None, status: int = 200) -> JSONResponse:
    """A JSON response carrying the block's version as its ETag (none while a commit is pending)."""
    headers = {}
    if version:
        headers["ETag"] = f'"{version}"'
    if pending:
        headers["X-Memstore-Pending"] = pending.replace("\n", " ")[:500]
    return JSONResponse(to_jsonable_python(body), status_code=status, headers=headers)


def agent_response(store: Store, agent: Agent) -> JSONResponse:
    """An agent, saying so (`X-Memstore-Pending`) when the commit of the change is pending."""
    return with_version(agent_json(store, agent), None, agent.pending)


def edited(result: EditResult) -> JSONResponse:
    return with_version(block_json(result.block), result.version, result.pending)


def expected(if_match: str | None, current: Callable[[], str | None] = lambda: None) -> str | None:
    """The version an `If-Match` header names (`"v"`, `W/"v"` or `*`).

    A list of versions (RFC 9110) matches when the block is at any of them: the one it is
    at now (`current()`) is passed on, and the core checks it again under the block's lock.
    """
    if if_match is None:
        return None
    tags = [t.strip().removeprefix("W/").strip('"') for t in if_match.split(",")]
    if not all(tags):
        raise InvalidInputError("If-Match is empty; give the version from the block's ETag.")
    if len(tags) == 1:
        return tags[0]
    now = current()
    return next((t for t in tags if now and (now.startswith(t) or t == "*")), tags[0])


# -- blocks --------------------------------------------------------------------------------


def _add_block_routes(app: FastAPI, store: Store) -> None:
    @app.post(f"{PREFIX}/blocks/", tags=["blocks"])
    @app.post(f"{PREFIX}/blocks", include_in_schema=False)
    def create_block(body: BlockCreate, request: Request) -> JSONResponse:
        block = store.create_block(body.label, body.value, limit=body.limit, read_only=body.read_only,
                                   description=body.description, metadata=body.metadata, actor=caller(request))
        return with_version(block_json(block), block.version, block.pending)

    @app.get(f"{PREFIX}/blocks/", tags=["blocks"])
    @app.get(f"{PREFIX}/blocks", include_in_schema=False)
    def list_blocks(request: Request, label: str | None = None, label_search: str | None = None,
                    value_search: str | None = None, description_search: str | None = None,
                    connected_to_agents_count_eq: Annotated[list[int] | None, Query()] = None,
                    connected_to_agents_count_gt: int | None = None, connected_to_agents_count_lt: int | None = None,
                    limit: Limit = None, after: Cursor = None, before: Cursor = None,
                    order: Order = None) -> list[dict[str, Any]]:
        """Letta's block filters; one memstore cannot honour (identities, projects, tags) is a 422."""
        only_filters(request, list_blocks)
        blocks = [b for b in store.list_blocks()
                  if (label is None or b.label == label)
                  and _contains(b.label, label_search) and _contains(b.value, value_search)
                  and _contains(b.description or "", description_search)]
        if connected_to_agents_count_eq or connected_to_agents_count_gt is not None \
                or connected_to_agents_count_lt is not None:
            attached = Counter(i for a in store.list_agents() for i in dict.fromkeys(a.blocks))
            blocks = [b for b in blocks
                      if (not connected_to_agents_count_eq or attached[b.id] in connected_to_agents_count_eq)
                      and (connected_to_agents_count_gt is None or attached[b.id] > connected_to_agents_count_gt)
                      and (connected_to_agents_count_lt is None or attached[b.id] < connected_to_agents_count_lt)]
        chosen = page(blocks, lambda b: b.id, limit=limit, after=after, before=before, order=order or "asc",
                      default_limit=50)
        return [block_json(b) for b in chosen]

    @app.get(f"{PREFIX}/blocks/{{block_id}}", tags=["blocks"])
    def get_block(block_id: str) -> JSONResponse:
        block = store.get_block(_block_id(block_id))
        return with_version(block_json(block), block.version, block.pending)

    @app.patch(f"{PREFIX}/blocks/{{block_id}}", tags=["blocks"])
    def update_block(block_id: str, body: BlockUpdate, request: Request, if_match: IfMatch = None) -> JSONResponse:
        fields = body.model_dump(include=set(BlockUpdate.model_fields), exclude_unset=True, exclude_none=True)
        block_id = _block_id(block_id)
        version = expected(if_match, lambda: store.get_block(block_id).version)
        return edited(store.update_block(block_id, actor=caller(request), expected_version=version, **fields))

    @app.delete(f"{PREFIX}/blocks/{{block_id}}", tags=["blocks"])
    def delete_block(block_id: str, request: Request, if_match: IfMatch = None) -> JSONResponse:
        block_id = _block_id(block_id)
        version = expected(if_match, lambda: store.get_block(block_id).version)
        block = store.delete_block(block_id, actor=caller(request), expected_version=version)
        return with_version(block_json(block), None, block.pending)

    @app.get(f"{PREFIX}/blocks/{{block_id}}/agents", tags=["blocks"])
    def block_agents(block_id: str, limit: Limit = None, after: Cursor = None, before: Cursor = None,
                     order: Order = None) -> list[dict[str, Any]]:
        agents = store.block_agents(store.get_block(_block_id(block_id)).id)
        chosen = page(agents, lambda a: a.id, limit=limit, after=after, before=before, order=order or "asc",
                      default_limit=50)
        return [agent_json(store, a) for a in chosen]


def _block_id(block_id: str) -> str:
    """Letta's routes take ids; a bad one is a 404 naming it, never a lookup by label."""
    if not block_id.startswith("block-"):
        raise NotFoundError(f"No block with id {block_id} (block ids look like block-<uuid>).")
    return block_id


def _agent_id(agent_id: str) -> str:
    if not agent_id.startswith("agent-"):
        raise NotFoundError(f"No agent with id {agent_id} (agent ids look like agent-<uuid>).")
    return agent_id


# -- agents --------------------------------------------------------------------------------


def _check_endpoint(api_base: str | None, allowed: bool) -> None:
    if api_base and not allowed:
        raise NotAllowedError("Setting an agent's model endpoint through the API needs a server started with "
                              "--token: the endpoint would receive this server's provider key.")


def _add_agent_routes(app: FastAPI, store: Store, endpoints_allowed: bool) -> None:
    @app.post(f"{PREFIX}/agents/", tags=["agents"])
    @app.post(f"{PREFIX}/agents", include_in_schema=False)
    def create_agent(body: AgentCreate, request: Request) -> JSONResponse:
        actor = caller(request)
        model, api_base = body.model_and_base()
        _check_endpoint(api_base, endpoints_allowed)
        name = body.name or f"agent{uuid.uuid4().hex[:8]}"  # Letta names unnamed agents too
        inline = [new_block(b.label, b.value, limit=b.limit, read_only=b.read_only, description=b.description,
                            metadata=b.metadata) for b in body.memory_blocks or []]
        agent = store.create_agent(name, model, block_ids=body.block_ids, new_blocks=inline, tools=body.tools,
                                   include_base_tools=body.include_base_tools, system=body.system,
                                   description=body.description, api_base=api_base, actor=actor)
        return agent_response(store, agent)

    @app.get(f"{PREFIX}/agents/", tags=["agents"])
    @app.get(f"{PREFIX}/agents", include_in_schema=False)
    def list_agents(request: Request, name: str | None = None, query_text: str | None = None,
                    limit: Limit = None, after: Cursor = None, before: Cursor = None, order: Order = None,
                    ascending: bool | None = None,
                    include: Annotated[list[str] | None, Query(description="Ignored: every field is sent.")] = None,
                    include_relationships: Annotated[list[str] | None, Query(
                        description="Ignored: every field is sent.")] = None) -> list[dict[str, Any]]:
        """Letta's agent filters (`query_text` searches names); one memstore cannot honour (tags,
        identities, projects, templates) is a 422."""
        only_filters(request, list_agents)
        agents = [a for a in store.list_agents() if (name is None or a.name == name) and _contains(a.name, query_text)]
        direction = order or ("desc" if ascending is False else "asc")
        chosen = page(agents, lambda a: a.id, limit=limit, after=after, before=before, order=direction,
                      default_limit=50)
        return [agent_json(store, a) for a in chosen]

    @app.get(f"{PREFIX}/agents/{{agent_id}}", tags=["agents"])
    def get_agent(agent_id: str) -> dict[str, Any]:
        return agent_json(store, store.get_agent(_agent_id(agent_id)))

    @app.patch(f"{PREFIX}/agents/{{agent_id}}", tags=["agents"])
    def update_agent(agent_id: str, body: AgentUpdate, request: Request) -> JSONResponse:
        agent = store.get_agent(_agent_id(agent_id))
        if body.name is not None and body.name != agent.name:
            raise InvalidInputError(f"Renaming an agent is not supported: its name is its file name "
                                    f"(agents/{agent.name}.md). Create a new agent instead.")
        model, api_base = body.model_and_base() if body.model or body.llm_config else (None, None)
        _check_endpoint(api_base, endpoints_allowed)
        updated = store.update_agent(agent.id, model=model, api_base=api_base, system=body.system,
                                     description=body.description, tools=body.tools, block_ids=body.block_ids,
                                     actor=caller(request))
        return agent_response(store, updated)

    @app.delete(f"{PREFIX}/agents/{{agent_id}}", tags=["agents"])
    def delete_agent(agent_id: str, request: Request) -> JSONResponse:
        agent = store.delete_agent(_agent_id(agent_id), actor=caller(request))
        return with_version({"message": f"Agent id={agent.id} successfully deleted"}, None, agent.pending)

    core = f"{PREFIX}/agents/{{agent_id}}/core-memory/blocks"

    @app.get(core, tags=["core memory"])
    def agent_blocks(agent_id: str) -> list[dict[str, Any]]:
        return [block_json(b) for b in store.agent_blocks(_agent_id(agent_id))]

    @app.patch(core + "/attach/{block_id}", tags=["core memory"])
    def attach(agent_id: str, block_id: str, request: Request) -> JSONResponse:
        agent = store.attach_block(_agent_id(agent_id), _block_id(block_id), actor=caller(request))
        return agent_response(store, agent)

    @app.patch(core + "/detach/{block_id}", tags=["core memory"])
    def detach(agent_id: str, block_id: str, request: Request) -> JSONResponse:
        agent = store.detach_block(_agent_id(agent_id), _block_id(block_id), actor=caller(request))
        return agent_response(store, agent)

    @app.get(core + "/{block_label}", tags=["core memory"])
    def agent_block(agent_id: str, block_label: str) -> JSONResponse:
        block = store.agent_block(_agent_id(agent_id), block_label)
        return with_version(block_json(block), block.version, block.pending)

    @app.patch(core + "/{block_label}", tags=["core memory"])
    def update_agent_block(agent_id: str, block_label: str, body: BlockUpdate, request: Request,
                           if_match: IfMatch = None) -> JSONResponse:
        block = store.agent_block(_agent_id(agent_id), block_label)
        fields = body.model_dump(include=set(BlockUpdate.model_fields), exclude_unset=True, exclude_none=True)
        version = expected(if_match, lambda: store.get_block(block.id).version)
        return edited(store.update_block(block.id, actor=caller(request), expected_version=version, **fields))


# -- messages ------------------------------------------------------------------------------


def _add_message_routes(app: FastAPI, store: Store) -> None:
    messages = f"{PREFIX}/agents/{{agent_id}}/messages"

    @app.post(messages, tags=["messages"], response_model=None)
    def send(agent_id: str, body: MessagesCreate) -> dict[str, Any] | StreamingResponse:
        """One turn; with `streaming: true` (1.x clients), the same turn as server-sent events."""
        if body.streaming:
            return stream(agent_id, body)
        return turn_json(_turn(store, _agent_id(agent_id), body))

    @app.post(messages + "/stream", tags=["messages"])
    def stream(agent_id: str, body: MessagesCreate) -> StreamingResponse:
        store.get_agent(_agent_id(agent_id))  # an unknown agent is a 404, not an empty stream
        check_text(body.text(), "message")  # bad input is a 422 before the stream's 200 goes out
        return StreamingResponse(_stream_turn(store, agent_id, body), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get(messages, tags=["messages"])
    def list_messages(agent_id: str, limit: Limit = None, after: Cursor = None, before: Cursor = None,
                      order: Order = None, include_err: bool = False) -> list[dict[str, Any]]:
        """The agent's log; the notes of turns that ended early only with `include_err` (as in Letta)."""
        logged = [m for m in store.list_messages(_agent_id(agent_id), limit=1_000_000)
                  if include_err or m.message_type != "error_message"]
        chosen = page_by_position(logged, lambda m: m.id, limit=limit, after=after, before=before,
                                  order=order or "desc", default_limit=100, what="message")
        return [message_json(m) for m in chosen]


def _turn(store: Store, agent_id: str, body: MessagesCreate,
          on_message: Callable[[Any], None] | None = None) -> TurnResult:
    options: dict[str, Any] = {"on_message": on_message}
    if body.max_steps is not None:
        options["max_steps"] = body.max_steps
    try:
        return store.send_message(agent_id, body.text(), **options)
    except AgentTurnError as exc:
        raise TurnFailed(exc) from None


class TurnFailed(MemstoreError):
    """A turn the provider or the model ended early: 502 when the model failed, with what it did."""

    def __init__(self, error: AgentTurnError) -> None:
        super().__init__(str(error))
        self.result: TurnResult = error.result


def _stream_turn(store: Store, agent_id: str, body: MessagesCreate) -> Iterator[str]:
    """The turn as server-sent events: each message as its step ends, then stop_reason and usage."""
    events: queue.Queue[Any] = queue.Queue()
    done = object()

    def run() -> None:
        try:
            events.put(_turn(store, agent_id, body, on_message=events.put))
        except Exception as exc:  # noqa: BLE001 - the stream's edge: the client hears of every failure (TurnFailed too)
            events.put(exc)
        finally:
            events.put(done)

    threading.Thread(target=run, name=f"turn-{agent_id}", daemon=True).start()
    while (item := events.get()) is not done:
        if isinstance(item, TurnResult):
            yield _event(item.stop_reason.model_dump())
            yield _event(item.usage.model_dump())
        elif isinstance(item, TurnFailed):
            yield _event(item.result.stop_reason.model_dump())
            yield _event({"message_type": "error_message", "error_type": item.result.stop_reason.stop_reason,
                          "message": str(item), "detail": str(item)})
        elif isinstance(item, Exception):
            yield _event({"message_type": "error_message", "error_type": "error", "message": _error_text(item),
                          "detail": _error_text(item)})
        else:
            yield _event(message_json(item))
    yield "data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


# -- errors --------------------------------------------------------------------------------


def _error_text(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"memstore could not complete this: {os_error_text(exc)}"
    return str(exc) if isinstance(exc, MemstoreError) else f"unexpected {type(exc).__name__}: {exc}"


def _json_safe(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error without the input it quotes when JSON cannot carry it (NaN, Infinity)."""
    try:
        json.dumps(error, allow_nan=False)
        return error
    except (ValueError, TypeError):
        return {k: v for k, v in error.items() if k not in ("input", "ctx")}


def status_of(exc: Exception) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TurnFailed)
    async def turn_failed(_: Request, exc: TurnFailed) -> JSONResponse:
        reason = exc.result.stop_reason.stop_reason
        return JSONResponse({"detail": str(exc), **turn_json(exc.result)},
                            status_code=502 if reason == "llm_api_error" else 500)

    @app.exception_handler(MemstoreError)
    async def refused(_: Request, exc: MemstoreError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(OSError)
    async def system_refused(_: Request, exc: OSError) -> JSONResponse:
        return JSONResponse({"detail": _error_text(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_json_safe(e) for e in jsonable_encoder(exc.errors(), custom_encoder={Exception: str})]
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
        return JSONResponse({"detail": f"Invalid request: {problems}", "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body JSON cannot read (nested too deep, a number too long): a bad body
            return JSONResponse({"detail": f"Invalid request: the body is not JSON this server reads ({exc.detail})."},
                                status_code=422)
        return await http_exception_handler(request, exc)

