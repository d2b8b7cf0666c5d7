"""MLflow I/O of a TrainingRun: its run (created first, found again after a restart), the run's outcome, registration.

Idempotent by design, because the operator may die between any two calls:

- :meth:`MlflowRuns.ensure_run` tags the run with the TrainingRun's uid and looks for that tag
  before creating one, so a run created just before a crash (and not yet recorded in status) is
  found again rather than duplicated;
- :meth:`MlflowRuns.register` looks for a version of the model made from the run before
  creating one, so a restart between registering and recording the version reuses it;
- aliases and stages are set to a value, which repeating does not change.

What gets registered: the model the run logged under the name ``model``. MLflow 3 logs models as
logged models (``models:/m-<id>``), which Slipway's entry points also name in the run tag
``slipway.model_id``; the run's logged models named ``model`` are searched next, and a run
whose artifacts hold ``model/MLmodel`` (the MLflow 2 layout) registers that folder. This is what
``mlflow.register_model("runs:/<run>/model", …)`` resolves to, done with an explicit client
instead of MLflow's global tracking URI.

Every MLflow call is blocking; they run on the thread pool of the client (:class:`slipway.clients.mlflow.Mlflow`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import RestException

from .mlflow import Mlflow, quote
from .mlflow import MlflowError as MlflowError
from .mlflow import MlflowUnavailable as MlflowUnavailable

UID_TAG = "slipway.trainingrun.uid"
TRAININGRUN_TAG = "slipway.trainingrun"
MODEL_ID_TAG = "slipway.model_id"
MODEL_ARTIFACT = "model"
OPEN_STATES = frozenset({"RUNNING", "SCHEDULED"})
_EXISTS = frozenset({"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"})


class NoModelLogged(MlflowError):
    """The run logged no model named ``model``: there is nothing to register."""


@dataclass(frozen=True)
class RunRef:
    """The run a TrainingRun logs into."""

    run_id: str
    experiment_id: str
    created: bool
    """False when an existing run (tagged with the TrainingRun's uid) was found again."""


@dataclass(frozen=True)
class RunOutcome:
    """What a run ended with: its status and the last value of each metric."""

    run_id: str
    status: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        """Whether the run is still RUNNING or SCHEDULED (nobody ended it)."""
        return self.status in OPEN_STATES


@dataclass(frozen=True)
class Registered:
    """A model version made from a run."""

    model: str
    version: str
    source: str
    created: bool


class MlflowRuns(Mlflow):
    """The TrainingRun reconciler's MLflow client: its run, the run's outcome, registration."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        max_workers: int = 2,
        client_factory: Callable[[str], Any] | None = None,
        connection: Mlflow | None = None,
    ) -> None:
        super().__init__(
            tracking_uri,
            max_workers=max_workers,
            client_factory=client_factory,
            thread_name_prefix="mlflow-runs",
            connection=connection,
        )

    # --- the run ------------------------------------------------------------------------------

    async def ensure_run(self, experiment: str, uid: str, run_name: str, tags: Mapping[str, str]) -> RunRef:
        """The run tagged with ``uid`` in ``experiment`` (created, with the experiment, if there is none)."""
        return await self._off_loop(self._ensure_run, experiment, uid, run_name, dict(tags))

    def _ensure_run(self, experiment: str, uid: str, run_name: str, tags: dict[str, str]) -> RunRef:
        experiment_id = self._experiment_id(experiment)
        found = self._call(
            "search_runs",
            [experiment_id],
            filter_string=f"tags.`{UID_TAG}` = '{quote(uid)}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            return RunRef(str(found[0].info.run_id), experiment_id, created=False)
        run = self._call("create_run", experiment_id, tags={**tags, UID_TAG: uid}, run_name=run_name)
        return RunRef(str(run.info.run_id), experiment_id, created=True)

    def _experiment_id(self, name: str) -> str:
        exp = self._call("get_experiment_by_name", name)
        if exp is None:
            try:
                return str(self._call("create_experiment", name))
            except MlflowError as exc:
                cause = exc.__cause__
                if not (isinstance(cause, RestException) and cause.error_code in _EXISTS):
                    raise
                exp = self._call("get_experiment_by_name", name)  # created meanwhile by someone else
        if exp is None or exp.lifecycle_stage == "deleted":
            raise MlflowError(f"MLflow experiment {name!r} is deleted: restore it or choose another experiment")
        return str(exp.experiment_id)

    async def outcome(self, run_id: str) -> RunOutcome:
        """The run's status, final metrics (finite ones) and tags."""
        return await self._off_loop(self._outcome, run_id)

    def _outcome(self, run_id: str) -> RunOutcome:
        run = self._call("get_run", run_id)
        metrics = {str(k): float(v) for k, v in (run.data.metrics or {}).items() if math.isfinite(float(v))}
        tags = {str(k): str(v) for k, v in (run.data.tags or {}).items()}
        return RunOutcome(run_id, str(run.info.status), metrics, tags)

    async def end_run(self, run_id: str, status: str) -> None:
        """End a run (FINISHED, FAILED or KILLED): for runs whose training never ended them."""
        await self._off_loop(self._call, "set_terminated", run_id, status)

    # --- registration -------------------------------------------------------------------------

    async def register(
        self, model: str, run_id: str, *, tags: Mapping[str, str] | None = None, description: str | None = None
    ) -> Registered:
        """The version of ``model`` made from the run's ``model``: found if it exists, else created."""
        return await self._off_loop(self._register, model, run_id, dict(tags or {}), description)

    def _register(self, model: str, run_id: str, tags: dict[str, str], description: str | None) -> Registered:
        existing = self._call("search_model_versions", f"name = '{quote(model)}' and run_id = '{quote(run_id)}'")
        if existing:
            mv = max(existing, key=lambda v: int(v.version))
            return Registered(model, str(mv.version), str(mv.source), created=False)
        source, model_id = self._model_source(run_id)
        try:
            self._call("create_registered_model", model)
        except MlflowError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, RestException) and cause.error_code in _EXISTS):
                raise
        mv = self._call(
            "create_model_version",
            model,
            source,
            run_id=run_id,
            tags=tags or None,
            description=description,
            model_id=model_id,
        )
        return Registered(model, str(mv.version), source, created=True)

    def _model_source(self, run_id: str) -> tuple[str, str | None]:
        """(source, logged model id) of the run's ``model``, as ``register_model("runs:/<run>/model")`` resolves it."""
        run = self._call("get_run", run_id)
        model_id = (run.data.tags or {}).get(MODEL_ID_TAG)
        if not model_id:
            logged = self._call(
                "search_logged_models",
                [run.info.experiment_id],
                filter_string=f"name = '{MODEL_ARTIFACT}'",
            )
            mine = [m for m in logged if m.source_run_id == run_id]
            if mine:
                model_id = max(mine, key=lambda m: m.creation_timestamp or 0).model_id
        if model_id:
            return f"models:/{model_id}", str(model_id)
        files = {f.path for f in self._call("list_artifacts", run_id, MODEL_ARTIFACT)}
        if f"{MODEL_ARTIFACT}/MLmodel" in files:
            return f"{str(run.info.artifact_uri).rstrip('/')}/{MODEL_ARTIFACT}", None
        raise NoModelLogged(f"run {run_id} logged no model named {MODEL_ARTIFACT!r}")

    async def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point ``alias`` at the version (moving it from wherever it pointed)."""
        await self._off_loop(self._call, "set_registered_model_alias", model, alias, version)

    async def transition_stage(self, model: str, version: str, stage: str) -> None:
        """Move the version to a stage (MLflow's legacy stages API)."""
        await self._off_loop(self._transition, model, version, stage)

    def _transition(self, model: str, version: str, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._call("transition_model_version_stage", model, version, stage)
