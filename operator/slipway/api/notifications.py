"""Notifications: where the operator sends a message when a rollout or a training run does something."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, ApiModel, Duration, Rule, cel

NotificationEvent = Literal[
    "RolloutStarted",
    "StepReached",
    "Paused",
    "Promoted",
    "RolledBack",
    "AnalysisInconclusive",
    "ProgressDeadlineExceeded",
    "ReconcileError",
    "TrainingFailed",
    "GateFailed",
]
"""What a notification is about (docs/notifications.md lists the Kubernetes event reasons behind each)."""

NOTIFICATION_EVENTS: tuple[str, ...] = NotificationEvent.__args__  # type: ignore[attr-defined]


class SecretKeySelector(ApiModel):
    """A key of a Secret in the object's own namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the Secret.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key in the Secret's data.")


@cel(
    Rule(
        rule="self.type != 'webhook' || has(self.signingSecretRef)",
        message="a webhook target needs signingSecretRef (the HMAC key its payloads are signed with)",
        field_path=".signingSecretRef",
        check=lambda t: t.type != "webhook" or t.signing_secret_ref is not None,
    ),
    Rule(
        rule="self.type == 'webhook' || !has(self.signingSecretRef)",
        message="signingSecretRef is for type webhook only (Slack and Teams do not check signatures)",
        field_path=".signingSecretRef",
        check=lambda t: t.type == "webhook" or t.signing_secret_ref is None,
    ),
)
class NotificationTarget(ApiModel):
    """One destination: a Slack-compatible or Teams incoming webhook, or a JSON webhook signed with HMAC-SHA256."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Name of the target (in logs and metrics).")
    type: Literal["slack", "teams", "webhook"] = Field(
        description=(
            "slack: a Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat); teams: a Microsoft "
            "Teams incoming webhook or workflow (an Adaptive Card); webhook: JSON signed with HMAC-SHA256."
        )
    )
    url_secret_ref: SecretKeySelector = Field(
        description="The Secret key holding the URL to POST to (URLs of incoming webhooks are credentials)."
    )
    signing_secret_ref: SecretKeySelector | None = Field(
        None, description="type webhook: the Secret key holding the HMAC-SHA256 key the payloads are signed with."
    )
    events: list[NotificationEvent] | None = Field(
        None,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="The events this target gets. Default: the section's events.",
    )


class Notifications(ApiModel):
    """Targets and the events they get; a ModelDeployment's or TrainingRun's section adds to the operator's defaults."""

    targets: list[NotificationTarget] = Field(
        [],
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Where to send. Secrets are read from the object's own namespace.",
    )
    events: list[NotificationEvent] | None = Field(
        None,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="The events the targets of this section get (a target's own list wins). Default: all.",
    )
    inherit_defaults: bool = Field(
        True, description="Also send to the operator's default targets (the chart's notifications values)."
    )
    inconclusive_after: Duration | None = Field(
        None,
        description=(
            "Send AnalysisInconclusive when the analysis has stayed inconclusive (no data, query errors) this "
            "long. Default: the operator's (10m)."
        ),
    )
