"""The routers' pure half: per spec.router, the children a decision asks for, the traffic write, removals, readiness."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from slipway.api.modeldeployment import ModelDeployment, ModelDeploymentSpec
from slipway.api.names import isvc_name, predictor_name
from slipway.rollout import abtest
from slipway.rollout.budget import Split, replica_budget
from slipway.rollout.state import Decision

from .hpa import build_hpa
from .httproute import build_http_route
from .inferenceservice import API_VERSION as ISVC_API_VERSION
from .inferenceservice import KIND as ISVC_KIND
from .inferenceservice import build_inference_service
from .knative import build_knative_inference_service

HPA_API_VERSION, HPA_KIND = "autoscaling/v2", "HorizontalPodAutoscaler"


@dataclass(frozen=True)
class ChildRef:
    """One object by API version, kind and name (in the ModelDeployment's namespace)."""

    api_version: str
    kind: str
    name: str


class Router(Protocol):
    """How one ``spec.router`` carries a decision out: what to apply, what moves traffic, what to read and remove.

    Everything here is pure: the reconciler does the reads and writes these answers ask for.
    """

    uses_gateway: bool
    """Whether traffic goes through ``spec.gateway``'s Gateways (their class must support what the route asks)."""
    traffic_needs_storage: bool
    """Whether :meth:`traffic` needs the storage URIs (the caller resolves them only then)."""

    def refusal(self, md: ModelDeployment) -> str | None:
        """What of a spec that passed the schema this router cannot honour (None: nothing)."""
        ...

    def children(
        self, md: ModelDeployment, decision: Decision, uris: Mapping[str, str], shares: Split | None = None
    ) -> list[dict[str, Any]]:
        """The manifests the decision asks for, in apply order (the traffic manifest last)."""
        ...

    def traffic(self, md: ModelDeployment, decision: Decision, uris: Mapping[str, str]) -> dict[str, Any] | None:
        """The one manifest that moves the traffic for this decision (None: there is none to write)."""
        ...

    def removals(self, md: ModelDeployment, decision: Decision, live: frozenset[str]) -> list[ChildRef]:
        """The children to delete, in order: those of the live versions the decision does not keep."""
        ...

    def readiness_ref(self, md: ModelDeployment, version: str) -> ChildRef | None:
        """The object, besides the version's InferenceService, whose status says the version is ready (None: none)."""
        ...

    def ready(self, md: ModelDeployment, isvc: dict[str, Any], read: dict[str, Any] | None) -> bool:
        """Whether a version serves, from its InferenceService and the object :meth:`readiness_ref` named."""
        ...


def traffic_version(decision: Decision) -> str | None:
    """The version a rollback sends all traffic to now; None while the failed version must keep it."""
    state = decision.state
    if state.stable_version is None or state.canary_weight:
        return None
    return state.stable_version


class GatewayApiRouter:
    """Router gateway-api: an InferenceService and an HPA per version (KServe Standard mode), one weighted HTTPRoute."""

    uses_gateway = True
    traffic_needs_storage = False

    def refusal(self, md: ModelDeployment) -> str | None:
        """Nothing the schema lets through is beyond this router."""
        return None

    def children(
        self, md: ModelDeployment, decision: Decision, uris: Mapping[str, str], shares: Split | None = None
    ) -> list[dict[str, Any]]:
        """Backends (InferenceService, HPA) by version, then the route.

        ``shares``, with a canary budget, bounds each version's replicas; a version whose bound is 0
        waits (its children are not created, or left as they are) until the other gives replicas back.
        """
        out: list[dict[str, Any]] = []
        for version in sorted(decision.keep, key=int):
            if version in uris:
                bounds = shares.bounds.get(version) if shares is not None else None
                if bounds is not None and bounds.max < 1:
                    continue
                replicas = (bounds.min, bounds.max) if bounds is not None else None
                out += [build_inference_service(md, version, uris[version], replicas), build_hpa(md, version, replicas)]
        route = self.traffic(md, decision, uris)
        if route is not None:
            out.append(route)
        return out

    def traffic(self, md: ModelDeployment, decision: Decision, uris: Mapping[str, str]) -> dict[str, Any] | None:
        """The HTTPRoute: the weights, the mirror and the A/B matches of the decided state (None: no version yet)."""
        weights = dict(decision.weights)
        if not weights:
            return None
        state = decision.state
        mirror = (state.canary_version, state.mirror_percent) if state.canary_version and state.mirror_percent else None
        ab = md.spec.strategy.ab_test
        matches = abtest.route_matches(state, ab) if ab is not None else None
        return build_http_route(md, weights, mirror, matches)

    def removals(self, md: ModelDeployment, decision: Decision, live: frozenset[str]) -> list[ChildRef]:
        """Each version not kept: its HPA, then its InferenceService."""
        name = md.metadata.name or ""
        out: list[ChildRef] = []
        for version in sorted(live - decision.keep):
            out += [
                ChildRef(HPA_API_VERSION, HPA_KIND, isvc_name(name, version)),
                ChildRef(ISVC_API_VERSION, ISVC_KIND, isvc_name(name, version)),
            ]
        return out

    def readiness_ref(self, md: ModelDeployment, version: str) -> ChildRef | None:
        """The predictor Deployment KServe made for the version."""
        return ChildRef("apps/v1", "Deployment", predictor_name(md.metadata.name or "", version))

    def ready(self, md: ModelDeployment, isvc: dict[str, Any], read: dict[str, Any] | None) -> bool:
        """The predictor Deployment has ``minReplicas`` available pods (one within a canary budget).

        KServe's own ``Ready`` is not enough here: with ``autoscalerClass: external`` KServe never
        sets the Deployment's replicas (it starts at 1, our HPA raises it), and ``Ready`` follows the
        Deployment's ``Available`` condition, True with one pod of three.
        """
        available = int(((read or {}).get("status") or {}).get("availableReplicas") or 0)
        # Within a budget a version may be held to fewer replicas than minReplicas: one serves.
        return available >= (1 if replica_budget(md.spec) is not None else md.spec.autoscaling.min_replicas)


class KnativeRouter:
    """Router kserve-knative: one InferenceService in Knative mode; its canaryTrafficPercent splits traffic."""

    uses_gateway = False
    traffic_needs_storage = True

    def refusal(self, md: ModelDeployment) -> str | None:
        """Blue-green and canary budgets need a route and an HPA per version, which Knative does not have."""
        strategy = md.spec.strategy
        if strategy.blue_green is not None:
            return "strategy.blueGreen with router kserve-knative is not supported: use canary or router gateway-api"
        if strategy.canary is not None and strategy.canary.budget is not None:
            return "strategy.canary.budget needs router gateway-api (one HPA per version)"
        return None

    def children(
        self, md: ModelDeployment, decision: Decision, uris: Mapping[str, str], shares: Split | None = None
    ) -> list[dict[str, Any]]:
        """The one InferenceService (Knative scales the revisions itself: no HPA, no budget)."""
        isvc = self.traffic(md, decision, uris)
        return [isvc] if isvc is not None else []

    def traffic(self, md: ModelDeployment, decision: Decision, uris: Mapping[str, str]) -> dict[str, Any] | None:
        """The InferenceService serving the canary (at its weight) during a rollout, else the stable version."""
        state = decision.state
        version = state.canary_version if state.phase in ("Progressing", "Paused") else state.stable_version
        if not version or version not in uris:
            return None
        percent = state.canary_weight if version == state.canary_version else None
        return build_knative_inference_service(md, version, uris[version], percent)

    def removals(self, md: ModelDeployment, decision: Decision, live: frozenset[str]) -> list[ChildRef]:
        """None: the one InferenceService stays, Knative retires the old revisions."""
        return []

    def readiness_ref(self, md: ModelDeployment, version: str) -> ChildRef | None:
        """None: the InferenceService's own status says it."""
        return None

    def ready(self, md: ModelDeployment, isvc: dict[str, Any], read: dict[str, Any] | None) -> bool:
        """KServe's ``Ready`` condition."""
        conditions = (isvc.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


ROUTERS: dict[str, Router] = {"gateway-api": GatewayApiRouter(), "kserve-knative": KnativeRouter()}


def router_for(spec: ModelDeploymentSpec) -> Router:
    """The router ``spec.router`` names."""
    return ROUTERS[spec.router]
