"""Leader election on a ``coordination.k8s.io/v1`` Lease: exactly one replica reconciles, the others stand by.

The algorithm is client-go's (``tools/leaderelection``), the one every controller-manager uses:

- A candidate reads the Lease. It may take it when nobody holds it, or when the holder's record
  (holder, renew time, transitions) has not changed for ``leaseDurationSeconds`` *as measured
  on the candidate's own clock since it first saw that record* — so no two clocks are compared.
- Every write is a ``replace`` carrying the ``resourceVersion`` that was read: of two candidates
  racing for an expired Lease, the API server lets one write through and answers 409 to the other.
- The leader renews every ``retry_period``. When it has not renewed for ``renew_deadline``
  (shorter than the lease duration) it stops leading *before* anyone else may take over.
- On a graceful stop the leader releases the Lease (holder cleared, duration 1 s), so a standby
  takes over at its next try instead of waiting out the lease.

Why not ``kubernetes.leaderelection`` from the kubernetes client: the release this project pins
(33.x, tied to the 1.34 API server and to kserve's models) ships only a ConfigMap lock, calls
``logging.basicConfig`` at import (changing the operator's logging), ``sys.exit``s on a bad
setting, has no way to stop a candidate or release the lock, and logs every retry at INFO. The
loop here is the same algorithm in about a hundred lines, on a Lease, with request timeouts
below the renew deadline so that a hung call cannot outlive the leadership it is renewing.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import prometheus_client
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
JITTER = 0.2
"""A standby waits ``retry_period`` times 1 to 1.2 between tries (client-go's jitter factor)."""

LEADER = prometheus_client.Gauge(
    "slipway_leader", "1 while this replica holds the leader-election Lease and reconciles, 0 while it stands by."
)


def micro_now() -> datetime:
    """Now, with a non-zero microsecond: the API server parses a Lease's MicroTime only with its fraction."""
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)


def default_identity(pod_name: str = "") -> str:
    """The pod's name (or the host's) and a random suffix: a restarted process is a new candidate."""
    return f"{pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease, who we are, and the three timings (client-go's defaults: 15 s, 10 s, 2 s)."""

    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period * (1 + JITTER) > 0:
            raise ValueError(
                "leader election needs leaseDuration > renewDeadline > 1.2 x retryPeriod > 0, got "
                f"{self.lease_duration}, {self.renew_deadline}, {self.retry_period}"
            )


@dataclass(frozen=True)
class Record:
    """The Lease's spec as far as the election is concerned (what a standby watches for change)."""

    holder: str = ""
    duration: int = 0
    acquired: datetime | None = None
    renewed: datetime | None = None
    transitions: int = 0


def _record(lease: client.V1Lease) -> Record:
    spec = lease.spec or client.V1LeaseSpec()
    return Record(
        holder=spec.holder_identity or "",
        duration=int(spec.lease_duration_seconds or 0),
        acquired=spec.acquire_time,
        renewed=spec.renew_time,
        transitions=int(spec.lease_transitions or 0),
    )


