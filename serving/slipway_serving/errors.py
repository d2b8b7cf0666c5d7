"""Small exception types for the serving path, and the one place that maps them to HTTP codes."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

log = logging.getLogger(__name__)

#: Key under ``scope["state"]`` where the error kind of a failed request is left for the
#: metrics middleware, so that every failed request is counted once, with its reason.
ERROR_KIND_STATE_KEY = "slipway_error_kind"


class ServingError(Exception):
    """Base of every error the serving path raises on purpose; ``kind`` is a metric label."""

    kind: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServingError):
    """The request cannot be read: not an object, missing inputs, not numbers."""

    kind = "invalid_request"


class ShapeMismatch(InvalidRequest):
    """An instance does not have the shape the model's signature declares."""

    kind = "shape"


class DtypeMismatch(InvalidRequest):
    """The values cannot be converted to the signature's dtype without loss."""

    kind = "dtype"


class PayloadTooLarge(ServingError):
    """Too many bytes in the body, or too many instances in one request."""

    kind = "too_large"


class ModelNotLoaded(ServingError):
    """A prediction was asked of a model that is not (or no longer) ready."""

    kind = "not_ready"


class PredictionFailed(ServingError):
    """The model itself raised while predicting a request that passed validation."""

    kind = "prediction"


class ModelLoadError(ServingError):
    """The artifact could not be found, resolved, loaded or warmed up."""

    kind = "load"


# The one mapping from error type to HTTP status. Lookup walks the MRO, so subclasses inherit.
HTTP_STATUS: dict[type[ServingError], HTTPStatus] = {
    ServingError: HTTPStatus.INTERNAL_SERVER_ERROR,
    InvalidRequest: HTTPStatus.BAD_REQUEST,
    PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ModelNotLoaded: HTTPStatus.SERVICE_UNAVAILABLE,
    PredictionFailed: HTTPStatus.INTERNAL_SERVER_ERROR,
    ModelLoadError: HTTPStatus.SERVICE_UNAVAILABLE,
}


def status_of(exc: ServingError) -> HTTPStatus:
    """The HTTP status for a serving error: the entry of its closest mapped class."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_body(message: str) -> dict[str, str]:
    """The JSON body of every error response (the same ``error`` key KServe uses)."""
    return {"error": message}


def install_exception_handlers(app: FastAPI) -> None:
    """Answer every :class:`ServingError` with its mapped status and a one-line JSON message."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        status = status_of(exc)
        setattr(request.state, ERROR_KIND_STATE_KEY, exc.kind)
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        else:
            log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc.message)
        return Response(orjson.dumps(error_body(exc.message)), status_code=status, media_type="application/json")

    app.add_exception_handler(ServingError, handle)
