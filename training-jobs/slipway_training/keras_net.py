"""The Keras side: seeding, the distribution strategy, the digits CNN, training, prediction.

The same architecture as :mod:`slipway_training.torch_net`, built from built-in Keras layers
only (so the logged model needs no Slipway code): raw (n, 64) pixels in, class probabilities out.
With more than one worker in ``TF_CONFIG`` it trains under ``MultiWorkerMirroredStrategy``
(each worker takes every n-th global batch; gradients are all-reduced); every worker runs the
same steps, and the chief alone logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from tensorflow import keras

from .config import TrainConfig
from .data import IMAGE_SHAPE, N_CLASSES, N_FEATURES, Digits, Split
from .reports import cross_entropy
from .topology import Topology

EpochCallback = Callable[[int, Mapping[str, float]], None]
EVAL_BATCH = 512
BN_MOMENTUM = 0.9  # PyTorch's default (momentum 0.1 in its convention)


def configure(threads: int) -> None:
    """Thread pools and deterministic ops; must run before TensorFlow executes anything."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.experimental.enable_op_determinism()


def make_strategy(topology: Topology) -> Any:
    """``MultiWorkerMirroredStrategy`` (reads ``TF_CONFIG``) when distributed, else the default."""
    if topology.distributed:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def seed(value: int) -> None:
    """Seed Python, NumPy and TensorFlow (``keras.utils.set_random_seed``)."""
    keras.utils.set_random_seed(value)


def build_cnn(channels: int, hidden_size: int, dropout: float) -> Any:
    """Two 3x3 conv blocks (with batch norm), a 2x2 max-pool and a dense softmax head."""
    layers = keras.layers
    c1, c2 = channels, channels * 2
    return keras.Sequential(
        [
            keras.Input(shape=(N_FEATURES,), dtype="float32", name="pixels"),
            layers.Reshape((*IMAGE_SHAPE, 1)),
            layers.Conv2D(c1, 3, padding="same"),
            layers.BatchNormalization(momentum=BN_MOMENTUM),
            layers.ReLU(),
            layers.Conv2D(c2, 3, padding="same"),
            layers.BatchNormalization(momentum=BN_MOMENTUM),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(dropout),
            layers.Dense(hidden_size, activation="relu"),
            layers.Dense(N_CLASSES, activation="softmax", name="probabilities"),
        ],
        name="digits_cnn",
    )


def _dataset(part: Split, batch_size: int, shuffle_seed: int | None) -> Any:
    ds = tf.data.Dataset.from_tensor_slices((part.x, part.y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(part), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.batch(batch_size).with_options(options)


def _evaluate(model: Any, part: Split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on one split, computed locally on this worker."""
    probs = np.concatenate(
        [np.asarray(model(part.x[i : i + EVAL_BATCH], training=False)) for i in range(0, len(part), EVAL_BATCH)]
    )
    return cross_entropy(part.y, probs), float(np.mean(probs.argmax(1) == part.y))


def train(digits: Digits, cfg: TrainConfig, strategy: Any, on_epoch: EpochCallback) -> Any:
    """Build and train the model under ``strategy``; ``cfg.batch_size`` is the global batch size.

    A custom loop (``strategy.run``) rather than ``Model.fit``: Keras 3's ``fit`` fails under
    ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), and one loop for one worker and
    for many keeps both paths the same.
    """
    with strategy.scope():
        model = build_cnn(cfg.channels, cfg.hidden_size, cfg.dropout)
        optimizer = keras.optimizers.Adam(learning_rate=cfg.lr, weight_decay=cfg.weight_decay or None)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    batches = strategy.experimental_distribute_dataset(_dataset(digits.train, cfg.batch_size, cfg.seed))

    def replica_step(x: Any, y: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            per_example = loss_fn(y, probs)
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        correct = tf.cast(tf.equal(tf.argmax(probs, axis=1), y), tf.float64)
        return (
            tf.reduce_sum(tf.cast(per_example, tf.float64)),
            tf.reduce_sum(correct),
            tf.cast(tf.size(y), tf.float64),
        )

    @tf.function  # type: ignore[untyped-decorator]
    def step(x: Any, y: Any) -> list[Any]:
        sums = strategy.run(replica_step, args=(x, y))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in sums]

    for epoch in range(1, cfg.epochs + 1):
        totals = np.zeros(3)
        for x, y in batches:
            totals += np.array([float(v) for v in step(x, y)])
        val_loss, val_acc = _evaluate(model, digits.val)
        on_epoch(
            epoch,
            {
                "train_loss": totals[0] / totals[2],
                "train_accuracy": totals[1] / totals[2],
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            },
        )
    return model


def serving_model(model: Any, cfg: TrainConfig) -> Any:
    """A copy of the trained model outside any distribution strategy, for prediction and logging."""
    plain = build_cnn(cfg.channels, cfg.hidden_size, cfg.dropout)
    plain.set_weights(model.get_weights())
    return plain


def predict_proba(model: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Class probabilities for (n, 64) float32 pixels."""
    out = model.predict(np.asarray(x, dtype=np.float32), batch_size=EVAL_BATCH, verbose=0)
    return np.asarray(out, dtype=np.float32)
