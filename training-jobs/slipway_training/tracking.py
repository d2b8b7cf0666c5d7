"""MLflow logging into the run named by ``MLFLOW_RUN_ID`` (else a new one), by the leader only.

What a run gets (the contract the TrainingRun reconciler and the serving runtime rely on):

- params: every :class:`~slipway_training.config.TrainConfig` field, plus ``framework``,
  ``entrypoint``, ``world_size`` and ``dataset_digest``;
- per-epoch metrics at ``step = epoch`` (1-based): ``train_loss``, ``train_accuracy``,
  ``val_loss``, ``val_accuracy``;
- final metrics on the held-out test split, once, at ``step = epochs``: ``accuracy``, ``loss``
  (cross-entropy) and ``f1_macro`` — the names TrainingRun gates use. (Per-epoch training
  metrics carry a ``train_`` prefix so that the history of ``accuracy`` is the test accuracy
  only, never a mix of training and test values.) They are also linked to the logged model;
- the dataset as the run's input (context ``training``): name ``sklearn-digits``, the digest of
  :func:`~slipway_training.data.dataset_digest`, source type ``sklearn`` with the loader, the
  scikit-learn version and the origin URL;
- the model, named ``model`` (``mlflow.pytorch`` / ``mlflow.tensorflow``), with a signature
  (float32 tensor ``(-1, 64)`` in, float32 class probabilities ``(-1, 10)`` out) and an input
  example, plus ``baseline.json`` (see :mod:`slipway_training.baseline`) at the model's root.
  PyTorch models are saved as ``data/model.pt2`` (``torch.export``; no pickle, no Slipway code
  needed to load), Keras models as ``data/model.keras``; both load with ``mlflow.pyfunc``;
- artifacts ``reports/classification_report.json`` and ``reports/confusion_matrix.png``;
- tags ``slipway.model_id``, ``slipway.model_uri`` (``models:/<model_id>``) and
  ``slipway.dataset.digest``.

The run ends ``FINISHED`` when training succeeds and ``FAILED`` when it raises.
``MLFLOW_TRACKING_URI`` comes from the environment; without ``MLFLOW_RUN_ID`` the run is
created in ``MLFLOW_EXPERIMENT_NAME`` (default ``digits``).
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from mlflow.data.dataset_source import DatasetSource

from . import baseline as bl
from .config import TrainConfig
from .data import DATASET_NAME, N_CLASSES, N_FEATURES, VALUE_RANGE, Digits, feature_names
from .reports import Evaluation, evaluate, plot_confusion

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "digits"
MODEL_NAME = "model"
REPORTS_DIR = "reports"
INPUT_EXAMPLE_ROWS = 2


class SklearnDatasetSource(DatasetSource):
    """Dataset source ``sklearn``: data bundled with scikit-learn, described by its loader."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._spec = dict(spec)

    @staticmethod
    def _get_source_type() -> str:
        return "sklearn"

    def load(self) -> Any:
        module, _, func = str(self._spec["loader"]).rpartition(".")
        return getattr(importlib.import_module(module), func)()

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> SklearnDatasetSource:
        raise NotImplementedError("construct SklearnDatasetSource directly")

    def to_dict(self) -> dict[str, Any]:
        return dict(self._spec)

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> SklearnDatasetSource:
        return cls(source_dict)


class Tracker:
    """Logging interface of the entry points; this base class logs nothing (non-leader ranks)."""

    def start(self, cfg: TrainConfig, *, framework: str, entrypoint: str, world_size: int, digits: Digits) -> None:
        """Log params and the dataset input."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Log one epoch's metrics at ``step = epoch``."""

    def finish(
        self,
        *,
        flavor: str,
        model: Any,
        digits: Digits,
        test_probs: npt.NDArray[Any],
        cfg: TrainConfig,
        title: str,
        log_kwargs: Mapping[str, Any] | None = None,
    ) -> Evaluation | None:
        """Evaluate on the test split; log the model, its baseline, final metrics and reports.

        ``flavor`` names the MLflow flavor module (``pytorch``, ``tensorflow``);
        ``log_kwargs`` go to its ``log_model`` as they are.
        """
        return None


