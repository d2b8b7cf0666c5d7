"""Hypothesis: specs generated within the schema (pydantic's JSON schema of the API) never crash the pure path.

The generator reads ``ModelDeploymentSpec.model_json_schema()`` — the same source the CRD is
generated from — so a field added to the API is fuzzed without touching this file. It honours
what the schema says (types, enums, patterns, lengths, bounds, required fields) and the two CEL
rule shapes it can read (``exactly one of`` and ``at least one of``); the other cross-field rules
are left to the models' Python twins of the CEL rules, which decide whether a generated spec
is one the API server would accept. Only accepted specs are used. Then, for each spec:

- the builders make every child (InferenceService, HPA, HTTPRoute, the knative variant) and the
  manifests are JSON;
- the state machine ``rollout.machine.next`` runs a generated script of observations (time
  passing, tracked-version moves, readiness, actions, analysis rounds, alerts, spec changes):
  each decision takes an arrow of the table or holds, the route weights add up to 100, and the
  rollout state survives the status mapping (``state_to_status`` → ``state_from_status``);
- a whole reconcile pass (``reconcilers.modeldeployment.reconcile``) runs over a fake cluster and
  a fake Prometheus, feeding each status back as a merge patch would; every status it writes
  validates against the CRD's status schema.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import HealthCheck, example, given, note, settings, target
from hypothesis import strategies as st
from pydantic import ValidationError

from slipway.api.analysis import AnalysisMetric
from slipway.api.common import DURATION_PATTERN
from slipway.api.modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from slipway.builders.hpa import build_hpa
from slipway.builders.httproute import build_http_route
from slipway.builders.inferenceservice import build_inference_service
from slipway.builders.knative import build_knative_inference_service
from slipway.builders.names import ACTION_ANNOTATION, LABEL_MODEL, LABEL_VERSION, sanitise_model_name
from slipway.clients.kube import Kube
from slipway.clients.prometheus import NoData, Prometheus, QueryFailed, Unreachable
from slipway.reconcilers.modeldeployment import reconcile
from slipway.reconcilers.rollout_status import state_from_status, state_to_status
from slipway.reconcilers.status import status_changed
from slipway.rollout import machine
from slipway.rollout.analysis import Measurement
from slipway.rollout.phases import TRANSITIONS
from slipway.rollout.state import ACTIONS, Decision, Observations, RolloutState, desired_versions
from slipway.rollout.templates import expand, references

Json = Any
SCHEMA: dict[str, Any] = ModelDeploymentSpec.model_json_schema(by_alias=True)
DEFS: dict[str, Any] = SCHEMA.get("$defs", {})
EXACTLY_ONE = re.compile(r"^(\(has\(self\.(\w+)\) \? 1 : 0\)( \+ )?)+ == 1$")
AT_LEAST_ONE = re.compile(r"^has\(self\.\w+\)( \|\| has\(self\.\w+\))*$")
HAS = re.compile(r"has\(self\.(\w+)\)")
ORDERED = re.compile(r"^(!has\(self\.\w+\) \|\| )*self\.(\w+) <= self\.(\w+)$")
INCREASING = re.compile(r"^self\.(\w+)\.filter\(s, has\(s\.(\w+)\)\)\.map\(s, s\.\2\)\.isSorted\(\)")
SANE_DURATION = r"([0-9]{1,7}(ms|s|m|h)){1,3}"
"""Durations up to about 1,100 years: what parse_duration can turn into a timedelta (the schema allows more)."""
MAX_ITEMS, MAX_TEXT = 6, 24
"""Generated lists and free text stay short: size is not what this test is about."""
T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
VERSIONS = ("1", "2", "3")
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


# --------------------------------------------------------------------------- JSON schema → hypothesis


_MADE: dict[str, st.SearchStrategy[Json]] = {}


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Json]:
    """A strategy for the values a JSON schema node (pydantic's dialect) allows (made once per node)."""
    key = json.dumps(node, sort_keys=True, default=str)
    if key not in _MADE:
        _MADE[key] = _make(node)
    return _MADE[key]


def _make(node: dict[str, Any]) -> st.SearchStrategy[Json]:
    if "$ref" in node:
        return from_schema(DEFS[node["$ref"].rsplit("/", 1)[-1]])
    if "anyOf" in node:  # list-type hints sit next to anyOf, not on the array alternative
        hints = {k: v for k, v in node.items() if k.startswith("x-kubernetes-list")}
        return st.one_of([from_schema({**o, **hints}) for o in node["anyOf"] if o.get("type") != "null"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "const" in node:
        return st.just(node["const"])
    kind = node.get("type")
    if kind == "object":
        return _object(node)
    if kind == "array":
        items = from_schema(node.get("items", {}))
        low = node.get("minItems", 0)
        high = max(low, min(node.get("maxItems", MAX_ITEMS), MAX_ITEMS))
        unique = node.get("x-kubernetes-list-type") == "set"
        keys = node.get("x-kubernetes-list-map-keys")
        by: Callable[[Json], Json] | None = (lambda v: tuple(v.get(k) for k in keys)) if keys else None
        if unique:
            by = json.dumps
        if by is not None:
            return st.lists(items, min_size=low, max_size=high, unique_by=by)
        return st.lists(items, min_size=low, max_size=high)
    if kind == "string":
        return _string(node)
    if kind == "integer":
        return st.integers(node.get("minimum", -(2**31)), node.get("maximum", 2**31))
    if kind == "number":
        return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"the generator does not understand this schema node: {node}")


def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), node.get("maxLength", 1 << 20)
    if node.get("pattern") == DURATION_PATTERN:  # see test_a_huge_duration_is_refused_or_clamped
        return st.from_regex(SANE_DURATION, fullmatch=True)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: low <= len(s) <= high)
    return st.text(min_size=low, max_size=max(low, min(high, MAX_TEXT)))


