"""The ``kserve.Model`` that Slipway serves: validate, predict off the loop, observe."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from . import frameworks, loader
from .batching import DynamicBatcher
from .config import ServingConfig
from .drift import DriftMonitor
from .errors import ModelLoadError, ModelNotLoaded, PredictionFailed, ServingError
from .metrics import DriftCollector, ModelMetrics, register_drift
from .middleware import InFlight
from .outputs import OutputKind, Outputs, classify, interpret
from .performance import AccuracyCollector, AccuracyMonitor, calibrate, register_accuracy
from .validation import InputSpec, conform, v1_instances, v2_datatype, v2_inputs
from .workers import ModelWorkers

log = logging.getLogger(__name__)


class SlipwayModel(Model):  # type: ignore[misc]  # kserve ships no type information
    """One model, served over V1 and V2.

    ``load()`` resolves and loads the artifact, then predicts the input example (or a zero
    instance built from the signature) and only then sets ``ready``. ``predict`` validates the
    body against the signature and hands it to a model thread, which runs it (with the requests
    queued behind it, or in a dynamic batch collected on the loop when a wait is configured),
    interprets the outputs and records the inputs for drift; back on the loop, the request's
    predictions and confidences are counted and the answer built.
    """

    def __init__(self, config: ServingConfig) -> None:
        super().__init__(config.model_name)
        self.config = config
        self.metrics = ModelMetrics(config.model_name, config.version, config.max_classes)
        self.flavor = ""
        self.output_kind: OutputKind | None = None
        self.input_spec: InputSpec | None = None
        self.drift: DriftMonitor | None = None
        self.accuracy: AccuracyMonitor | None = None
        self._predict_fn: frameworks.Predict | None = None
        self._workers: ModelWorkers[Outputs] | None = None
        self.in_flight = InFlight()
        self._batcher: DynamicBatcher[Outputs] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def load(self) -> bool:
        """Load the artifact and warm it up on its input example; ready only if that works."""
        self.ready = False
        loaded = loader.load(
            self.config.model_uri,
            flavor=self.config.flavor,
            download_dir=self.config.download_dir,
            baseline_uri=self.config.baseline_uri,
            allow_pickle=self.config.allow_pickle,
        )
        self._predict_fn = loaded.predict
        self.flavor = loaded.flavor
        self.input_spec = loaded.input_spec
        self._warm_up(loaded.input_example)
        self._set_up_drift(loaded)
        self._set_up_accuracy(loaded)
        # No wait: the model threads batch what is queued. A wait: the loop collects batches.
        waits = self.config.batching and self.config.max_latency_ms > 0
        self._workers = ModelWorkers(
            self._infer,
            threads=self.config.predict_workers,
            initializer=frameworks.thread_initializer(self.config.torch_threads),
            max_batch_size=max(1, self.config.max_batch_size) if not waits else 1,
        )
        if waits:
            self._batcher = DynamicBatcher(
                self._workers.run,
                max_batch_size=self.config.max_batch_size,
                max_latency=self.config.max_latency_ms / 1000.0,
                in_flight=self.in_flight,
            )
        self.metrics.set_info(self.flavor)
        self.ready = True
        log.info(
            "model %s version %s ready (%s, input %s, batching %s)",
            self.name,
            self.config.version,
            self.flavor,
            self.input_spec.describe_shape() if self.input_spec else "unchecked",
            f"{self.config.max_batch_size}/{self.config.max_latency_ms}ms" if self.config.batching else "off",
        )
        return self.ready

    def stop(self) -> None:
        """Mark the model unready and let the worker threads go."""
        self.ready = False
        if self._workers is not None:
            self._workers.close()

    def _warm_up(self, example: np.ndarray | None) -> None:
        assert self._predict_fn is not None
        if example is None:
            log.warning("no input example and no signature: readiness is not proven")
            return
        try:
            batch = conform(example, self.input_spec, what="the input example")
            for _ in range(max(1, self.config.warmup_runs)):
                raw = self._predict_fn(batch)
            self.output_kind = classify(np.asarray(raw))
            outputs = interpret(np.asarray(raw), self.output_kind)
        except Exception as exc:
            raise ModelLoadError(f"the test prediction on the input example failed: {exc}") from exc
        if len(outputs.predictions) != len(batch):
            raise ModelLoadError(f"the test prediction returned {len(outputs.predictions)} rows for {len(batch)}")

    def max_request_values(self) -> int | None:
        """The most values one request may carry (instance limit times values per instance); None while unknown."""
        width = self.input_spec.feature_count if self.input_spec else None
        return None if width is None else self.config.limits.max_instances * width

    def _set_up_drift(self, loaded: loader.LoadedModel) -> None:
        baseline = loaded.baseline
        if baseline is None:
            return
        width = self.input_spec.feature_count if self.input_spec else None
        if width is not None and width != len(baseline.features):
            log.warning(
                "baseline has %d features, the input %d values: drift metrics are off",
                len(baseline.features),
                width,
            )
            return
        self.drift = DriftMonitor(baseline, window=self.config.drift_window, min_samples=self.config.drift_min_samples)
        register_drift(
            DriftCollector(
                self.config.model_name,
                self.config.version,
                baseline.names,
                self.drift.report,
                lambda: self.drift.samples if self.drift else 0,
                max_features=self.config.max_drift_features,
            )
        )

    def _set_up_accuracy(self, loaded: loader.LoadedModel) -> None:
        """Calibrate the label-free accuracy estimate on the validation split saved with the baseline."""
        validation = loaded.validation
        if validation is None or self.output_kind not in (OutputKind.PROBABILITIES, OutputKind.LOGITS):
            if validation is None:
                log.info("no validation split with the baseline: no accuracy estimate")
            return

        spec = self.input_spec

        def predict(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            assert self._predict_fn is not None
            if spec is not None and all(d >= 0 for d in spec.shape):
                rows = rows.reshape(len(rows), *spec.shape)
            if spec is not None and spec.dtype is not None:
                rows = rows.astype(spec.dtype)
            batch = conform(rows, spec, what="the validation split")
            outputs = interpret(np.asarray(self._predict_fn(batch)), self.output_kind)
            assert outputs.classes is not None and outputs.confidence is not None
            return outputs.classes, outputs.confidence

        try:
            estimator = calibrate(predict, validation)
        except Exception as exc:
            log.warning("cannot calibrate the accuracy estimate on the validation split: %s", exc)
            return
        self.accuracy = AccuracyMonitor(
            estimator, window=self.config.drift_window, min_samples=self.config.drift_min_samples
        )
        register_accuracy(AccuracyCollector(self.config.model_name, self.config.version, self.accuracy))
        log.info(
            "accuracy estimate calibrated on %d validation rows: accuracy %.4f, mean confidence %.4f",
            estimator.validation_samples,
            estimator.validation_accuracy,
            estimator.validation_confidence,
        )

    # -- metadata --------------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        """V2 model metadata: the signature's input."""
        spec = self.input_spec
        if spec is None:
            return []
        datatype = v2_datatype(spec.dtype) if spec.dtype is not None else "FP32"
        return [{"name": spec.name, "datatype": datatype, "shape": [-1, *spec.shape]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        """V2 model metadata: the outputs a classifier answers with."""
        return [
            {"name": "predictions", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
        ]

    # -- inference -------------------------------------------------------------------------

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Validate, predict in a worker thread, record metrics, answer in the caller's protocol."""
        if not self.ready or self._workers is None:
            raise ModelNotLoaded(f"model {self.name} is not ready")
        limits = self.config.limits
        if isinstance(payload, InferRequest):
            batch = v2_inputs(payload.inputs, self.input_spec, limits)
        else:
            batch = v1_instances(payload, self.input_spec, limits)
        outputs = await self._run(batch)
        self.metrics.predicted(outputs.classes, outputs.confidence)
        if isinstance(payload, InferRequest):
            return self._v2_response(payload, outputs)
        return {"predictions": outputs.predictions.tolist()}

    async def _run(self, batch: np.ndarray) -> Outputs:
        assert self._workers is not None
        try:
            if self._batcher is not None:
                return await self._batcher.submit(batch)
            return await self._workers.run(batch)
        except ServingError:
            raise
        except Exception as exc:
            log.exception("model %s failed on a batch of %d", self.name, len(batch))
            raise PredictionFailed(f"the model failed: {type(exc).__name__}: {exc}") from exc

    def _infer(self, batch: np.ndarray) -> Outputs:
        """One model call, in a model thread: predict, interpret, record inputs (drift) and confidences (accuracy)."""
        assert self._predict_fn is not None
        self.metrics.batch_size.observe(len(batch))
        raw = np.asarray(self._predict_fn(batch))
        if raw.ndim == 0 or len(raw) != len(batch):
            raise PredictionFailed(f"the model returned {raw.shape} for {len(batch)} instances")
        outputs = interpret(raw, self.output_kind)
        if self.drift is not None:
            self.drift.observe(batch)
        if self.accuracy is not None and outputs.confidence is not None:
            self.accuracy.observe(outputs.confidence)
        return outputs

    def _v2_response(self, request: InferRequest, outputs: Outputs) -> InferResponse:
        infer_outputs = []
        if outputs.probabilities is not None:
            classes = outputs.predictions.astype(np.int64)
            probabilities = outputs.probabilities.astype(np.float32)
            infer_outputs.append(_output("predictions", classes))
            infer_outputs.append(_output("probabilities", probabilities))
        else:
            infer_outputs.append(_output("predictions", outputs.predictions))
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=self.config.version,
            infer_outputs=infer_outputs,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )


def _output(name: str, array: np.ndarray) -> InferOutput:
    return InferOutput(name=name, shape=list(array.shape), datatype=v2_datatype(array.dtype), data=array)
