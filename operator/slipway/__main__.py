"""`python -m slipway`: run the operator (kopf) against the cluster of the current kubeconfig.

With ``SLIPWAY_LEADER_ELECTION_LEASE`` set (the chart sets it), the process first campaigns for
that Lease (:mod:`slipway.clients.leader`). Until it leads, it runs no kopf at all — no watch, no
handler, no write — and only a standby HTTP server (:mod:`slipway.receivers.standby`) that keeps
the probes green and answers webhooks 503. Once it leads, the standby server stops and kopf
starts, with its startup handlers, receivers and timers, as in a single-replica install. A leader
that cannot renew the Lease within the renew deadline exits at once (the pod restarts and stands
by), before any standby may take over; one stopped by SIGTERM/SIGINT releases the Lease, so a
standby takes over at its next try. A start-up handler that fails permanently (the RBAC check of
:mod:`slipway.handlers.rbac` among them) ends the process with exit code 1 and its message.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from slipway.clients.leader import LeaderElector
    from slipway.settings import Settings

log = logging.getLogger("slipway")


def main(argv: list[str] | None = None) -> int:
    """Parse the few flags kopf needs and run the operator until interrupted (after winning the Lease, if elected)."""
    import kopf

    import slipway.handlers  # noqa: F401  (registers the handlers)
    from slipway.clients.leader import LEADER
    from slipway.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m slipway", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only these namespaces (repeatable); default: the whole cluster",
    )
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    elector = None
    if settings.leader_election_lease:
        elector = _elector(settings)
        if not asyncio.run(_stand_by(elector, settings, args.liveness)):
            return 0  # stopped while standing by
    else:
        LEADER.set(1)
    try:
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            standalone=True,  # no kopf peering: the Lease decides who runs kopf at all
            liveness_endpoint=args.liveness or None,
            memo=kopf.Memo(watch_namespaces=tuple(args.namespace)),  # the scope the RBAC check checks
        )
    except Exception as exc:  # kopf's ActivityError: a startup handler failed permanently (e.g. missing RBAC)
        if not isinstance(exc.__cause__, kopf.PermanentError):
            raise
        log.critical("start-up failed, exiting: %s", exc.__cause__)
        return 1
    finally:
        if elector is not None:
            elector.release()
    return 0


def _elector(settings: Settings) -> LeaderElector:
    from slipway.clients.kube import load_api_client
    from slipway.clients.leader import LeaderElector, LeaseConfig, default_identity

    config = LeaseConfig(
        name=settings.leader_election_lease,
        namespace=settings.lease_namespace(),
        identity=default_identity(settings.pod_name),
        lease_duration=settings.lease_duration_seconds,
        renew_deadline=settings.lease_renew_deadline_seconds,
        retry_period=settings.lease_retry_period_seconds,
    )
    return LeaderElector(load_api_client(), config)


async def _stand_by(elector: LeaderElector, settings: Settings, liveness: str) -> bool:
    """Serve the standby endpoints and campaign in a thread; True once leading, False if stopped by a signal."""
    from slipway.receivers.standby import StandbyServer

    loop = asyncio.get_running_loop()
    leading, stopped = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    addresses = [(settings.http_host, settings.http_port)]
    if liveness:
        url = urlparse(liveness)
        if url.port is not None and url.port != settings.http_port:
            addresses.append((url.hostname or "0.0.0.0", url.port))
    server = StandbyServer(lambda: elector.leader, settings.lease_retry_period_seconds)
    await server.start(addresses)
    threading.Thread(
        target=elector.run,
        args=(lambda: loop.call_soon_threadsafe(leading.set), _leadership_lost),
        name="leader election",
        daemon=True,
    ).start()
    waits = [asyncio.create_task(leading.wait()), asyncio.create_task(stopped.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    await server.stop()
    if not leading.is_set():
        elector.stop()
        return False
    return True


def _leadership_lost() -> None:
    """Exit at once, as controller-runtime does: another replica may lead as soon as the Lease runs out."""
    log.critical("leadership lost: exiting so that only the new leader acts")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
