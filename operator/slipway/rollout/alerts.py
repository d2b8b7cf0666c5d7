"""Which firing alert belongs to which ModelDeployment: label matching against spec.rollback.alerts (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from slipway.api.modeldeployment import AlertSelector

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

    @property
    def key(self) -> tuple[str, str]:
        """Identity of one firing episode: repeated deliveries of it are the same alert."""
        started = self.starts_at.isoformat() if self.starts_at else ""
        return (self.fingerprint or repr(sorted(self.labels.items())), started)


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
