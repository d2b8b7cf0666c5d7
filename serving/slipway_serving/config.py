"""The runtime's settings, in one frozen object built by the CLI (or by tests)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .validation import Limits

#: Requests that queue while the model is busy share a call, up to this many instances; no wait.
DEFAULT_MAX_BATCH_SIZE = 32

FLAVORS = ("auto", "pytorch", "keras", "tensorflow", "pyfunc", "torchscript", "savedmodel")


@dataclass(frozen=True)
class ServingConfig:
    """Everything ``python -m slipway_serving`` can be told; see ``--help`` for each field."""

    model_uri: str
    model_name: str
    model_version: str = ""
    flavor: str = "auto"
    host: str = "0.0.0.0"  # a pod listens on all interfaces
    http_port: int = 8080
    grpc_port: int | None = None
    download_dir: Path | None = None
    baseline_uri: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_latency_ms: float = 0.0
    predict_workers: int = 1
    torch_threads: int = 1
    drift_window: int = 1000
    drift_min_samples: int = 100
    max_drift_features: int = 256
    max_classes: int = 100
    warmup_runs: int = 3
    access_log: bool = False
    max_in_flight: int = 64
    """Inference requests held at once (running or queued); more are answered 503 (0: no cap)."""
    allow_pickle: bool = True
    """Load artifacts that are unpickled or run code they ship (a ModelDeployment passes ``--pickle refuse``
    unless its spec allows it)."""
    feedback_token: str = field(default="", repr=False)
    """Bearer token ``POST .../feedback`` must carry; empty: feedback is refused (403)."""

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}")
        if self.max_batch_size < 0 or self.max_latency_ms < 0:
            raise ValueError("batch size and latency must be >= 0")
        if self.drift_window < 1 or self.predict_workers < 1 or self.torch_threads < 1:
            raise ValueError("drift window, predict workers and torch threads must be >= 1")

    @property
    def batching(self) -> bool:
        """Dynamic batching is on when the maximum batch size is above 1 (the default)."""
        return self.max_batch_size > 1

    @property
    def version(self) -> str:
        """The ``version`` label: as given, else the number in ``models:/name/N``, else unknown."""
        if self.model_version:
            return self.model_version
        match = re.fullmatch(r"models:/[^/@]+/(\d+)", self.model_uri)
        return match.group(1) if match else "unknown"