def _groups(node: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The rules of an object the generator can honour, as (kind, fields): exactly one of, at least one of,
    and ``a <= b`` (two numbers drawn in either order are put in order)."""
    out = []
    for rule in node.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if EXACTLY_ONE.match(text):
            out.append(("exactly", HAS.findall(text)))
        elif AT_LEAST_ONE.match(text):
            out.append(("some", HAS.findall(text)))
        elif ordered := ORDERED.match(text):
            out.append(("ordered", [ordered.group(2), ordered.group(3)]))
        elif increasing := INCREASING.match(text):
            out.append(("increasing", [increasing.group(1), increasing.group(2)]))
    return out


def _increasing(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The items whose ``key`` values strictly increase: the values are sorted, items repeating one dropped."""
    values = sorted({item[key] for item in items if key in item})
    out, seen = [], set()
    for item in items:
        if key in item:
            if item[key] in seen:
                continue
            seen.add(item[key])
            item = {**item, key: values[len(seen) - 1]}
        out.append(item)
    return out


def _object(node: dict[str, Any]) -> st.SearchStrategy[dict[str, Json]]:
    props: dict[str, Any] = node.get("properties", {})
    if not props:
        extra = node.get("additionalProperties")
        values = from_schema(extra) if isinstance(extra, dict) else st.text(max_size=MAX_TEXT)
        keys = st.from_regex(r"[a-z][a-z0-9.\-/]{0,20}", fullmatch=True)
        return st.dictionaries(keys, values, max_size=min(node.get("maxProperties", 3), 3))
    required = list(node.get("required", []))
    groups = _groups(node)
    ordered = [names for kind, names in groups if kind == "ordered"]
    increasing = [names for kind, names in groups if kind == "increasing"]
    groups = [(kind, names) for kind, names in groups if kind in ("exactly", "some")]
    grouped = {name for _, names in groups for name in names}
    optional = [k for k in props if k not in required and k not in grouped]
    fields = {k: from_schema(v) for k, v in props.items()}

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Json]:
        out = {k: draw(fields[k]) for k in required}
        for k in optional:
            if draw(st.booleans()):
                out[k] = draw(fields[k])
        for kind, names in groups:
            names = [n for n in names if n in props]
            if kind == "exactly":
                chosen = [draw(st.sampled_from(names))]
            else:
                chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
            for k in chosen:
                out[k] = draw(fields[k])
        for low, high in ordered:
            pair = [out.get(k, props[k].get("default")) for k in (low, high)]
            if all(isinstance(v, int | float) for v in pair) and pair[0] > pair[1]:
                out[low], out[high] = pair[1], pair[0]
        for items, key in increasing:
            if isinstance(out.get(items), list):
                out[items] = _increasing(out[items], key)
        return out

    return build()


