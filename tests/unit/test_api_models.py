"""The API models: defaults, the examples, Kubernetes-style defaulting, the CEL twins."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from slipway.api import (
    ModelDeployment,
    ModelDeploymentSpec,
    ModelVersion,
    TrainingRun,
    TrainingRunSpec,
    crd,
    parse_duration,
)
from slipway.api.common import ApiModel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
RESOURCES: dict[str, type[ApiModel]] = {
    "TrainingRun": TrainingRun,
    "ModelVersion": ModelVersion,
    "ModelDeployment": ModelDeployment,
}
SCHEMAS = {info.kind: crd.openapi_schema(info) for info in crd.KINDS}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Default a value the way the API server does: top-down, defaulted values included."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        value = {k: apply_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


def test_there_are_examples_of_every_kind() -> None:
    kinds = [d["kind"] for p in EXAMPLES for d in _docs(p)]
    assert set(kinds) == set(RESOURCES)
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse_and_default_like_the_server(path: Path) -> None:
    for doc in _docs(path):
        model = RESOURCES[doc["kind"]].model_validate(doc)
        dumped = model.to_dict()
        server_spec = apply_defaults(SCHEMAS[doc["kind"]]["properties"]["spec"], doc["spec"])
        assert dumped["spec"] == server_spec
        assert RESOURCES[doc["kind"]].model_validate(dumped).to_dict() == dumped


def test_minimal_deployment_defaults() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": {"name": "digits-cnn", "track": {"alias": "champion"}}})
    assert spec.serving.runtime == "slipway"
    assert spec.serving.protocol == "v2"
    assert spec.autoscaling.min_replicas == 1
    assert spec.autoscaling.max_replicas == 3
    assert spec.strategy.canary is not None
    assert [s.set_weight for s in spec.strategy.canary.steps if s.set_weight] == [10, 50, 100]
    assert spec.strategy.canary.progress_deadline == "10m"
    assert spec.rollback.window == "30m"
    assert spec.rollback.registry == "tag"
    assert spec.router == "gateway-api"
    assert spec.paused is False


def test_defaults_are_not_shared_between_instances() -> None:
    a = ModelDeploymentSpec.model_validate({"model": {"name": "m", "track": {"version": 1}}})
    b = ModelDeploymentSpec.model_validate({"model": {"name": "m", "track": {"version": 2}}})
    assert a.strategy.canary is not None and b.strategy.canary is not None
    a.strategy.canary.steps.append(a.strategy.canary.steps[0])
    assert len(b.strategy.canary.steps) == 5


def test_minimal_training_run_defaults() -> None:
    spec = TrainingRunSpec.model_validate({"entrypoint": "digits_cnn"})
    assert spec.framework == "pytorch"
    assert spec.workers == 1
    assert spec.params == {}
    assert spec.deadline_seconds == 86400
    assert spec.registration is None


def test_register_alias_is_the_wire_name() -> None:
    spec = TrainingRunSpec.model_validate({"entrypoint": "digits_cnn", "register": {"model": "digits-cnn"}})
    assert spec.registration is not None and spec.registration.model == "digits-cnn"
    assert spec.to_dict()["register"] == {"model": "digits-cnn", "gates": []}


def test_version_keeps_its_type() -> None:
    mv = ModelVersion.model_validate({"spec": {"model": "m", "version": 7}})
    assert mv.to_dict()["spec"]["version"] == 7
    mv = ModelVersion.model_validate({"spec": {"model": "m", "version": "7"}})
    assert mv.to_dict()["spec"]["version"] == "7"


def test_status_round_trip() -> None:
    """Status as the operator writes it (times with microseconds, Z) survives the model unchanged."""
    status = {
        "phase": "Progressing",
        "stableVersion": "6",
        "canaryVersion": "7",
        "canaryWeight": 25,
        "currentStep": 4,
        "analysis": {
            "phase": "Running",
            "successful": 3,
            "failed": 1,
            "inconclusive": 0,
            "measurements": [
                {
                    "metric": "error-rate",
                    "version": "7",
                    "value": 0.002,
                    "phase": "Successful",
                    "measuredAt": "2025-06-01T12:00:00.000000Z",
                }
            ],
        },
        "blockedVersions": [{"version": "5", "reason": "AlertFiring", "at": "2025-05-30T08:00:00.000000Z"}],
        "history": [{"version": "6", "previousVersion": "4", "outcome": "Promoted"}],
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Serving",
                "message": "",
                "lastTransitionTime": "2025-06-01T11:00:00Z",
            }
        ],
    }
    md = ModelDeployment.model_validate({"spec": {"model": {"name": "m", "track": {"alias": "a"}}}, "status": status})
    assert md.to_dict()["status"] == status


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("0s", 0), ("2h", 7200)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "1.5h", "5 m", "-1s", "1d", "m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def _all_models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = list(RESOURCES.values())
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for info in model.model_fields.values():
            for arg in _types_in(info.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append(arg)
    return seen


def _types_in(tp: Any) -> list[Any]:
    out = [tp]
    for arg in getattr(tp, "__args__", ()):
        out += _types_in(arg)
    return out


def test_no_default_factories() -> None:
    """Defaults must be plain values, so that the schema carries them (round-trip)."""
    models = _all_models()
    assert len(models) > 30
    for model in models:
        for name, info in model.model_fields.items():
            assert info.default_factory is None, f"{model.__name__}.{name}"


def test_every_field_is_described() -> None:
    for model in _all_models():
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (TrainingRunSpec, {}, "entrypoint or command"),
        (TrainingRunSpec, {"framework": "custom", "entrypoint": "x"}, "custom needs command"),
        (TrainingRunSpec, {"entrypoint": "x", "params": {"a b": "1"}}, "params keys"),
        (
            TrainingRunSpec,
            {"entrypoint": "x", "register": {"model": "m", "gates": [{"metric": "a"}]}},
            "at least one of min or max",
        ),
        (
            ModelDeploymentSpec,
            {"model": {"name": "m", "track": {}}},
            "exactly one of track.alias",
        ),
        (
            ModelDeploymentSpec,
            {
                "model": {"name": "m", "track": {"alias": "a"}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"setWeight": 20}]}},
            },
            "strictly increase",
        ),
    ],
)
def test_cel_twins_reject(model: type[BaseModel], data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)
