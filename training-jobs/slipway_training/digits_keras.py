"""``python -m slipway_training.digits_keras``: a Keras CNN on the digits, logged to MLflow.

Parameters: ``--help``, or ``SLIPWAY_PARAM_<NAME>`` env vars (see :mod:`slipway_training.config`).
With more than one worker in ``TF_CONFIG`` it trains under ``MultiWorkerMirroredStrategy`` and
only the chief logs. What gets logged: :mod:`slipway_training.tracking`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .cli import config_or_exit, setup_logging, topology_or_exit
from .config import TrainConfig
from .data import load_digits
from .topology import tf_topology

PROG = "python -m slipway_training.digits_keras"
DEFAULTS = TrainConfig(epochs=10, lr=0.003)


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate and log; return the process exit code."""
    cfg = config_or_exit(argv, prog=PROG, description=__doc__ or "", defaults=DEFAULTS)
    topology = topology_or_exit(tf_topology, PROG)
    setup_logging(topology)
    from . import keras_net  # heavy imports after the cheap checks: --help and bad params are fast
    from .tracking import open_tracker

    keras_net.configure(cfg.threads)
    strategy = keras_net.make_strategy(topology)
    keras_net.seed(cfg.seed)
    digits = load_digits(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    with open_tracker(topology.is_leader, os.environ) as tracker:
        tracker.start(
            cfg, framework="tensorflow", entrypoint="digits_keras", world_size=topology.world_size, digits=digits
        )
        trained = keras_net.train(digits, cfg, strategy, tracker.log_epoch)
        if topology.is_leader:
            model = keras_net.serving_model(trained, cfg)
            tracker.finish(
                flavor="tensorflow",
                model=model,
                digits=digits,
                test_probs=keras_net.predict_proba(model, digits.test.x),
                cfg=cfg,
                title="digits CNN (Keras): test confusion",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