def _accepted(raw: dict[str, Any]) -> ModelDeploymentSpec | None:
    """A spec the schema takes, its template references expanded as the operator does before the machine.

    Each referenced template gives one metric named after its reference (so names never clash).
    """
    try:
        spec = ModelDeploymentSpec.model_validate(raw)
        resolved = {
            field: (AnalysisMetric.model_validate({**TEMPLATE_METRIC, "name": f"t{i}"}),)
            for i, (field, _, _) in enumerate(references(spec))
        }
        return expand(spec, resolved)
    except (ValidationError, ValueError):
        return None


TEMPLATE_METRIC = {"query": 'max(errors{version="{{version}}"})', "max": 1.0}
SPECS: st.SearchStrategy[ModelDeploymentSpec] = (
    from_schema(SCHEMA).map(_accepted).filter(lambda s: s is not None).map(lambda s: cast(ModelDeploymentSpec, s))
)
NAMES = st.from_regex(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", fullmatch=True)


def resource(spec: ModelDeploymentSpec, name: str, generation: int = 1) -> ModelDeployment:
    meta = {"name": name, "namespace": "ml", "uid": "0000-1111", "generation": generation}
    return ModelDeployment.model_validate({"metadata": meta, "spec": spec.to_dict()})


# --------------------------------------------------------------------------- builders


@FUZZ
@given(spec=SPECS, name=NAMES, weight=st.integers(0, 100), mirror=st.integers(0, 100))
def test_builders_make_every_child_of_any_accepted_spec(
    spec: ModelDeploymentSpec, name: str, weight: int, mirror: int
) -> None:
    md = resource(spec, name)
    for version in VERSIONS:
        isvc = build_inference_service(md, version, f"s3://models/{version}")
        hpa = build_hpa(md, version)
        knative = build_knative_inference_service(md, version, f"s3://models/{version}", weight)
        for child in (isvc, hpa, knative):
            json.dumps(child)
            assert child["metadata"]["labels"][LABEL_VERSION] == version
            assert child["metadata"]["ownerReferences"][0]["name"] == name
        assert isvc["metadata"]["name"] == hpa["metadata"]["name"] == f"{name}-v{version}"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    route = build_http_route(md, {"1": 100 - weight, "2": weight}, ("2", mirror))
    json.dumps(route)
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert sum(r["weight"] for r in refs) == 100


# --------------------------------------------------------------------------- the state machine


@dataclass(frozen=True)
class Step:
    """One pass's worth of world: time passing and what the cluster, the registry and the user did."""

    seconds: float
    tracked: str | None
    ready: frozenset[str]
    leftovers: frozenset[str]
    action: str | None
    alert: bool
    spec_changed: bool
    verdicts: tuple[str, ...]
    value: float


def often(common: Any, *rare: Any) -> st.SearchStrategy[Any]:
    """``common`` most of the time, one of ``rare`` now and then: scripts should mostly let a rollout run."""
    return st.sampled_from((common,) * 15 * len(rare) + rare)


STEPS = st.builds(
    Step,
    seconds=st.one_of(st.floats(0, 3), st.floats(0, 120), st.floats(0, 900), st.just(10.0**7)),
    tracked=often("2", "1", "3", None),
    ready=often(frozenset(VERSIONS), frozenset(), frozenset({"1"}), frozenset({"2"})),
    leftovers=often(frozenset(), frozenset({"1"}), frozenset({"2"}), frozenset({"3"})),
    action=often(None, *ACTIONS, "bogus"),
    alert=often(False, True),
    spec_changed=often(False, True),
    verdicts=st.lists(often("Successful", "Failed", "Inconclusive", "Error"), max_size=4).map(tuple),
    value=st.floats(-1e9, 1e9, allow_nan=False),
)
SCRIPTS = st.lists(STEPS, min_size=3, max_size=40)
LEGAL = {(t.source, t.target, t.reason) for t in TRANSITIONS}


def _calm(seconds: float, verdict: str = "Successful", **change: Any) -> Step:
    fields: dict[str, Any] = dict(
        seconds=seconds, tracked="2", ready=frozenset(VERSIONS), leftovers=frozenset(), action=None, alert=False,
        spec_changed=False, verdicts=(verdict,), value=0.5,
    )  # fmt: skip
    return Step(**{**fields, **change})


ERROR_RATE = {"name": "error-rate", "query": 'max(errors{version="{{version}}"})', "max": 1.0}
EXAMPLE_SPECS = {  # always run besides the generated ones: each strategy's longest path
    "canary": {
        "steps": [{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"analysis": {}}, {"mirror": {"percent": 20}},
                  {"setWeight": 50}, {"pause": {}}, {"setWeight": 90}],
        "analysis": {"interval": "10s", "failureLimit": 1, "count": 2, "metrics": [ERROR_RATE]},
    },
    "blueGreen": {"autoPromotionSeconds": 30, "scaleDownDelaySeconds": 60,
                  "prePromotionAnalysis": {"interval": "10s", "count": 2, "metrics": [ERROR_RATE]}},
}  # fmt: skip
EXAMPLE_SCRIPTS = {
    "passes": [_calm(0), *(_calm(31) for _ in range(12)), _calm(1, action="promote"), *(_calm(61) for _ in range(4))],
    "fails": [_calm(0), *(_calm(11, "Failed") for _ in range(8)), _calm(1, tracked="3"), _calm(5, alert=True)],
}


def _example_spec(strategy: str) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "digits", "track": {"alias": "champion"}},
            "strategy": {strategy: EXAMPLE_SPECS[strategy]},
            "rollback": {"alerts": {"alertNames": ["SlipwayModelErrors"]}},
        }
    )


