"""Parameter parsing of the training entry points: defaults < SLIPWAY_PARAM_* env < CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slipway_training.config import (
    ConfigError,
    TrainConfig,
    normalize_param_name,
    param_env,
    param_env_name,
    parse_config,
)


def test_defaults_without_env_or_cli():
    assert parse_config([], {}) == TrainConfig()


def test_entry_point_defaults_are_the_base():
    cfg = parse_config([], {}, defaults=TrainConfig(epochs=3))
    assert cfg.epochs == 3
    assert cfg.lr == TrainConfig().lr


def test_env_overrides_defaults_and_cli_overrides_env():
    env = {
        "SLIPWAY_PARAM_EPOCHS": "7",
        "SLIPWAY_PARAM_LR": "0.01",
        "SLIPWAY_PARAM_BATCH_SIZE": "16",
    }
    cfg = parse_config(["--epochs", "2", "--batch-size=8"], env)
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (2, 0.01, 8)


def test_underscore_flag_alias():
    assert parse_config(["--hidden_size", "12"], {}).hidden_size == 12


def test_unrelated_env_is_ignored():
    assert parse_config([], {"PATH": "/bin", "EPOCHS": "99"}) == TrainConfig()


@pytest.mark.parametrize("name", ["batch_size", "batchSize", "batch-size", "batch.size", "BATCH_SIZE", " BatchSize "])
def test_param_names_normalise(name):
    assert normalize_param_name(name) == "batch_size"
    assert param_env_name(name) == "SLIPWAY_PARAM_BATCH_SIZE"


def test_param_env_round_trips_through_parse():
    spec_params = {"epochs": "4", "batchSize": "32", "hidden-size": "48", "lr": "1e-3"}
    env = param_env(spec_params)
    assert env == {
        "SLIPWAY_PARAM_EPOCHS": "4",
        "SLIPWAY_PARAM_BATCH_SIZE": "32",
        "SLIPWAY_PARAM_HIDDEN_SIZE": "48",
        "SLIPWAY_PARAM_LR": "1e-3",
    }
    cfg = parse_config([], env)
    assert (cfg.epochs, cfg.batch_size, cfg.hidden_size, cfg.lr) == (4, 32, 48, 0.001)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"SLIPWAY_PARAM_EPOCH": "3"}, "unknown parameter 'epoch'"),
        ([], {"SLIPWAY_PARAM_EPOCHS": "three"}, "epochs from env SLIPWAY_PARAM_EPOCHS"),
        ([], {"SLIPWAY_PARAM_EPOCHS": "2.5"}, "not a valid int"),
        (["--epochs", "0"], {}, "must be >= 1"),
        (["--lr", "0"], {}, "must be > 0"),
        (["--lr", "nan"], {}, "finite"),
        (["--lr", "inf"], {}, "finite"),
        (["--dropout", "1"], {}, "must be <= 0.95"),
        (["--bogus", "1"], {}, "unknown command-line arguments"),
        (["--val-fraction", "0.5", "--test-fraction", "0.45"], {}, "at least 10%"),
    ],
)
def test_bad_input_names_the_parameter(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, env)


def test_as_params_lists_every_field_as_strings():
    params = TrainConfig(lr=0.5).as_params()
    assert params["lr"] == "0.5"
    assert list(params) == [
        "epochs",
        "lr",
        "batch_size",
        "seed",
        "hidden_size",
        "channels",
        "dropout",
        "weight_decay",
        "threads",
        "val_fraction",
        "test_fraction",
        "split_seed",
        "baseline_bins",
    ]
    assert all(isinstance(v, str) for v in params.values())


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(["--help"], {}, prog="digits")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--batch-size" in out
    assert "SLIPWAY_PARAM_" in out


@pytest.mark.parametrize("module", ["digits_cnn", "digits_keras"])
def test_entry_point_exits_2_on_a_bad_param_before_training(module):
    env = {**os.environ, "SLIPWAY_PARAM_EPOCHS": "zero"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "training-jobs")
    proc = subprocess.run(
        [sys.executable, "-m", f"slipway_training.{module}"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "SLIPWAY_PARAM_EPOCHS" in proc.stderr
