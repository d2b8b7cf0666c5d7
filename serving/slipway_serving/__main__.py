"""Command line: ``python -m slipway_serving --model-uri URI --model-name NAME [...]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import DEFAULT_MAX_BATCH_SIZE, FLAVORS, ServingConfig
from .validation import Limits


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def parser() -> argparse.ArgumentParser:
    """The CLI; every flag also reads a ``SLIPWAY_*`` environment variable for its default."""
    p = argparse.ArgumentParser(
        prog="python -m slipway_serving",
        description="Serve one model over KServe V1/V2 with validation, metrics and drift.",
        allow_abbrev=False,
    )
    env = os.environ.get
    p.add_argument(
        "--model-uri",
        default=env("SLIPWAY_MODEL_URI"),
        help="path, file://, runs:/, models:/, mlflow-artifacts: (MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--model-name",
        default=env("SLIPWAY_MODEL_NAME"),
        help="name in the URL paths and the metrics' model label",
    )
    p.add_argument(
        "--model-version",
        default=env("SLIPWAY_MODEL_VERSION", ""),
        help="the metrics' version label (default: N of models:/name/N, else unknown)",
    )
    p.add_argument("--flavor", choices=FLAVORS, default=env("SLIPWAY_FLAVOR", "auto"))
    p.add_argument("--host", default=env("SLIPWAY_HOST", "0.0.0.0"))
    p.add_argument("--http-port", type=int, default=_env_int("SLIPWAY_HTTP_PORT", 8080))
    p.add_argument("--grpc-port", type=int, default=None, help="enable gRPC V2 on this port")
    p.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="where remote artifacts are downloaded (default: a temporary directory)",
    )
    p.add_argument(
        "--baseline-uri",
        default=env("SLIPWAY_BASELINE_URI"),
        help="drift baseline JSON (default: looked for next to the model)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=_env_int("SLIPWAY_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE),
        help="dynamic batching: most instances per model call; requests that queued while the model was busy "
        f"share a call (default {DEFAULT_MAX_BATCH_SIZE}; 0 or 1: one request per call)",
    )
    p.add_argument(
        "--max-latency-ms",
        type=float,
        default=0.0,
        help="dynamic batching: longest wait for requests already received to join a batch (0: no wait, "
        "only the requests already queued)",
    )
    p.add_argument("--max-instances", type=int, default=Limits.max_instances)
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    p.add_argument("--predict-workers", type=int, default=1, help="threads running the model")
    p.add_argument("--torch-threads", type=int, default=_env_int("SLIPWAY_TORCH_THREADS", 1))
    p.add_argument(
        "--drift-window",
        type=int,
        default=_env_int("SLIPWAY_DRIFT_WINDOW", 1000),
        help="recent instances compared with the baseline",
    )
    p.add_argument(
        "--drift-min-samples",
        type=int,
        default=100,
        help="no drift gauges until the window holds this many instances",
    )
    p.add_argument(
        "--max-drift-features",
        type=int,
        default=256,
        help="per-feature PSI gauges only up to this many features",
    )
    p.add_argument(
        "--max-classes",
        type=int,
        default=100,
        help="distinct class label values; the rest count as 'other'",
    )
    p.add_argument("--access-log", action="store_true", help="log one line per request")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=_env_int("SLIPWAY_MAX_IN_FLIGHT", 64),
        help="inference requests held at once (running or queued); more are answered 503 (0: no cap)",
    )
    p.add_argument(
        "--pickle",
        choices=("allow", "refuse"),
        default=env("SLIPWAY_PICKLE", "allow"),
        help="refuse: do not load models that are unpickled or run code they ship (scikit-learn, pickled "
        "PyTorch, custom pyfunc); pt2, TorchScript, Keras and SavedModel still load",
    )
    p.add_argument(
        "--feedback-token-file",
        type=Path,
        default=env("SLIPWAY_FEEDBACK_TOKEN_FILE"),
        help="file holding the bearer token feedback must carry (else SLIPWAY_FEEDBACK_TOKEN; neither: no feedback)",
    )
    return p


def feedback_token(path: Path | None) -> str:
    """The feedback token: the file's content (stripped) if given, else SLIPWAY_FEEDBACK_TOKEN, else ""."""
    if path is not None:
        return Path(path).read_text().strip()
    return os.environ.get("SLIPWAY_FEEDBACK_TOKEN", "").strip()


def config_from_args(argv: Sequence[str] | None = None) -> ServingConfig:
    """Parse the command line into a :class:`ServingConfig` (exits with usage on errors)."""
    p = parser()
    args = p.parse_args(argv)
    if not args.model_uri or not args.model_name:
        p.error("--model-uri and --model-name are required")
    try:
        return ServingConfig(
            model_uri=args.model_uri,
            model_name=args.model_name,
            model_version=args.model_version,
            flavor=args.flavor,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            download_dir=args.download_dir,
            baseline_uri=args.baseline_uri,
            limits=Limits(max_instances=args.max_instances, max_body_bytes=args.max_body_bytes),
            max_batch_size=args.max_batch_size,
            max_latency_ms=args.max_latency_ms,
            predict_workers=args.predict_workers,
            torch_threads=args.torch_threads,
            drift_window=args.drift_window,
            drift_min_samples=args.drift_min_samples,
            max_drift_features=args.max_drift_features,
            max_classes=args.max_classes,
            access_log=args.access_log,
            feedback_token=feedback_token(args.feedback_token_file),
            allow_pickle=args.pickle == "allow",
            max_in_flight=args.max_in_flight,
        )
    except (ValueError, OSError) as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, then serve until SIGTERM/SIGINT; a model that fails to load exits 1."""
    config = config_from_args(argv)
    # KServe parses sys.argv when imported; keep it from seeing (and rejecting) our flags.
    sys.argv = sys.argv[:1]
    from .errors import ModelLoadError
    from .server import serve

    try:
        serve(config)
    except ModelLoadError as exc:
        print(f"slipway-serving: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