def examples(test: Any) -> Any:
    """Decorate a (spec, script) test with each example spec under each example script."""
    for strategy in EXAMPLE_SPECS:
        for script in EXAMPLE_SCRIPTS.values():
            test = example(spec=_example_spec(strategy), script=script)(test)
    return test


def measurements(state: RolloutState, spec: ModelDeploymentSpec, step: Step, now: datetime) -> tuple[Measurement, ...]:
    config = machine.measurement_due(state, spec, now)
    if config is None or state.canary_version is None:
        return ()
    out = []
    for i, metric in enumerate(config.metrics):
        verdict = step.verdicts[i % len(step.verdicts)] if step.verdicts else "Successful"
        value = None if verdict in ("Inconclusive", "Error") else step.value
        out.append(
            Measurement(metric=metric.name, version=state.canary_version, value=value, phase=verdict, measured_at=now)
        )  # type: ignore[arg-type]
    return tuple(out)


def check_decision(before: RolloutState, decision: Decision) -> None:
    state = decision.state
    if decision.transition is not None:
        arrow = decision.transition
        assert (arrow.source, arrow.target, arrow.reason) in LEGAL
        assert arrow.source == before.phase and arrow.target == state.phase
    else:
        assert state.phase == before.phase, "a hold keeps the phase"
    weights = decision.weights
    if state.stable_version is not None:
        assert sum(weights.values()) == 100 and all(0 <= w <= 100 for w in weights.values()), weights
    assert set(weights) <= decision.keep
    assert decision.requeue_after is None or decision.requeue_after >= 0
    status = state_to_status(state)
    ModelDeploymentStatus.model_validate(_drop_none(status))
    again = state_from_status(json.loads(json.dumps(status)))
    assert state_to_status(again) == status, "the status mapping loses nothing"
    assert again.model_copy(update={"reason": state.reason}) == state or again.phase == state.phase


