"""``python -m slipway_training.digits_cnn``: a PyTorch CNN on the digits, logged to MLflow.

Parameters: ``--help``, or ``SLIPWAY_PARAM_<NAME>`` env vars (see :mod:`slipway_training.config`).
Under torchrun (``WORLD_SIZE > 1``) it trains with DistributedDataParallel — gloo on CPU, nccl
on GPU — and only rank 0 logs. What gets logged: :mod:`slipway_training.tracking`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .cli import config_or_exit, setup_logging, topology_or_exit
from .config import TrainConfig
from .data import load_digits
from .topology import torch_topology

PROG = "python -m slipway_training.digits_cnn"
DEFAULTS = TrainConfig(epochs=10, lr=0.003)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate and log; return the process exit code."""
    cfg = config_or_exit(argv, prog=PROG, description=__doc__ or "", defaults=DEFAULTS)
    topology = topology_or_exit(torch_topology, PROG)
    setup_logging(topology)
    from . import torch_net  # heavy imports after the cheap checks: --help and bad params are fast
    from .tracking import open_tracker

    torch_net.seed_everything(cfg.seed, cfg.threads)
    device = torch_net.setup_distributed(topology)
    try:
        digits = load_digits(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
        with open_tracker(topology.is_leader, os.environ) as tracker:
            tracker.start(
                cfg, framework="pytorch", entrypoint="digits_cnn", world_size=topology.world_size, digits=digits
            )
            net = torch_net.build_cnn(cfg.channels, cfg.hidden_size, cfg.dropout)
            trained = torch_net.train(net, digits, cfg, topology, device, tracker.log_epoch)
            model = torch_net.serving_model(trained)
            if topology.is_leader:
                tracker.finish(
                    flavor="pytorch",
                    model=model,
                    digits=digits,
                    test_probs=torch_net.predict_proba(model, digits.test.x),
                    cfg=cfg,
                    title="digits CNN (PyTorch): test confusion",
                    log_kwargs={"serialization_format": "pt2"},
                )
    finally:
        torch_net.teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
