"""What every entry point does first: logging setup, and the config parsed or a clean exit 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from .config import CONFIG_ERROR_EXIT_CODE, ConfigError, TrainConfig, parse_config
from .topology import Topology, TopologyError


def setup_logging(topology: Topology | None = None) -> None:
    """One line per record on stderr, prefixed with the rank when distributed."""
    rank = f"[rank {topology.rank}] " if topology is not None and topology.distributed else ""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def config_or_exit(argv: Sequence[str] | None, *, prog: str, description: str, defaults: TrainConfig) -> TrainConfig:
    """Parse CLI and ``SLIPWAY_PARAM_*`` env; on a bad parameter, say which and exit 2."""
    try:
        return parse_config(
            sys.argv[1:] if argv is None else argv,
            os.environ,
            prog=prog,
            description=description,
            defaults=defaults,
        )
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT_CODE) from None


def topology_or_exit(reader: Callable[[Mapping[str, str]], Topology], prog: str) -> Topology:
    """Where this process sits (``reader(os.environ)``); exit 2 if the env is inconsistent."""
    try:
        return reader(os.environ)
    except TopologyError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT_CODE) from None