@FUZZ
@given(spec=SPECS, script=SCRIPTS)
@examples
def test_the_state_machine_never_crashes_and_takes_only_arrows_of_the_table(
    spec: ModelDeploymentSpec, script: list[Step]
) -> None:
    state, now, arrows = RolloutState(), T0, set()
    for i, step in enumerate(script):
        now += timedelta(seconds=step.seconds)
        measured = measurements(state, spec, step, now)
        tracked = "1" if i == 0 else step.tracked  # v1 first, then mostly v2
        obs = Observations(
            now=now,
            tracked_version=tracked,
            tracked_message="" if tracked else "no ModelVersion has the alias",
            ready_versions=step.ready,
            live_versions=desired_versions(state) | step.leftovers,
            action=step.action if step.action in ACTIONS else None,  # type: ignore[arg-type]
            measurements=measured or None,
            alert="SlipwayModelErrors" if step.alert else None,
            spec_changed=step.spec_changed,
        )
        decision = machine.next(state, obs, spec)
        note(f"{state.phase} --{decision.transition.reason if decision.transition else 'hold'}--> {decision.state}")
        check_decision(state, decision)
        machine.seconds_until_measurement(decision.state, spec, now)
        if decision.transition is not None:
            arrows.add(decision.transition)
        state = decision.state
    target(float(len(arrows)), label="distinct arrows of the table taken")  # steer towards longer rollouts


# --------------------------------------------------------------------------- a whole reconcile pass, no I/O


class FakeKube:
    """The few Kube calls a reconcile pass makes, over dicts in memory."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.status_writes: list[dict[str, Any]] = []

    def _matches(self, obj: dict[str, Any], selector: str | None) -> bool:
        if not selector:
            return True
        key, _, value = selector.partition("=")
        return bool((obj["metadata"].get("labels") or {}).get(key) == value)

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None) -> Any:
        return [copy.deepcopy(o) for (k, _, _), o in sorted(self.objects.items()) if k == kind
                and self._matches(o, label_selector)]  # fmt: skip

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Any:
        obj = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    observed_list, observed_get = list, get  # no watch cache here: what the pass observes is read

    def apply(self, manifest: dict[str, Any], *, force: bool = True) -> Any:
        json.dumps(manifest)
        meta = manifest["metadata"]
        self.objects[(manifest["kind"], meta.get("namespace") or "", meta["name"])] = copy.deepcopy(manifest)
        return manifest

    def ensure(self, manifest: dict[str, Any]) -> bool:
        self.apply(manifest)
        return True

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        return self.objects.pop((kind, namespace or "", name), None) is not None

    def check_owned(self, manifests: list[dict[str, Any]], uid: str | None) -> None:
        return None  # only the pass writes here: every object is the deployment's own

    def delete_owned(self, api_version: str, kind: str, name: str, namespace: str | None, uid: str | None) -> bool:
        return self.delete(api_version, kind, name, namespace)

    def patch_status(
        self, api_version: str, kind: str, name: str, namespace: str | None, status: dict[str, Any]
    ) -> Any:
        json.dumps(status)
        self.status_writes.append(copy.deepcopy(status))
        return status


class FakePrometheus:
    """Answers each query from a script: a number, no data, unreachable or a refused query."""

    def __init__(self) -> None:
        self.answers: list[float | Exception] = []

    def query(self, promql: str) -> float:
        answer = self.answers.pop(0) if self.answers else NoData("nothing scripted")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def query_by(self, promql: str, label: str) -> dict[str, float]:
        """A per-class vector (the A/B comparison's prediction shares): one scripted number per class 0..2."""
        return {str(i): self.query(promql) for i in range(3)}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies the operator's status patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


ANSWERS = st.lists(
    st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False),
        st.sampled_from([NoData("empty"), Unreachable("down"), QueryFailed("bad query")]),
    ),
    max_size=4,
)


