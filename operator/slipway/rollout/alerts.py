"""Which firing alert belongs to which ModelDeployment: label matching against spec.rollback.alerts (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from slipway.api.common import parse_duration
from slipway.api.modeldeployment import AlertSelector, ModelDeploymentSpec

from .state import RolloutState

LABEL_NAMESPACE = "namespace"
LABEL_DEPLOYMENT = "modeldeployment"
LABEL_VERSION = "model_version"


@dataclass(frozen=True)
class Alert:
    """A firing alert, from Alertmanager's webhook or Prometheus' /api/v1/alerts."""

    name: str
    labels: Mapping[str, str]
    starts_at: datetime | None = None
    fingerprint: str = ""
    source: str = "alertmanager"
    annotations: Mapping[str, str] = field(default_factory=dict)
    received: float | None = field(default=None, compare=False)
    """time.monotonic() when the operator got it (for the alert → route write latency)."""

    @property
    def key(self) -> tuple[str, str]:
        """Identity of one firing episode: repeated deliveries of it are the same alert."""
        started = self.starts_at.isoformat() if self.starts_at else ""
        return (self.fingerprint or repr(sorted(self.labels.items())), started)

    def describe(self) -> str:
        """The alert in one phrase for status, events and logs, e.g. ``SlipwayModelDrift (model_version=2)``."""
        version = self.labels.get(LABEL_VERSION)
        return f"{self.name} (model_version={version})" if version else self.name


def target(alert: Alert) -> tuple[str, str] | None:
    """The (namespace, modeldeployment) an alert is about, or None if it names none."""
    ns, md = alert.labels.get(LABEL_NAMESPACE), alert.labels.get(LABEL_DEPLOYMENT)
    return (ns, md) if ns and md else None


def matches(
    alert: Alert, namespace: str, name: str, selector: AlertSelector | None, versions: set[str] | None = None
) -> bool:
    """Whether `alert` should roll back ModelDeployment `namespace/name`.

    It must name this deployment (namespace and modeldeployment labels), pass the selector
    (one of alertNames if set; every matchLabels pair), and, when it carries model_version and
    `versions` is given, be about one of those versions (the live canary, or the version
    promoted within the watch window). No selector: alerts never roll back.
    """
    if selector is None or target(alert) != (namespace, name):
        return False
    if selector.alert_names and alert.name not in selector.alert_names:
        return False
    for key, value in (selector.match_labels or {}).items():
        if alert.labels.get(key) != value:
            return False
    version = alert.labels.get(LABEL_VERSION)
    return not (version and versions is not None and version not in versions)


def promoted_within_window(state: RolloutState, spec: ModelDeploymentSpec, now: datetime) -> str | None:
    """The version the last promotion replaced, while that promotion is within spec.rollback.window.

    Only in Promoting or Succeeded, and only if the last finished rollout was that promotion (a
    rollback since then closes the window). ``window: 0s`` means no watch window at all.
    """
    if state.phase not in ("Promoting", "Succeeded") or state.promoted_at is None:
        return None
    window = parse_duration(spec.rollback.window)
    if not window or now - state.promoted_at > window:
        return None
    return state.replaced_version


def watched_versions(state: RolloutState, spec: ModelDeploymentSpec, now: datetime) -> frozenset[str]:
    """The versions an alert can roll back now: the live canary, or the version promoted within the window."""
    if state.phase in ("Progressing", "Paused") and state.canary_version:
        return frozenset({state.canary_version})
    if state.stable_version and promoted_within_window(state, spec, now) is not None:
        return frozenset({state.stable_version})
    return frozenset()
