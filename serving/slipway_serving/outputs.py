"""Reading model outputs: class probabilities, predicted classes and confidences."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

#: Rows of non-negative values summing to 1 within this tolerance are taken as probabilities.
PROBABILITY_TOLERANCE = 1e-3


class OutputKind(Enum):
    """What a model's raw output is; decided once, on the warm-up prediction."""

    PROBABILITIES = "probabilities"  # [n, k] floats, rows sum to 1
    LOGITS = "logits"  # [n, k] floats, anything else
    LABELS = "labels"  # [n] integers
    VALUES = "values"  # a regression, an embedding: passed through


@dataclass(frozen=True)
class Outputs:
    """What a batch of raw outputs means.

    ``predictions`` is what V1 answers: class indices for classifiers, the raw rows otherwise.
    ``probabilities`` and ``confidence`` exist for classifiers that output a score per class.
    """

    raw: np.ndarray
    predictions: np.ndarray
    classes: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    confidence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, rows: slice, /) -> Outputs:
        """The outputs of some of the instances (one request's share of a batch)."""
        return Outputs(
            self.raw[rows],
            self.predictions[rows],
            None if self.classes is None else self.classes[rows],
            None if self.probabilities is None else self.probabilities[rows],
            None if self.confidence is None else self.confidence[rows],
        )


def classify(raw: np.ndarray) -> OutputKind:
    """The kind of a raw output batch.

    ``[n, k]`` floats with ``k >= 2`` are class scores: probabilities when every row is
    non-negative and sums to 1, else logits. ``[n]`` integers are class labels (e.g. a
    scikit-learn pyfunc's ``predict``). Anything else is passed through.
    """
    if raw.ndim == 2 and raw.shape[1] >= 2 and raw.dtype.kind == "f":
        return OutputKind.PROBABILITIES if _are_probabilities(raw) else OutputKind.LOGITS
    if raw.ndim == 1 and raw.dtype.kind in "iu":
        return OutputKind.LABELS
    return OutputKind.VALUES


def interpret(raw: np.ndarray, kind: OutputKind | None = None) -> Outputs:
    """Classes, probabilities and confidences of a raw batch of the given (or detected) kind."""
    if kind is None or not _fits(raw, kind):
        kind = classify(raw)
    if kind is OutputKind.PROBABILITIES or kind is OutputKind.LOGITS:
        probabilities = raw if kind is OutputKind.PROBABILITIES else softmax(raw)
        classes = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(classes)), classes]
        return Outputs(raw, classes, classes, probabilities, confidence)
    if kind is OutputKind.LABELS:
        return Outputs(raw, raw, raw)
    return Outputs(raw, raw)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def _fits(raw: np.ndarray, kind: OutputKind) -> bool:
    if kind is OutputKind.PROBABILITIES or kind is OutputKind.LOGITS:
        return raw.ndim == 2 and raw.shape[1] >= 2 and raw.dtype.kind == "f"
    if kind is OutputKind.LABELS:
        return raw.ndim == 1 and raw.dtype.kind in "iu"
    return True


def _are_probabilities(raw: np.ndarray) -> bool:
    if raw.min() < 0 or raw.max() > 1:
        return False
    return bool(np.all(np.abs(raw.sum(axis=1) - 1.0) <= PROBABILITY_TOLERANCE))