def tracked_aliases(spec: ModelDeploymentSpec, version: str, step: Step) -> dict[str, Any]:
    """A ModelVersion status that makes ``step.tracked`` the tracked version (by alias, stage or pin)."""
    track = spec.model.track
    hit = step.tracked == version
    status: dict[str, Any] = {"aliases": [track.alias] if hit and track.alias else [], "stage": "None"}
    if hit and track.stage:
        status["stage"] = track.stage
    if version != "3" or step.seconds < 450:  # sometimes a version without a storage URI yet
        status["storageUri"] = f"s3://models/{version}"
    return status


@FUZZ
@given(spec=SPECS, name=NAMES, script=SCRIPTS, answers=ANSWERS)
def test_a_reconcile_pass_never_crashes_and_writes_a_status_the_crd_accepts(
    spec: ModelDeploymentSpec, name: str, script: list[Step], answers: list[float | Exception]
) -> None:
    kube, prom = FakeKube(), FakePrometheus()
    model = sanitise_model_name(spec.model.name)
    pinned = str(spec.model.track.version) if spec.model.track.version is not None else None
    versions = (*VERSIONS, pinned) if pinned and pinned not in VERSIONS else VERSIONS
    body: dict[str, Any] = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": "0000-1111", "generation": 1, "annotations": {}},
        "spec": spec.to_dict(),
    }
    now, phases = T0, set()
    for i, step in enumerate(script):
        now += timedelta(seconds=step.seconds)
        tracked = pinned if pinned else ("1" if i == 0 else step.tracked)
        for v in versions:
            labels = {LABEL_MODEL: model, LABEL_VERSION: v}
            mv = {"apiVersion": "ml.slipway.dev/v1alpha1", "kind": "ModelVersion",
                  "metadata": {"name": f"{model}-v{v}", "namespace": "ml", "labels": labels},
                  "spec": {"model": spec.model.name, "version": v},
                  "status": tracked_aliases(spec, v, replace(step, tracked=tracked))}  # fmt: skip
            kube.apply(mv)
            available = 1000 if v in step.ready else 0
            deployment = {"kind": "Deployment", "metadata": {"name": f"{name}-v{v}-predictor", "namespace": "ml"},
                          "status": {"availableReplicas": available}}  # fmt: skip
            kube.apply(deployment)
        if step.action is not None:
            body["metadata"]["annotations"] = {ACTION_ANNOTATION: step.action}
        if step.spec_changed:
            body["metadata"]["generation"] += 1
        prom.answers = list(answers)
        writes = len(kube.status_writes)
        outcome = reconcile(cast(Kube, kube), cast(Prometheus, prom), copy.deepcopy(body), now)
        if status_changed(body.get("status"), outcome.status):  # the pass wrote it, once
            assert kube.status_writes[writes:] == [outcome.status]
        else:
            assert len(kube.status_writes) == writes
        note(f"{outcome.status.get('phase')}: {outcome.status.get('message')}")
        written = merge_patch(body.get("status") or {}, outcome.status)
        ModelDeploymentStatus.model_validate(_drop_none(written))
        json.dumps(outcome.status)
        body["status"] = written
        body["metadata"]["annotations"] = {}
        assert outcome.requeue_after is None or outcome.requeue_after >= 0
        phases.add(written.get("phase"))
    target(float(len(phases)), label="distinct phases reached")


def test_a_huge_duration_is_refused_or_clamped() -> None:
    raw = {
        "model": {"name": "digits", "track": {"alias": "champion"}},
        "strategy": {
            "canary": {
                "steps": [{"analysis": {}}],
                "analysis": {"interval": "2000000000000m", "metrics": [{"name": "e", "query": "q", "max": 1}]},
            }
        },
    }
    try:
        spec = ModelDeploymentSpec.model_validate(raw)
    except ValidationError:
        return  # refused by the schema: fixed that way
    state = RolloutState(phase="Progressing", stable_version="1", canary_version="2", current_step=0)
    machine.next(state, Observations(now=T0, tracked_version="2"), spec)
    machine.seconds_until_measurement(state, spec, T0)
