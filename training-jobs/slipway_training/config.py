"""Training parameters: defaults, then ``SLIPWAY_PARAM_<NAME>`` env vars, then CLI flags (wins).

Precedence, lowest first:

1. the defaults of :class:`TrainConfig` (an entry point may change some, e.g. its epochs);
2. environment variables ``SLIPWAY_PARAM_<NAME>``, where ``<NAME>`` is the parameter name in
   upper snake case: ``SLIPWAY_PARAM_EPOCHS=5``, ``SLIPWAY_PARAM_BATCH_SIZE=32``. This is how the
   operator passes a TrainingRun's ``spec.params`` (see :func:`param_env`);
3. command-line flags: ``--epochs 5``, ``--batch-size 32`` (``--batch_size`` works too).

Parameter names are normalised before matching, so ``batchSize``, ``batch-size``, ``batch.size``
and ``BATCH_SIZE`` all name ``batch_size``. An unknown name or a value that does not parse is a
:class:`ConfigError` naming the parameter and where it came from; the entry points exit with
status 2 on it (a bad spec: retrying the pod will not help).

This module imports only the standard library: the operator imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "SLIPWAY_PARAM_"
CONFIG_ERROR_EXIT_CODE = 2


class ConfigError(ValueError):
    """A parameter is unknown or its value is invalid: fix the spec, do not retry."""


def _meta(
    help_text: str, minimum: float | None = None, maximum: float | None = None, exclusive_min: bool = False
) -> dict[str, Any]:
    return {"help": help_text, "min": minimum, "max": maximum, "exclusive_min": exclusive_min}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and run settings shared by the digits entry points."""

    epochs: int = field(default=10, metadata=_meta("Passes over the training split.", 1))
    lr: float = field(default=0.003, metadata=_meta("Adam learning rate.", 0, exclusive_min=True))
    batch_size: int = field(
        default=64,
        metadata=_meta("Global batch size (split evenly across distributed workers).", 1),
    )
    seed: int = field(default=0, metadata=_meta("Seed of weight init, shuffling and dropout.", 0))
    hidden_size: int = field(default=64, metadata=_meta("Units of the dense hidden layer.", 1))
    channels: int = field(default=16, metadata=_meta("Filters of the first conv layer.", 1))
    dropout: float = field(default=0.1, metadata=_meta("Dropout before the dense layer.", 0, 0.95))
    weight_decay: float = field(default=0.0, metadata=_meta("L2 weight decay.", 0))
    threads: int = field(default=1, metadata=_meta("CPU threads per process for the framework's ops.", 1))
    val_fraction: float = field(
        default=0.1, metadata=_meta("Fraction of all samples held out for validation.", 0, 0.5, exclusive_min=True)
    )
    test_fraction: float = field(
        default=0.2, metadata=_meta("Fraction of all samples held out for the final test.", 0, 0.5, exclusive_min=True)
    )
    split_seed: int = field(default=0, metadata=_meta("Seed of the train/val/test split (independent of seed).", 0))
    baseline_bins: int = field(default=8, metadata=_meta("Histogram bins per feature in the drift baseline.", 1, 256))

    def as_params(self) -> dict[str, str]:
        """All parameters as MLflow params (strings), in declaration order."""
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(TrainConfig)}

_KINDS: dict[str, type[int] | type[float]] = {"int": int, "float": float}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def normalize_param_name(name: str) -> str:
    """``batchSize`` / ``batch-size`` / ``batch.size`` / ``BATCH_SIZE`` -> ``batch_size``."""
    snake = _CAMEL.sub("_", name.strip())
    return re.sub(r"[-.]", "_", snake).lower()


def param_env_name(name: str) -> str:
    """The environment variable that carries parameter ``name``: ``SLIPWAY_PARAM_BATCH_SIZE``."""
    return ENV_PREFIX + normalize_param_name(name).upper()


def param_env(params: Mapping[str, str]) -> dict[str, str]:
    """Environment for a training container from a TrainingRun's ``spec.params``."""
    return {param_env_name(k): str(v) for k, v in params.items()}


def _convert(name: str, raw: str, origin: str) -> Any:
    f = FIELDS[name]
    kind = _KINDS[f.type if isinstance(f.type, str) else f.type.__name__]
    try:
        value = kind(raw.strip())
    except (TypeError, ValueError):
        raise ConfigError(f"parameter {name} from {origin}: {raw!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(value):
        raise ConfigError(f"parameter {name} from {origin}: {raw!r} is not a finite number")
    lo, hi, excl = f.metadata["min"], f.metadata["max"], f.metadata["exclusive_min"]
    if lo is not None and (value <= lo if excl else value < lo):
        raise ConfigError(f"parameter {name} from {origin}: {value} must be {'>' if excl else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"parameter {name} from {origin}: {value} must be <= {hi}")
    return value


def params_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The raw ``SLIPWAY_PARAM_*`` values, keyed by normalised parameter name."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            out[normalize_param_name(key[len(ENV_PREFIX) :])] = value
    return out


def build_parser(prog: str, description: str, defaults: TrainConfig) -> argparse.ArgumentParser:
    """The CLI of an entry point; every flag defaults to "not given" so that env can fill it."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=(
            f"Every flag can also be set as {ENV_PREFIX}<NAME> in the environment "
            f"(e.g. {ENV_PREFIX}BATCH_SIZE=32); a flag wins over the environment."
        ),
        argument_default=argparse.SUPPRESS,
    )
    for f in dataclasses.fields(TrainConfig):
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        parser.add_argument(
            *flags,
            dest=f.name,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)})",
        )
    return parser


def parse_config(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    prog: str = "slipway_training",
    description: str = "",
    defaults: TrainConfig | None = None,
) -> TrainConfig:
    """Resolve the config from defaults, env and CLI; raise :class:`ConfigError` on bad input.

    ``--help`` still exits the process (argparse), as a CLI should.
    """
    base = defaults or TrainConfig()
    parser = build_parser(prog, description, base)
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ConfigError(f"unknown command-line arguments: {' '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, raw in params_from_env(environ).items():
        if name not in FIELDS:
            raise ConfigError(f"unknown parameter {name!r} from env {param_env_name(name)}; known: {', '.join(FIELDS)}")
        values[name] = _convert(name, raw, f"env {param_env_name(name)}")
    for name, raw in vars(args).items():
        values[name] = _convert(name, raw, f"--{name.replace('_', '-')}")
    config = dataclasses.replace(base, **values)
    if config.val_fraction + config.test_fraction >= 0.9:
        raise ConfigError("val_fraction + test_fraction must leave at least 10% for training")
    return config
