"""The operator's one HTTP server: routes registered by the receivers, plus /metrics and /healthz."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import prometheus_client
from aiohttp import web

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """An aiohttp server started once by the operator; receivers add routes before it starts."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, str, Handler]] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Register a route (before start)."""
        self._routes.append((method, path, handler))

    async def start(self, host: str, port: int) -> int:
        """Serve on host:port (0 picks a free port); returns the bound port."""
        app = web.Application()
        for method, path, handler in self._routes:
            app.router.add_route(method, path, _coroutine(handler))
        app.router.add_get("/metrics", _metrics)
        app.router.add_get("/healthz", _healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        log.info("HTTP server listening on %s:%s", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _coroutine(handler: Handler) -> Handler:
    """aiohttp wants coroutine functions; callable objects (receivers) get a thin wrapper."""

    async def call(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    return call


async def _metrics(_: web.Request) -> web.Response:
    body = prometheus_client.generate_latest()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


server = HttpServer()
