"""Wiring: logging, torch threads, the model, the middleware and ``kserve.ModelServer``."""

from __future__ import annotations

import gc
import logging
from typing import Any

from fastapi import FastAPI

from . import feedback
from .config import ServingConfig
from .errors import install_exception_handlers
from .frameworks import configure_torch_threads
from .middleware import ServingMiddleware
from .model import SlipwayModel

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(process)s %(name)s %(levelname)s %(message)s"


def configure_logging(access_log: bool) -> None:
    """KServe's log format for everything; per-request access lines only when asked for."""
    from kserve.logging import configure_logging as kserve_logging

    kserve_logging()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    if not access_log:
        # uvicorn's access line and KServe's two timing lines (kserve.trace) per request.
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)


def kserve_app() -> FastAPI:
    """The FastAPI application ``kserve.ModelServer`` serves (``kserve.model_server.app``)."""
    from kserve import model_server

    app: FastAPI = model_server.app
    return app


def install(app: FastAPI, model: SlipwayModel) -> None:
    """Add Slipway's middleware and exception handlers to the KServe app (before it starts)."""
    app.add_middleware(
        ServingMiddleware,
        max_body_bytes=model.config.limits.max_body_bytes,
        on_request=model.metrics.request_done,
        in_flight=model.in_flight,
        max_in_flight=model.config.max_in_flight,
        model_version=model.config.version,
        max_values=model.max_request_values,
    )
    install_exception_handlers(app)
    log_ = feedback.PredictionLog(feedback.DEFAULT_CAPACITY)
    model.metrics.on_classes = feedback.install(
        app, model.name, feedback.Feedback(model.name, model.config.version, log_), model.config.feedback_token
    )


def model_server(config: ServingConfig) -> Any:
    """A ``kserve.ModelServer`` that listens on ``config.host`` (KServe binds 0.0.0.0)."""
    from kserve import ModelServer

    class _Server(ModelServer):  # type: ignore[misc]
        def setup_event_loop(self) -> None:
            super().setup_event_loop()
            # The REST server exists and has not bound yet: the one place to set the host.
            if self._rest_server is not None:
                self._rest_server.config.host = config.host

    return _Server(
        http_port=config.http_port,
        grpc_port=config.grpc_port or 0,
        enable_grpc=config.grpc_port is not None,
        workers=1,
        enable_latency_logging=False,
        enable_docs_url=False,
    )


def serve(config: ServingConfig) -> None:
    """Load the model (ready only after a test prediction), then serve until signalled."""
    configure_logging(config.access_log)
    try:
        configure_torch_threads(config.torch_threads)
    except ImportError:
        log.info("torch is not installed: only TensorFlow and pyfunc models can load")
    model = SlipwayModel(config)
    model.load()
    # torch, MLflow and KServe leave millions of long-lived objects; a full collection of them
    # stalled every in-flight request for 0.3-0.5 s under load. Freeze them out of the GC.
    gc.collect()
    gc.freeze()
    install(kserve_app(), model)
    server = model_server(config)
    log.info("serving %s on %s:%d", config.model_name, config.host, config.http_port)
    server.start([model])
