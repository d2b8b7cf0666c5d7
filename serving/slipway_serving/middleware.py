"""ASGI middleware: request counts by status code, latency, the request body size limit, JSON as the V2 default."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ERROR_KIND_STATE_KEY, PayloadTooLarge, ServingError, error_body, status_of
from .precheck import precheck


def is_inference_path(path: str) -> bool:
    """V1 ``/v1/models/{m}:predict|:explain`` and V2 ``/v2/models/{m}[/versions/{v}]/infer``."""
    if path.startswith("/v1/models/"):
        return path.endswith((":predict", ":explain"))
    return path.startswith("/v2/models/") and path.endswith("/infer")


V2_BINARY_HEADER = b"inference-header-content-length"
"""The header that marks a V2 body in the binary-tensor format (a JSON header, then raw tensor bytes)."""


def json_by_default(scope: Scope) -> Scope:
    """A V2 inference body without Content-Type that is not in the binary-tensor format is read as JSON.

    ``tritonclient.http`` (the most common Open Inference Protocol client) sends its JSON mode
    (``binary_data=False``) without a Content-Type header; FastAPI then hands KServe raw bytes,
    which KServe can only decode as binary tensors, and answers 400 for the missing
    ``inference-header-content-length``. A body with that header, or with any Content-Type, is
    left as the client sent it.
    """
    if scope["method"] != "POST" or not scope["path"].startswith("/v2/models/"):
        return scope
    names = {name.lower() for name, _ in scope["headers"]}
    if b"content-type" in names or V2_BINARY_HEADER in names:
        return scope
    return {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}


class InFlight:
    """The number of inference requests between the middleware's entry and exit."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


class _BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without Content-Length grows past the limit."""


VERSION_HEADER = b"x-model-version"
"""Every answer says which model version gave it, errors included (a client behind a split can tell)."""


class ServingMiddleware:
    """Counts every inference request by final status code and times it; caps body sizes; names the version.

    Pure ASGI (no ``BaseHTTPMiddleware``) to keep the per-request cost to a few function calls.
    Beyond ``max_in_flight`` inference requests held at once (running, or queued for the model
    thread: the queue is bounded by this), a request is answered 503 with ``Retry-After`` before
    its body is read (0: no cap).
    A body whose Content-Length exceeds ``max_body_bytes`` is answered 413 before it is read;
    a chunked body is counted as it streams and cut off the same way. Requests that end in an
    unhandled exception are counted as 500 here, then re-raised for Starlette to answer.
    With ``max_values`` (called per request: the model's bound on values per request, None
    while unknown), a JSON inference body is read whole (it is bounded in bytes) and looked at
    cheaply (:func:`.precheck.precheck`) before the application parses it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        on_request: Callable[[int, float, str | None], None],
        in_flight: InFlight | None = None,
        max_in_flight: int = 0,
        model_version: str = "",
        max_values: Callable[[], int | None] | None = None,
    ) -> None:
        self.app = app
        self.version_header = [(VERSION_HEADER, model_version.encode())] if model_version else []
        self.max_body_bytes = max_body_bytes
        self.on_request = on_request
        self.in_flight = in_flight or InFlight()
        self.max_in_flight = max_in_flight
        self.max_values = max_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observed = is_inference_path(scope["path"])
        if observed and 0 < self.max_in_flight <= self.in_flight.count:
            started = time.perf_counter()
            await _overloaded(send, self.max_in_flight)
            self.on_request(503, time.perf_counter() - started, "overloaded")
            return
        if observed:
            self.in_flight.count += 1
            scope = json_by_default(scope)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                if self.version_header:
                    message = {**message, "headers": [*message.get("headers", []), *self.version_header]}
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                await self._reject(scope, send_wrapper, length)
            elif observed and self.max_values is not None and _is_json(scope):
                body = await _read_all(self._counting(receive))
                refusal = precheck(body, self.max_values())
                if refusal is not None:
                    await _refuse(scope, send_wrapper, refusal)
                else:
                    await self.app(scope, _replay(body, receive), send_wrapper)
            elif length is not None:
                await self.app(scope, receive, send_wrapper)
            else:
                await self.app(scope, self._counting(receive), send_wrapper)
        except _BodyTooLarge:
            if response_started:
                raise
            await self._reject(scope, send_wrapper, None)
        finally:
            if observed:
                self.in_flight.count -= 1
                state = scope.get("state")
                kind = state.get(ERROR_KIND_STATE_KEY) if isinstance(state, dict) else None
                self.on_request(status, time.perf_counter() - started, kind)

    def _counting(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        return counting_receive

    async def _reject(self, scope: Scope, send: Send, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "the body"
        await _refuse(scope, send, PayloadTooLarge(f"{size} exceeds the limit of {self.max_body_bytes} bytes"))


async def _refuse(scope: Scope, send: Send, error: ServingError) -> None:
    """Answer ``error`` (4xx) without the application, noting its kind for the request metrics."""
    state = scope.setdefault("state", {})
    if isinstance(state, dict):
        state[ERROR_KIND_STATE_KEY] = error.kind
    body = orjson.dumps(error_body(error.message))
    await send(
        {
            "type": "http.response.start",
            "status": int(status_of(error)),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _is_json(scope: Scope) -> bool:
    """A body in JSON (not V2's binary-tensor format, not another declared type): the one precheck reads."""
    headers: dict[bytes, bytes] = {name.lower(): value for name, value in scope["headers"]}
    if V2_BINARY_HEADER in headers:
        return False
    content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
    return content_type == b"application/json"


async def _read_all(receive: Receive) -> bytes:
    """The whole request body (``receive`` bounds it), chunk by chunk."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the application the body already read, then what the client sends next."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _overloaded(send: Send, limit: int) -> None:
    """503 with Retry-After: the server already holds ``limit`` inference requests (running or queued)."""
    body = orjson.dumps(error_body(f"overloaded: {limit} inference requests in flight; retry shortly"))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": [*headers, (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
