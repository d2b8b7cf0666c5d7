"""Evaluation on the test split: final metrics, a per-class report (JSON), a confusion-matrix PNG.

Both frameworks' models output class probabilities; everything here is computed from those
with numpy and scikit-learn, so the metrics mean the same for the PyTorch and the Keras model.

``classification_report.json`` (``version`` 1)::

    {"version": 1, "n": 360, "accuracy": 0.98, "loss": 0.07, "f1_macro": 0.98,
     "classes": {"0": {"precision": 1.0, "recall": 0.97, "f1": 0.99, "support": 36}, ...},
     "confusion_matrix": [[35, 0, ...], ...]}      # rows: true class, columns: predicted
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPORT_VERSION = 1
PROB_FLOOR = 1e-12


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a model on one split."""

    accuracy: float
    loss: float
    f1_macro: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    n: int

    def final_metrics(self) -> dict[str, float]:
        """The run's final metrics, under the names TrainingRun gates refer to."""
        return {"accuracy": self.accuracy, "loss": self.loss, "f1_macro": self.f1_macro}

    def report(self) -> dict[str, Any]:
        """The ``classification_report.json`` document."""
        return {
            "version": REPORT_VERSION,
            "n": self.n,
            **self.final_metrics(),
            "classes": self.per_class,
            "confusion_matrix": self.confusion,
        }


def cross_entropy(y_true: npt.NDArray[np.int64], probs: npt.NDArray[Any]) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.clip(probs[np.arange(len(y_true)), y_true].astype(np.float64), PROB_FLOOR, 1.0)
    return float(-np.mean(np.log(p)))


def evaluate(y_true: npt.NDArray[np.int64], probs: npt.NDArray[Any], n_classes: int) -> Evaluation:
    """Accuracy, cross-entropy loss, macro F1, per-class P/R/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(n_classes))
    y_pred = np.argmax(probs, axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {
        str(c): {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c in labels
    }
    return Evaluation(
        accuracy=float(np.mean(y_pred == y_true)),
        loss=cross_entropy(y_true, probs),
        f1_macro=float(np.mean(f1)),
        per_class=per_class,
        confusion=confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
        n=len(y_true),
    )


def plot_confusion(confusion: list[list[int]], path: Path, title: str) -> Path:
    """Write the confusion matrix as a PNG (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    try:
        ax.imshow(m, cmap="Blues")
        ax.set(
            xticks=range(m.shape[1]),
            yticks=range(m.shape[0]),
            xlabel="predicted",
            ylabel="true",
            title=title,
        )
        threshold = m.max() / 2 if m.size else 0
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > threshold else "black")
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return path
