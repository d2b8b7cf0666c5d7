"""The routers' I/O half: the readiness read, the traffic write and the children's apply and removal, for any Router."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import LABEL_DEPLOYMENT, LABEL_VERSION
from slipway.builders.router import Router
from slipway.clients.applied import key_of
from slipway.clients.kube import Kube
from slipway.rollout.budget import Split
from slipway.rollout.state import Decision

ISVC = ("serving.kserve.io/v1beta1", "InferenceService")


def observe(kube: Kube, md: ModelDeployment, router: Router) -> tuple[frozenset[str], frozenset[str]]:
    """Versions with an InferenceService, and those the router deems ready (from the watch cache: no request)."""
    ns, name = md.metadata.namespace, md.metadata.name or ""
    live, ready = set(), set()
    for isvc in kube.observed_list(*ISVC, ns or "", f"{LABEL_DEPLOYMENT}={name}"):
        version = (isvc["metadata"].get("labels") or {}).get(LABEL_VERSION)
        if not version:
            continue
        live.add(version)
        ref = router.readiness_ref(md, version)
        read = kube.observed_get(ref.api_version, ref.kind, ref.name, ns) if ref is not None else None
        if router.ready(md, isvc, read):
            ready.add(version)
    return frozenset(live), frozenset(ready)


def carry_out(
    kube: Kube,
    md: ModelDeployment,
    router: Router,
    decision: Decision,
    uris: Mapping[str, str],
    live: frozenset[str],
    write_status: Callable[[], None],
    shares: Split | None = None,
) -> float | None:
    """Write what a decision asks for, in the one order every pass uses; the time of the traffic write (None: none).

    1. ownership: each child about to be applied is looked up (those applied by this process and
       unchanged since are known to be ours); one this deployment does not own stops the pass
       with :class:`~slipway.clients.kube.NotOwned` before anything is written;
    2. ``write_status()``: the decision is in status before anything moves;
    3. the backends (InferenceService, HPA): a route never names a version whose children could
       not all be written. A rollback (all traffic back to the version that was serving) writes
       only the backends of versions that have none yet here, so its traffic write follows the
       status write at once;
    4. the traffic: the one manifest that moves it (:func:`set_traffic`);
    5. a rollback's other backends (those that exist, re-asserted or resized), then the removals
       of the live versions the decision no longer keeps (no longer named by the traffic).

    Children applied as they are and unchanged since are not applied again (``Kube.ensure``).
    """
    ns, uid = md.metadata.namespace, md.metadata.uid
    manifests = router.children(md, decision, uris, shares)
    traffic = router.traffic(md, decision, uris)
    traffic_key = key_of(traffic) if traffic is not None else None
    kube.check_owned(manifests, uid)
    write_status()
    backends = [m for m in manifests if key_of(m) != traffic_key]
    rollback = decision.state.phase == "RollingBack"  # all traffic back to a version that was serving
    first = [m for m in backends if not rollback or _version_of(m) not in live]
    for manifest in first:
        kube.ensure(manifest)
    written = time.monotonic() if set_traffic(kube, traffic) else None
    for manifest in backends:
        if rollback and _version_of(manifest) in live:
            kube.ensure(manifest)
    for ref in router.removals(md, decision, live):
        kube.delete_owned(ref.api_version, ref.kind, ref.name, ns, uid)
    return written


def _version_of(manifest: Mapping[str, Any]) -> str | None:
    return ((manifest.get("metadata") or {}).get("labels") or {}).get(LABEL_VERSION)


def set_traffic(kube: Kube, traffic: dict[str, Any] | None) -> bool:
    """Write the one manifest that moves the traffic (route, or Knative InferenceService); False: none, or unchanged."""
    if traffic is None:
        return False
    return kube.ensure(traffic)