class MlflowTracker(Tracker):
    """Logs into the active MLflow run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def start(self, cfg: TrainConfig, *, framework: str, entrypoint: str, world_size: int, digits: Digits) -> None:
        import mlflow
        from mlflow.data.numpy_dataset import from_numpy

        params = {
            **cfg.as_params(),
            "framework": framework,
            "entrypoint": entrypoint,
            "world_size": str(world_size),
            "dataset_digest": digits.digest,
        }
        mlflow.log_params(_new_params(self.run_id, params))
        mlflow.set_tags({"slipway.dataset.digest": digits.digest, "slipway.entrypoint": entrypoint})
        dataset = from_numpy(
            digits.full.x,
            targets=digits.full.y,
            source=SklearnDatasetSource(digits.source),
            name=DATASET_NAME,
            digest=digits.digest,
        )
        mlflow.log_input(dataset, context="training")

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=epoch)
        log.info("epoch %d %s", epoch, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def finish(
        self,
        *,
        flavor: str,
        model: Any,
        digits: Digits,
        test_probs: npt.NDArray[Any],
        cfg: TrainConfig,
        title: str,
        log_kwargs: Mapping[str, Any] | None = None,
    ) -> Evaluation:
        import mlflow
        from mlflow.models import infer_signature

        flavor_module: Any = importlib.import_module(f"mlflow.{flavor}")
        ev = evaluate(digits.test.y, test_probs, N_CLASSES)
        probs32 = np.asarray(test_probs, dtype=np.float32)
        info = flavor_module.log_model(
            model,
            name=MODEL_NAME,
            signature=infer_signature(digits.test.x, probs32),
            input_example=digits.test.x[:INPUT_EXAMPLE_ROWS],
            pip_requirements=flavor_module.get_default_pip_requirements(),
            **(log_kwargs or {}),
        )
        doc = bl.build_baseline(
            digits.train.x,
            [bl.uniform_edges(*VALUE_RANGE, cfg.baseline_bins)] * N_FEATURES,
            feature_names=feature_names(),
            dataset={"name": DATASET_NAME, "digest": digits.digest},
            validation=(digits.val.x, digits.val.y),
        )
        client = mlflow.MlflowClient()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / bl.FILENAME
            path.write_text(bl.dumps(doc))
            client.log_model_artifact(info.model_id, str(path))
            reports = Path(tmp) / REPORTS_DIR
            reports.mkdir()
            (reports / "classification_report.json").write_text(json.dumps(ev.report(), indent=1))
            plot_confusion(ev.confusion, reports / "confusion_matrix.png", title)
            mlflow.log_artifacts(str(reports), artifact_path=REPORTS_DIR)
        mlflow.log_metrics(ev.final_metrics(), step=cfg.epochs, model_id=info.model_id)
        mlflow.set_tags({"slipway.model_id": info.model_id, "slipway.model_uri": info.model_uri})
        log.info(
            "test accuracy=%.4f loss=%.4f f1_macro=%.4f; model %s in run %s",
            ev.accuracy,
            ev.loss,
            ev.f1_macro,
            info.model_uri,
            self.run_id,
        )
        return ev


def _new_params(run_id: str, params: Mapping[str, str]) -> dict[str, str]:
    """The params the run does not have yet; MLflow refuses to change a param's value.

    A retried pod logs the same values again (skipped); a value someone else logged differently
    (e.g. ``lr=1e-3`` where training logs ``0.001``) is kept, with a warning.
    """
    import mlflow

    existing = mlflow.MlflowClient().get_run(run_id).data.params
    for key, value in params.items():
        if key in existing and existing[key] != value:
            log.warning("param %s is already %r in run %s; not logging %r", key, existing[key], run_id, value)
    return {k: v for k, v in params.items() if k not in existing}


@contextmanager
def open_tracker(leader: bool, environ: Mapping[str, str]) -> Iterator[Tracker]:
    """The leader logs into ``MLFLOW_RUN_ID`` (or a new run); every other process gets a no-op."""
    if not leader:
        yield Tracker()
        return
    import mlflow

    if not environ.get("MLFLOW_TRACKING_URI"):
        log.warning("MLFLOW_TRACKING_URI is not set: MLflow logs to its local default store")
    run_id = environ.get("MLFLOW_RUN_ID") or None
    if run_id is None:
        mlflow.set_experiment(environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    with mlflow.start_run(run_id=run_id) as run:
        log.info("logging to MLflow run %s", run.info.run_id)
        yield MlflowTracker(run.info.run_id)
