"""The routers' I/O half: the readiness read, the traffic write and the children's apply and removal, for any Router."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import LABEL_DEPLOYMENT, LABEL_VERSION
from slipway.builders.router import Router
from slipway.clients.kube import Kube
from slipway.rollout.budget import Split
from slipway.rollout.state import Decision

ISVC = ("serving.kserve.io/v1beta1", "InferenceService")


def observe(kube: Kube, md: ModelDeployment, router: Router) -> tuple[frozenset[str], frozenset[str]]:
    """Versions with an InferenceService, and those the router deems ready (one list, one read per version at most)."""
    ns, name = md.metadata.namespace, md.metadata.name or ""
    live, ready = set(), set()
    for isvc in kube.list(*ISVC, ns, f"{LABEL_DEPLOYMENT}={name}"):
        version = (isvc["metadata"].get("labels") or {}).get(LABEL_VERSION)
        if not version:
            continue
        live.add(version)
        ref = router.readiness_ref(md, version)
        read = kube.get(ref.api_version, ref.kind, ref.name, ns) if ref is not None else None
        if router.ready(md, isvc, read):
            ready.add(version)
    return frozenset(live), frozenset(ready)


def reconcile_children(
    kube: Kube,
    md: ModelDeployment,
    router: Router,
    decision: Decision,
    uris: Mapping[str, str],
    live: frozenset[str],
    shares: Split | None = None,
) -> None:
    """Apply the children the decision asks for (ownership checked first), then remove those it no longer keeps."""
    ns, uid = md.metadata.namespace, md.metadata.uid
    manifests = router.children(md, decision, uris, shares)
    kube.check_owned(manifests, uid)
    for manifest in manifests:
        kube.ensure(manifest)
    for ref in router.removals(md, decision, live):
        kube.delete_owned(ref.api_version, ref.kind, ref.name, ns, uid)


def set_traffic(
    kube: Kube, md: ModelDeployment, router: Router, decision: Decision, uris: Callable[[], Mapping[str, str]]
) -> bool:
    """Write the one manifest that moves the traffic; False when there is none (``uris`` is called only if needed)."""
    manifest = router.traffic(md, decision, uris() if router.traffic_needs_storage else {})
    if manifest is None:
        return False
    kube.apply(manifest)
    return True