@dataclass
class LeaderElector:
    """One candidate for one Lease; :meth:`run` (in a thread of its own) campaigns, then renews."""

    api: client.ApiClient
    config: LeaseConfig
    clock: Callable[[], float] = time.monotonic
    observed: Record | None = None
    observed_at: float = 0.0
    leading: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _errors: set[str] = field(default_factory=set)
    _renewing: threading.Lock = field(default_factory=threading.Lock)

    @property
    def leader(self) -> str:
        """Who holds the Lease, as last seen ('' when nobody does or it was never read)."""
        return self.observed.holder if self.observed else ""

    def _timeout(self, budget: float | None = None) -> float:
        """Seconds one attempt of a call may take: an eighth of the round's budget (at most the renew deadline).

        A round makes two calls, and the kubernetes client's urllib3 tries each up to four times
        (three retries on a broken connection), so the round ends within its budget.
        """
        return max(min(self.config.renew_deadline, budget if budget is not None else float("inf")) / 8, 0.1)

    def try_acquire_or_renew(self, budget: float | None = None) -> bool:
        """One round: take or renew the Lease if it is free, expired or ours; False if someone else holds it.

        ``budget``: seconds the whole round may take (a leader's time left before its renew deadline).
        """
        coord = client.CoordinationV1Api(self.api)
        cfg = self.config
        now = micro_now()
        timeout = self._timeout(budget)
        try:
            lease = coord.read_namespaced_lease(cfg.name, cfg.namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:
                return self._failed(f"reading Lease {cfg.namespace}/{cfg.name}", exc)
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace),
                spec=self._spec(now, now, 0),
            )
            try:
                created = coord.create_namespaced_lease(cfg.namespace, body, _request_timeout=timeout)
            except (ApiException, urllib3.exceptions.HTTPError) as exc2:
                return self._failed(f"creating Lease {cfg.namespace}/{cfg.name}", exc2)
            self._observe(_record(created))
            return True
        except urllib3.exceptions.HTTPError as exc:
            return self._failed(f"reading Lease {cfg.namespace}/{cfg.name}", exc)
        seen = _record(lease)
        if seen != self.observed:
            if self.observed is not None and seen.holder != self.observed.holder:
                log.info("leader election: the Lease is now held by %s", seen.holder or "nobody")
            self._observe(seen)
        ours = seen.holder == cfg.identity
        if seen.holder and not ours and self.observed_at + seen.duration > self.clock():
            return False
        acquired = seen.acquired if ours and seen.acquired else now
        transitions = seen.transitions if ours else seen.transitions + 1
        lease.spec = self._spec(acquired, now, transitions)
        try:
            replaced = coord.replace_namespaced_lease(cfg.name, cfg.namespace, lease, _request_timeout=timeout)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:  # 409: another candidate wrote first
            return self._failed(f"writing Lease {cfg.namespace}/{cfg.name}", exc)
        self._observe(_record(replaced))
        self._errors.clear()
        return True

    def run(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        """Campaign until leading (then call ``on_started``), renew until stopped or lost (then ``on_stopped``)."""
        cfg = self.config
        log.info("leader election: %s campaigns for Lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
        while not self._stop.is_set():
            if self.try_acquire_or_renew():
                break
            wait = cfg.retry_period * (1 + random.uniform(0, JITTER))
            if self.observed and self.observed.holder:  # wake when the holder's lease would run out
                expires_in = self.observed_at + self.observed.duration - self.clock()
                wait = min(wait, max(expires_in, 0.0) + 0.05)
            self._stop.wait(wait)
        else:
            return
        self.leading = True
        LEADER.set(1)
        log.info("leader election: %s leads (Lease %s/%s)", cfg.identity, cfg.namespace, cfg.name)
        on_started()
        renewed = self.clock()
        while not self._stop.wait(cfg.retry_period):
            with self._renewing:  # never a renewal after release() wrote the Lease free
                if self._stop.is_set():
                    return
                budget = renewed + cfg.renew_deadline - self.clock()  # the round ends by the deadline
                ok = budget > 0 and self.try_acquire_or_renew(budget)
            if ok:
                renewed = self.clock()
            elif self.clock() - renewed >= cfg.renew_deadline or (self.observed and self.leader != cfg.identity):
                self.leading = False
                LEADER.set(0)
                log.error(
                    "leader election: %s lost the Lease (not renewed for %.1f s; holder now %s)",
                    cfg.identity,
                    self.clock() - renewed,
                    self.leader or "nobody",
                )
                on_stopped()
                return

    def stop(self) -> None:
        """Stop campaigning or renewing (the thread returns within one retry period)."""
        self._stop.set()

    def release(self) -> bool:
        """Give the Lease up if we hold it (holder cleared, 1 s duration), so a standby takes over at once."""
        self.stop()
        with self._renewing:
            if not self.leading:
                return False
            self.leading = False
            LEADER.set(0)
            return self._release()

    def _release(self) -> bool:
        coord = client.CoordinationV1Api(self.api)
        cfg = self.config
        try:
            lease = coord.read_namespaced_lease(cfg.name, cfg.namespace, _request_timeout=self._timeout())
            if (lease.spec.holder_identity if lease.spec else None) != cfg.identity:
                return False
            now = micro_now()
            lease.spec = client.V1LeaseSpec(
                holder_identity=None,
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=lease.spec.lease_transitions,
            )
            coord.replace_namespaced_lease(cfg.name, cfg.namespace, lease, _request_timeout=self._timeout())
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.warning("leader election: could not release Lease %s/%s: %s", cfg.namespace, cfg.name, exc)
            return False
        log.info("leader election: %s released Lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
        return True

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.config.identity,
            lease_duration_seconds=max(math.ceil(self.config.lease_duration), 1),
            acquire_time=acquired,
            renew_time=renewed,
            lease_transitions=transitions,
        )

    def _observe(self, record: Record) -> None:
        self.observed, self.observed_at = record, self.clock()

    def _failed(self, what: str, exc: Any) -> bool:
        """Log a failed call once per kind of failure (not every retry period), and say the round failed."""
        status = getattr(exc, "status", None)
        if status == 409:
            log.debug("leader election: %s: another candidate wrote first", what)
            return False
        key = f"{what}: {status or type(exc).__name__}"
        if key not in self._errors:
            self._errors.add(key)
            log.warning("leader election: %s failed: %s", what, getattr(exc, "reason", None) or exc)
        return False
