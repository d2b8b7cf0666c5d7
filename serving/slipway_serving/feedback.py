"""Ground-truth feedback: predictions remembered by request id (bounded LRU), true labels reported later, counted.

Every inference request gets an id the server makes up (122 random bits; an ``x-request-id``
the client sent is replaced, so nobody can pick, guess or reuse the id a prediction is filed
under), and the response carries it back in ``x-request-id``. The predicted classes of the last
``capacity`` requests are remembered under that id. A labeller that learns the true labels
later posts them, with the deployment's feedback token (``Authorization: Bearer <token>``; the
token comes from a Secret, see docs/security.md; without a token configured, feedback is off
and answered 403, a wrong or missing token 401)::

    POST /v2/models/{name}/feedback   {"id": "<x-request-id>", "labels": [3, 7, ...]}

(``"label": 3`` for a single instance). The labels are compared with what this process
predicted, in order, and counted per version in ``slipway_feedback_total`` (compared) and
``slipway_feedback_correct_total`` (right) — live accuracy is their ratio; an id that is
unknown (never seen, evicted, or already answered) is answered 404 and counted in
``slipway_feedback_unmatched_total``.
"""

from __future__ import annotations

import hmac
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import FEEDBACK, FEEDBACK_CORRECT, FEEDBACK_UNMATCHED
from .middleware import is_inference_path

HEADER = b"x-request-id"
DEFAULT_CAPACITY = 10_000
"""Requests whose predictions are remembered (the oldest are forgotten first)."""
MAX_ID_LENGTH = 200
MAX_LABELS = 4096

current_request_id: ContextVar[str | None] = ContextVar("slipway_request_id", default=None)
"""The id of the inference request being handled (set by RequestIdMiddleware)."""


class RequestIdMiddleware:
    """Gives each inference request a new id of the server's own (any ``x-request-id`` the client sent
    is replaced), returns it in the response, and makes it the current request id while the request is handled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_inference_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        raw = uuid.uuid4().hex.encode()
        scope = {**scope, "headers": [*(h for h in scope["headers"] if h[0] != HEADER), (HEADER, raw)]}
        request_id = raw.decode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, raw)]}
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class PredictionLog:
    """The predicted classes of recent requests by request id; the least recently stored go first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, classes: np.ndarray) -> None:
        """File the classes just predicted under the current request's id (no id: nothing to do)."""
        request_id = current_request_id.get()
        if request_id is None:
            return
        entries = self._entries
        entries[request_id] = tuple(str(c) for c in classes.tolist())
        entries.move_to_end(request_id)
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def take(self, request_id: str) -> tuple[str, ...] | None:
        """The classes predicted for a request, forgotten on the way out (feedback counts once)."""
        return self._entries.pop(request_id, None)


class FeedbackError(ValueError):
    """A feedback body that cannot be counted: the message says why; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _label(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FeedbackError(f"a label must be a number or a string, not {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def parse(body: Any) -> tuple[str, tuple[str, ...]]:
    """``{"id": ..., "labels": [...]}`` or ``{"id": ..., "label": x}`` → (id, labels)."""
    if not isinstance(body, dict):
        raise FeedbackError('the body must be a JSON object: {"id": "...", "labels": [...]}')
    request_id = body.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_LENGTH:
        raise FeedbackError(f"id must be the request's x-request-id (a string of 1 to {MAX_ID_LENGTH} characters)")
    if ("labels" in body) == ("label" in body):
        raise FeedbackError("give exactly one of labels (a list, one per instance) or label (one instance)")
    raw = body["labels"] if "labels" in body else [body["label"]]
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_LABELS:
        raise FeedbackError(f"labels must be a list of 1 to {MAX_LABELS} labels")
    return request_id, tuple(_label(v) for v in raw)


class Feedback:
    """Compares reported labels with remembered predictions and counts them for one model version."""

    def __init__(self, model: str, version: str, log: PredictionLog) -> None:
        self.model = model
        self.log = log
        self._total = FEEDBACK.labels(model, version)
        self._correct = FEEDBACK_CORRECT.labels(model, version)
        self._unmatched = FEEDBACK_UNMATCHED.labels(model, version)

    def report(self, request_id: str, labels: tuple[str, ...]) -> dict[str, Any]:
        """Count one report; FeedbackError (404) for an unknown id, (400) for a label count that does not fit."""
        predicted = self.log.take(request_id)
        if predicted is None:
            self._unmatched.inc()
            raise FeedbackError(f"no prediction remembered for request {request_id!r} (unknown, old or answered)", 404)
        if len(predicted) != len(labels):
            raise FeedbackError(
                f"request {request_id!r} predicted {len(predicted)} instances, got {len(labels)} labels"
            )
        correct = sum(p == t for p, t in zip(predicted, labels, strict=True))
        self._total.inc(len(labels))
        self._correct.inc(correct)
        return {"id": request_id, "compared": len(labels), "correct": correct}


def authorise(token: str, authorization: str | None) -> None:
    """FeedbackError unless ``authorization`` is ``Bearer <token>`` (403 when no token is configured)."""
    if not token:
        raise FeedbackError("feedback is off: this server has no feedback token (SLIPWAY_FEEDBACK_TOKEN)", 403)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise FeedbackError("feedback needs Authorization: Bearer <the deployment's feedback token>", 401)


def install(app: FastAPI, model_name: str, feedback: Feedback, token: str = "") -> Callable[[np.ndarray], None]:
    """Add the request-id middleware and the feedback route; returns the hook that remembers predictions."""
    app.add_middleware(RequestIdMiddleware)

    async def post_feedback(name: str, request: Request) -> JSONResponse:
        try:
            authorise(token, request.headers.get("authorization"))
            if name != model_name:
                raise FeedbackError(f"model {name} is not served here", 404)
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError as exc:
                raise FeedbackError(f"the body is not JSON: {exc}") from exc
            return JSONResponse(feedback.report(*parse(body)))
        except FeedbackError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    app.add_api_route("/v2/models/{name}/feedback", post_feedback, methods=["POST"], include_in_schema=False)
    return feedback.log.remember
