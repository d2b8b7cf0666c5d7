"""The command line and the settings it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from slipway_serving.__main__ import config_from_args
from slipway_serving.config import ServingConfig
from slipway_serving.errors import ModelLoadError
from slipway_serving.loader import resolve_uri


def test_flags_become_a_config():
    config = config_from_args(
        [
            "--model-uri", "/models/digits", "--model-name", "digits", "--model-version", "7",
            "--http-port", "9000", "--max-batch-size", "16", "--max-latency-ms", "2",
            "--drift-window", "500", "--max-instances", "10", "--max-body-bytes", "2048",
        ]
    )  # fmt: skip
    assert config.model_uri == "/models/digits" and config.version == "7"
    assert config.http_port == 9000 and config.batching and config.max_latency_ms == 2
    assert config.drift_window == 500
    assert config.limits.max_instances == 10 and config.limits.max_body_bytes == 2048
    assert config.grpc_port is None and config.torch_threads == 1


def test_required_flags_and_bad_values_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--model-name", "x"])
    with pytest.raises(SystemExit):
        config_from_args(["--model-uri", "/m", "--model-name", "x", "--drift-window", "0"])
    assert "drift window" in capsys.readouterr().err


def test_version_label_comes_from_the_uri_when_not_given():
    assert ServingConfig("models:/digits/12", "d").version == "12"
    assert ServingConfig("models:/digits@champion", "d").version == "unknown"
    assert ServingConfig("/local/path", "d", model_version="3").version == "3"
    assert not ServingConfig("/m", "d", max_batch_size=1).batching


def test_requests_that_queue_share_a_model_call_by_default():
    config = config_from_args(["--model-uri", "/m", "--model-name", "d"])
    assert config.batching and config.max_batch_size == 32 and config.max_latency_ms == 0
    assert not config_from_args(["--model-uri", "/m", "--model-name", "d", "--max-batch-size", "1"]).batching


def test_local_paths_and_file_uris_resolve_in_place(tmp_path: Path):
    assert resolve_uri(str(tmp_path)) == tmp_path
    assert resolve_uri(tmp_path.as_uri()) == tmp_path
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_uri(str(tmp_path / "missing"))


def test_mlflow_uris_need_a_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for uri in ("models:/digits/1", "runs:/abc/model", "mlflow-artifacts:/1/models/m/artifacts"):
        with pytest.raises(ModelLoadError, match="MLFLOW_TRACKING_URI"):
            resolve_uri(uri)
