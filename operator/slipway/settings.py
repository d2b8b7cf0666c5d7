"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field, model_validator

from slipway.api.notifications import Notifications
from slipway.storage_uris import DEFAULT_PREFIXES, parse_prefixes
from slipway.tenancy import Tenancy

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Settings(BaseModel):
    """Where the operator finds MLflow and Prometheus, and how it listens and polls."""

    mlflow_uri: str = Field("", description="MLflow tracking/registry URI (SLIPWAY_MLFLOW_URI or MLFLOW_TRACKING_URI).")
    mlflow_poll_seconds: float = Field(
        10.0, gt=0, description="Registry polling interval (SLIPWAY_MLFLOW_POLL_SECONDS)."
    )
    mlflow_resync_seconds: float = Field(
        60.0,
        ge=0,
        description=(
            "Re-read every tracked model's versions at least this often, spread over the polls; catches "
            "version tag and description changes, which no poll of the model heads shows, when no webhook "
            "reports them (SLIPWAY_MLFLOW_RESYNC_SECONDS; 0: every poll)."
        ),
    )
    mlflow_max_backoff_seconds: float = Field(
        60.0,
        gt=0,
        description=(
            "Longest wait between registry reads while MLflow is down or slow (SLIPWAY_MLFLOW_MAX_BACKOFF_SECONDS)."
        ),
    )
    mlflow_artifacts_destination: str = Field(
        "",
        description=(
            "The MLflow server's --artifacts-destination (e.g. s3://bucket/mlflow), which MLflow does not "
            "publish; needed to turn mlflow-artifacts: URIs into storageUris KServe can load "
            "(SLIPWAY_MLFLOW_ARTIFACTS_DESTINATION)."
        ),
    )
    registry_gc_grace_seconds: float = Field(
        60.0,
        ge=0,
        description="Delete unreferenced discovered ModelVersions after this long (SLIPWAY_REGISTRY_GC_GRACE_SECONDS).",
    )
    mlflow_webhook_secret: str = Field(
        "", description="HMAC secret of MLflow webhooks (SLIPWAY_MLFLOW_WEBHOOK_SECRET)."
    )
    prometheus_url: str = Field(
        "", description="Prometheus base URL for analysis and alert polling (SLIPWAY_PROMETHEUS_URL)."
    )
    alert_poll_seconds: float = Field(
        5.0, gt=0, description="Fallback alert polling interval (SLIPWAY_ALERT_POLL_SECONDS)."
    )
    reapply_seconds: float = Field(
        600.0,
        ge=0,
        description=(
            "Apply an unchanged child again at least this often; between, only a changed manifest or a child "
            "the watch saw deleted or edited is applied (SLIPWAY_REAPPLY_SECONDS; 0: every pass)."
        ),
    )
    workers: int = Field(
        8,
        ge=1,
        le=64,
        description=(
            "ModelDeployments reconciled at once: the work queue's workers, one pass per object at a time "
            "(SLIPWAY_WORKERS). A pass mostly waits on the API server; more workers converge many objects faster."
        ),
    )
    alertmanager_token: str = Field("", description="Bearer token Alertmanager must send (SLIPWAY_ALERTMANAGER_TOKEN).")
    http_host: str = Field("0.0.0.0", description="Address of the webhook and metrics server (SLIPWAY_HTTP_HOST).")
    http_port: int = Field(
        8080, ge=0, le=65535, description="Port of the webhook and metrics server (SLIPWAY_HTTP_PORT)."
    )

    leader_election_lease: str = Field(
        "",
        description=(
            "Name of the coordination.k8s.io Lease the replicas elect a leader on; only the leader "
            "reconciles, the others answer webhooks 503 (SLIPWAY_LEADER_ELECTION_LEASE; empty: no election, "
            "for a single replica)."
        ),
    )
    leader_election_namespace: str = Field(
        "",
        description=(
            "Namespace of the Lease (SLIPWAY_LEADER_ELECTION_NAMESPACE; empty: the pod's namespace from "
            "SLIPWAY_POD_NAMESPACE or its service account, else default)."
        ),
    )
    lease_duration_seconds: float = Field(
        15.0, gt=0, description="How long a standby waits for a silent leader (SLIPWAY_LEASE_DURATION_SECONDS)."
    )
    lease_renew_deadline_seconds: float = Field(
        10.0,
        gt=0,
        description="A leader that has not renewed for this long stops (SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS).",
    )
    lease_retry_period_seconds: float = Field(
        2.0, gt=0, description="How often the leader renews and a standby tries (SLIPWAY_LEASE_RETRY_PERIOD_SECONDS)."
    )
    pod_name: str = Field("", description="This replica's pod, the first part of its identity (SLIPWAY_POD_NAME).")
    pod_namespace: str = Field("", description="This replica's namespace (SLIPWAY_POD_NAMESPACE).")

    @model_validator(mode="after")
    def _lease_timings(self) -> Settings:
        d, r, p = self.lease_duration_seconds, self.lease_renew_deadline_seconds, self.lease_retry_period_seconds
        if not d > r > p * 1.2:
            raise ValueError(f"lease timings need duration ({d}) > renew deadline ({r}) > 1.2 x retry period ({p})")
        return self

    def lease_namespace(self, service_account_dir: str = SERVICE_ACCOUNT_DIR) -> str:
        """The Lease's namespace: set, else the pod's, else the service account's, else ``default``."""
        if self.leader_election_namespace or self.pod_namespace:
            return self.leader_election_namespace or self.pod_namespace
        try:
            with open(os.path.join(service_account_dir, "namespace"), encoding="utf-8") as f:
                return f.read().strip() or "default"
        except OSError:
            return "default"

    storage_uri_prefixes: tuple[str, ...] = Field(
        DEFAULT_PREFIXES,
        description=(
            "Storage URIs predictors may load from, by prefix; '..' is always refused "
            "(SLIPWAY_STORAGE_URI_PREFIXES, comma-separated; default: the schemes KServe serves)."
        ),
    )
    tenancy: Tenancy = Field(
        default_factory=Tenancy,
        description=(
            "Which namespaces may use which MLflow models and experiments, as JSON rules of globs "
            "(SLIPWAY_TENANCY; empty: open). See docs/security.md."
        ),
    )

    notifications: Notifications = Field(
        default_factory=Notifications,
        description=(
            "Default notification targets and events for every ModelDeployment and TrainingRun, as JSON in "
            "the shape of spec.notifications; their Secrets are read in each object's namespace "
            "(SLIPWAY_NOTIFICATIONS; empty: none). See docs/notifications.md."
        ),
    )
    notification_queue_size: int = Field(
        1000,
        ge=1,
        description=(
            "Deliveries waiting or retrying at most; a notification beyond is dropped and counted, never "
            "waited for (SLIPWAY_NOTIFICATION_QUEUE_SIZE)."
        ),
    )
    notification_max_backoff_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest wait between two tries of a delivery (SLIPWAY_NOTIFICATION_MAX_BACKOFF_SECONDS).",
    )
    notification_retry_seconds: float = Field(
        86400.0,
        gt=0,
        description="Give a delivery up when it has failed for this long (SLIPWAY_NOTIFICATION_RETRY_SECONDS).",
    )
    notification_inconclusive_seconds: float = Field(
        600.0,
        gt=0,
        description=(
            "Default bound for AnalysisInconclusive: an analysis inconclusive this long is notified "
            "(SLIPWAY_NOTIFICATION_INCONCLUSIVE_SECONDS; spec.notifications.inconclusiveAfter wins)."
        ),
    )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from environment variables; unset ones keep their defaults."""
        e = dict(os.environ if env is None else env)
        raw: dict[str, str] = {
            "mlflow_uri": e.get("SLIPWAY_MLFLOW_URI") or e.get("MLFLOW_TRACKING_URI", ""),
            "mlflow_poll_seconds": e.get("SLIPWAY_MLFLOW_POLL_SECONDS", ""),
            "mlflow_resync_seconds": e.get("SLIPWAY_MLFLOW_RESYNC_SECONDS", ""),
            "mlflow_max_backoff_seconds": e.get("SLIPWAY_MLFLOW_MAX_BACKOFF_SECONDS", ""),
            "mlflow_webhook_secret": e.get("SLIPWAY_MLFLOW_WEBHOOK_SECRET", ""),
            "mlflow_artifacts_destination": e.get("SLIPWAY_MLFLOW_ARTIFACTS_DESTINATION", ""),
            "registry_gc_grace_seconds": e.get("SLIPWAY_REGISTRY_GC_GRACE_SECONDS", ""),
            "prometheus_url": e.get("SLIPWAY_PROMETHEUS_URL", ""),
            "alert_poll_seconds": e.get("SLIPWAY_ALERT_POLL_SECONDS", ""),
            "reapply_seconds": e.get("SLIPWAY_REAPPLY_SECONDS", ""),
            "workers": e.get("SLIPWAY_WORKERS", ""),
            "alertmanager_token": e.get("SLIPWAY_ALERTMANAGER_TOKEN", ""),
            "http_host": e.get("SLIPWAY_HTTP_HOST", ""),
            "http_port": e.get("SLIPWAY_HTTP_PORT", ""),
            "leader_election_lease": e.get("SLIPWAY_LEADER_ELECTION_LEASE", ""),
            "leader_election_namespace": e.get("SLIPWAY_LEADER_ELECTION_NAMESPACE", ""),
            "lease_duration_seconds": e.get("SLIPWAY_LEASE_DURATION_SECONDS", ""),
            "lease_renew_deadline_seconds": e.get("SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS", ""),
            "lease_retry_period_seconds": e.get("SLIPWAY_LEASE_RETRY_PERIOD_SECONDS", ""),
            "pod_name": e.get("SLIPWAY_POD_NAME", ""),
            "pod_namespace": e.get("SLIPWAY_POD_NAMESPACE", ""),
            "notification_queue_size": e.get("SLIPWAY_NOTIFICATION_QUEUE_SIZE", ""),
            "notification_max_backoff_seconds": e.get("SLIPWAY_NOTIFICATION_MAX_BACKOFF_SECONDS", ""),
            "notification_retry_seconds": e.get("SLIPWAY_NOTIFICATION_RETRY_SECONDS", ""),
            "notification_inconclusive_seconds": e.get("SLIPWAY_NOTIFICATION_INCONCLUSIVE_SECONDS", ""),
        }
        values: dict[str, object] = {k: v for k, v in raw.items() if v != ""}
        values["tenancy"] = Tenancy.parse(e.get("SLIPWAY_TENANCY", ""))
        values["notifications"] = Notifications.model_validate_json(e.get("SLIPWAY_NOTIFICATIONS") or "{}")
        values["storage_uri_prefixes"] = parse_prefixes(e.get("SLIPWAY_STORAGE_URI_PREFIXES", ""))
        return cls.model_validate(values)
