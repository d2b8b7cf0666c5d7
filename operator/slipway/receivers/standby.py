"""The HTTP server of a standby replica: alive for its probes, 503 to every webhook so the sender retries the leader.

A standby runs no kopf and no receiver of its own: an alert or an MLflow delivery that the
Service sends to it is answered ``503`` (with ``Retry-After`` and the current leader's identity
in the body), which Alertmanager and MLflow treat as "deliver again". The answer also closes the
connection (``Connection: close``): a sender that keeps its connection alive would otherwise
retry on the same connection, so on the same standby, for ever; a new connection is balanced by
the Service again, and lands on the leader. ``/healthz`` answers 200 (a standby is healthy; it
must not be restarted for waiting), ``/metrics`` serves ``slipway_leader 0``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import prometheus_client
from aiohttp import web

log = logging.getLogger(__name__)


class StandbyServer:
    """Serves the operator's port (and the liveness port, if any) while this replica is not the leader."""

    def __init__(self, leader: Callable[[], str], retry_after: float) -> None:
        self._leader = leader
        self._retry_after = retry_after
        self._runners: list[web.AppRunner] = []
        self.ports: list[int] = []

    async def start(self, addresses: list[tuple[str, int]]) -> list[int]:
        """Listen on each (host, port); returns the bound ports (0 picks a free one)."""
        for host, port in addresses:
            app = web.Application()
            app.router.add_get("/healthz", self._healthz)
            app.router.add_get("/metrics", self._metrics)
            app.router.add_route("*", "/{tail:.*}", self._standby)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            self._runners.append(runner)
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            self.ports.append(int(sockets[0].getsockname()[1]) if sockets else port)
        log.info("standby: serving probes on %s and answering webhooks 503 until this replica leads", self.ports)
        return self.ports

    async def stop(self) -> None:
        """Stop listening (the leader's own server takes the ports over)."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok (standby)")

    async def _metrics(self, _: web.Request) -> web.Response:
        body = prometheus_client.generate_latest()
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def _standby(self, request: web.Request) -> web.Response:
        leader = self._leader()
        log.info("standby: %s %s answered 503 (leader: %s)", request.method, request.path, leader or "none yet")
        response = web.json_response(
            {"error": "this replica is a standby: deliver again (to the leader)", "leader": leader},
            status=503,
            headers={"Retry-After": str(max(int(self._retry_after), 1))},
        )
        response.force_close()
        return response
