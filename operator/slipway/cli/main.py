"""`slipway` / `kubectl slipway`: see and steer rollouts and submit training runs.

Exit codes: 0 success; 1 the cluster refused or failed the request; 2 bad usage or input;
3 the named object does not exist. Errors are one line on stderr.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from slipway.api.names import ACTION_ANNOTATION, API_VERSION
from slipway.clients.kube import KindNotServed, Kube, error_message

app = typer.Typer(name="slipway", help=__doc__, no_args_is_help=True, add_completion=False)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Namespace of the object.")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one clear line and exit with the documented code."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _kube() -> Kube:
    try:
        return Kube()
    except Exception as exc:
        fail(f"cannot reach the cluster: {exc}")


def _get_md(kube: Kube, name: str, namespace: str) -> dict[str, Any]:
    try:
        md = kube.get(API_VERSION, "ModelDeployment", name, namespace)
    except KindNotServed as exc:
        fail(str(exc))
    if md is None:
        fail(f'modeldeployment "{name}" not found in namespace "{namespace}"', EXIT_NOT_FOUND)
    return md


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    secs = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _track(spec: dict[str, Any]) -> str:
    track = spec.get("model", {}).get("track", {})
    for key in ("alias", "stage", "version"):
        if track.get(key):
            return f"{key}={track[key]}"
    return "-"


def _phase_style(phase: str | None) -> str:
    return {
        "Succeeded": "green",
        "Progressing": "yellow",
        "Paused": "cyan",
        "Promoting": "yellow",
        "RollingBack": "red",
        "RolledBack": "red",
    }.get(phase or "", "white")


WATCHED = (("phase", "phase"), ("stableVersion", "stable"), ("canaryVersion", "canary"), ("canaryWeight", "weight"))


def _show(key: str, value: Any) -> str:
    if value is None:
        return "-"
    return f"{value}%" if key == "canaryWeight" else str(value)


def describe_change(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What an action changed in a ModelDeployment's status, one line per field."""
    lines = []
    for key, label in WATCHED:
        old, new = before.get(key), after.get(key)
        if old != new:
            lines.append(f"{label}: {_show(key, old)} → {_show(key, new)}")
    old_blocked = {b["version"] for b in before.get("blockedVersions") or []}
    new_blocked = {b["version"] for b in after.get("blockedVersions") or []}
    lines += [f"blocked: v{v}" for v in sorted(new_blocked - old_blocked)]
    lines += [f"unblocked: v{v}" for v in sorted(old_blocked - new_blocked)]
    return lines


SETTLE_QUIET_SECONDS = 1.0
SETTLE_MAX_SECONDS = 5.0


def _settled_status(kube: Kube, name: str, namespace: str, until: float) -> dict[str, Any]:
    """The status once it has stayed the same for a second (or at ``until``).

    The pass acting on a request writes status, then clears the annotation; a move it starts (the
    next canary weight after a promote) lands in the pass right after, so one read is not enough.
    """
    status = _get_md(kube, name, namespace).get("status") or {}
    quiet_since = time.monotonic()
    while time.monotonic() < until and time.monotonic() - quiet_since < SETTLE_QUIET_SECONDS:
        time.sleep(0.25)
        current = _get_md(kube, name, namespace).get("status") or {}
        if current != status:
            status, quiet_since = current, time.monotonic()
    return status


def _set_action(name: str, namespace: str, action: str, wait: float) -> None:
    kube = _kube()
    before = _get_md(kube, name, namespace).get("status") or {}
    kube.merge_patch(
        API_VERSION, "ModelDeployment", name, namespace, {"metadata": {"annotations": {ACTION_ANNOTATION: action}}}
    )
    out.print(f"modeldeployment/{name}: {action} requested")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        md = _get_md(kube, name, namespace)
        if ACTION_ANNOTATION not in (md["metadata"].get("annotations") or {}):
            after = _settled_status(kube, name, namespace, min(deadline, time.monotonic() + SETTLE_MAX_SECONDS))
            changes = describe_change(before, after)
            out.print("  " + "\n  ".join(changes) if changes else "  no change (see `slipway status` for why)")
            return
        time.sleep(0.25)
    if wait > 0:
        out.print(f"  the operator has not acted within {wait:g}s (is it running?); the request stays in place")


WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds to wait for the operator and print what changed.")]


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="ModelDeployment name; omit for all in the namespace.")] = None,
    namespace: NamespaceOpt = "default",
) -> None:
    """A table of ModelDeployments, or one deployment's state, conditions and rollout timeline."""
    kube = _kube()
    if name is None:
        try:
            items = kube.list(API_VERSION, "ModelDeployment", namespace)
        except KindNotServed as exc:
            fail(str(exc))
        table = Table("NAME", "MODEL", "TRACK", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE")
        for md in items:
            st = md.get("status") or {}
            table.add_row(
                md["metadata"]["name"],
                md["spec"]["model"]["name"],
                _track(md["spec"]),
                st.get("stableVersion") or "-",
                st.get("canaryVersion") or "-",
                f"{st['canaryWeight']}%" if st.get("canaryWeight") is not None else "-",
                f"[{_phase_style(st.get('phase'))}]{st.get('phase') or '-'}[/]",
                _age(md["metadata"].get("creationTimestamp")),
            )
        out.print(table)
        return
    md = _get_md(kube, name, namespace)
    st = md.get("status") or {}
    summary = Table(show_header=False, box=None)
    summary.add_row("Model", f"{md['spec']['model']['name']} ({_track(md['spec'])})")
    why = next((c.get("reason") for c in st.get("conditions") or [] if c.get("type") == "Progressing"), None)
    shown = f" ({why})" if st.get("phase") == "Paused" and why else ""  # e.g. Paused (WaitingForApproval)
    summary.add_row("Phase", f"[{_phase_style(st.get('phase'))}]{st.get('phase') or 'Pending'}[/]{shown}")
    summary.add_row("Stable", st.get("stableVersion") or "-")
    summary.add_row("Canary", f"{st.get('canaryVersion') or '-'}  weight {st.get('canaryWeight') or 0}%")
    if st.get("currentStep") is not None:
        summary.add_row("Step", str(st["currentStep"]))
    if st.get("message"):
        summary.add_row("Message", st["message"])
    blocked = [b["version"] for b in st.get("blockedVersions") or []]
    if blocked:
        summary.add_row("Blocked", ", ".join(blocked))
    out.print(summary)
    if st.get("comparison"):
        out.print(comparison_table(st["comparison"]))
    conds = Table("CONDITION", "STATUS", "REASON", "MESSAGE", title="Conditions")
    for c in st.get("conditions") or []:
        conds.add_row(c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", ""))
    out.print(conds)
    out.print(_timeline(kube, md))


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "ms":
        return f"{value * 1000:.1f}ms"
    return f"{value:.4g}"


def comparison_table(comparison: dict[str, Any]) -> Table:
    """status.comparison of an A/B test: one column per version, the verdict as the caption."""
    variants = comparison.get("variants") or []
    title = f"A/B comparison over {comparison.get('window', '?')}"
    table = Table("", *(f"{v.get('variant')} v{v.get('version')}" for v in variants), title=title)
    rows = (
        ("requests", "requests", "num"),
        ("error rate", "errorRate", "pct"),
        ("p50 latency", "p50LatencySeconds", "ms"),
        ("p99 latency", "p99LatencySeconds", "ms"),
        ("feedback", "feedback", "num"),
        ("accuracy", "accuracy", "pct"),
        ("drift", "drift", "num"),
        (comparison.get("metric") or "criterion", "criterion", "num"),
    )
    for label, key, kind in rows:
        table.add_row(label, *(_fmt(v.get(key), kind) for v in variants))
    top = [sorted((v.get("predictions") or {}).items(), key=lambda kv: -kv[1])[:3] for v in variants]
    table.add_row("top classes", *(", ".join(f"{k}: {p:.0%}" for k, p in t) or "-" for t in top))
    winner = comparison.get("winner")
    table.caption = f"winner {winner}: {comparison.get('message', '')}" if winner else comparison.get("message", "")
    return table


def _timeline(kube: Kube, md: dict[str, Any]) -> Table:
    """Rollout history and the object's events, oldest first."""
    rows: list[tuple[str, str, str]] = []
    for h in (md.get("status") or {}).get("history") or []:
        when = h.get("finishedAt") or h.get("startedAt") or ""
        rows.append(
            (
                when,
                h.get("outcome", ""),
                f"v{h.get('version')} (from v{h.get('previousVersion') or '-'}) {h.get('message') or ''}".strip(),
            )
        )
    meta = md["metadata"]
    events = kube.list("v1", "Event", meta["namespace"])
    for e in events:
        obj = e.get("involved_object") or e.get("involvedObject") or {}
        if obj.get("uid") != meta.get("uid"):
            continue
        when = str(e.get("last_timestamp") or e.get("lastTimestamp") or e.get("event_time") or e.get("eventTime") or "")
        rows.append((when, e.get("reason", ""), e.get("message", "")))
    table = Table("WHEN", "WHAT", "DETAILS", title="Timeline")
    for when, what, details in sorted(rows, key=lambda r: r[0]):
        table.add_row(when, what, details)
    return table


@app.command()
def history(name: str, namespace: NamespaceOpt = "default") -> None:
    """Finished rollouts of a ModelDeployment: version, outcome, reason, when."""
    md = _get_md(_kube(), name, namespace)
    table = Table("VERSION", "FROM", "OUTCOME", "REASON", "STARTED", "FINISHED", "MESSAGE")
    for h in (md.get("status") or {}).get("history") or []:
        table.add_row(
            str(h.get("version")),
            str(h.get("previousVersion") or "-"),
            h.get("outcome", ""),
            h.get("reason") or "",
            h.get("startedAt") or "",
            h.get("finishedAt") or "",
            h.get("message") or "",
        )
    out.print(table)


@app.command()
def promote(
    name: str,
    namespace: NamespaceOpt = "default",
    full: Annotated[bool, typer.Option("--full", help="Skip the remaining steps and analysis.")] = False,
    wait: WaitOpt = 15,
) -> None:
    """Move a paused rollout to its next step (or, with --full, straight to 100%)."""
    _set_action(name, namespace, "promote-full" if full else "promote", wait)


@app.command()
def pause(name: str, namespace: NamespaceOpt = "default", wait: WaitOpt = 15) -> None:
    """Freeze a rollout where it is; traffic stays as it is."""
    _set_action(name, namespace, "pause", wait)


@app.command()
def resume(name: str, namespace: NamespaceOpt = "default", wait: WaitOpt = 15) -> None:
    """Continue a paused rollout."""
    _set_action(name, namespace, "resume", wait)


@app.command()
def abort(name: str, namespace: NamespaceOpt = "default", wait: WaitOpt = 15) -> None:
    """Send all traffic back to the stable version at once and block the canary version."""
    _set_action(name, namespace, "abort", wait)


@app.command()
def retry(name: str, namespace: NamespaceOpt = "default", wait: WaitOpt = 15) -> None:
    """Unblock the rolled-back version and roll it out again."""
    _set_action(name, namespace, "retry", wait)


@app.command(name="plan")
def plan_command(
    file: Annotated[typer.FileText, typer.Argument(help="ModelDeployment YAML (a changed version of one, or new).")],
    namespace: NamespaceOpt = "default",
) -> None:
    """What a ModelDeployment would do — tracked version, steps and traffic, children — without doing it."""
    import yaml
    from pydantic import ValidationError

    from slipway.api.modeldeployment import ModelDeployment
    from slipway.cli.plan import plan
    from slipway.reconcilers.modeldeployment import candidate_tags, resolve, unhonourable
    from slipway.reconcilers.requirements import check

    try:
        body = yaml.safe_load(file.read())
        body.setdefault("metadata", {}).setdefault("namespace", namespace)
        body["metadata"].setdefault("uid", "00000000-0000-0000-0000-000000000000")
        md = ModelDeployment.model_validate(body)
    except (yaml.YAMLError, AttributeError) as exc:
        fail(f"{file.name}: not a YAML object: {exc}", EXIT_USAGE)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{file.name}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}", EXIT_USAGE)
    kube = _kube()
    ns, name = md.metadata.namespace or namespace, md.metadata.name or ""
    try:
        current = kube.get(API_VERSION, "ModelDeployment", name, ns)
        resolved = resolve(kube, md)
        verdict = check(kube, md, resolved.version, resolved.statuses, datetime.now(UTC))
    except KindNotServed as exc:
        fail(str(exc))
    stable = ((current or {}).get("status") or {}).get("stableVersion")
    tags = candidate_tags(resolved, resolved.version)
    result = plan(
        md, unhonourable(md), stable, resolved.version, resolved.message, resolved.storage_uris, verdict, tags
    )
    out.print(f"modeldeployment/{name} in {ns}: {'update' if current else 'create'}")
    if result.invalid:
        out.print(f"  InvalidSpec: {result.invalid} — the operator would touch nothing")
        raise typer.Exit(EXIT_USAGE)
    if result.target is None:
        out.print(f"  waits: {result.waiting}")
        return
    out.print(f"  tracked version: v{result.target}; stable now: {f'v{stable}' if stable else 'none'}")
    if result.requirements is not None:
        verdict_word = "met" if result.requirements_met else "NOT MET"
        out.print(f"  requirements {verdict_word}: {result.requirements}")
    if result.budget:
        split = Table("WHEN", "REPLICAS", title="Budget split (strategy.canary.budget)")
        for when, replicas in result.budget:
            split.add_row(when, replicas)
        out.print(split)
    steps = Table("STEP", "TRAFFIC", title="Rollout")
    for what, traffic in result.traffic:
        steps.add_row(what, traffic)
    out.print(steps)
    kids = Table("KIND", "NAME", "ACTION", title="Children")
    for child in result.children:
        meta = child["metadata"]
        exists = kube.get(child["apiVersion"], child["kind"], meta["name"], ns) is not None
        kids.add_row(child["kind"], meta["name"], "update" if exists else "create")
    out.print(kids)


GATE = re.compile(r"^(?P<metric>[A-Za-z0-9_.\-/]+)\s*(?P<op>>=|<=)\s*(?P<bound>-?[0-9.]+(e-?[0-9]+)?)$")


def parse_gate(text: str) -> dict[str, Any]:
    """`accuracy>=0.9` → {metric: accuracy, min: 0.9}; `loss<=0.2` → {metric: loss, max: 0.2}."""
    m = GATE.match(text.strip())
    if not m:
        raise ValueError(f"--gate {text!r}: expected METRIC>=BOUND or METRIC<=BOUND, e.g. accuracy>=0.9")
    key = "min" if m["op"] == ">=" else "max"
    return {"metric": m["metric"], key: float(m["bound"])}


def parse_param(text: str) -> tuple[str, str]:
    """`epochs=5` → ("epochs", "5")."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param {text!r}: expected NAME=VALUE, e.g. epochs=5")
    return key, value


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="Name of the TrainingRun to create.")],
    model: Annotated[str, typer.Option(help="Register the result as this MLflow model.")],
    namespace: NamespaceOpt = "default",
    framework: Annotated[str, typer.Option(help="pytorch, tensorflow or custom.")] = "pytorch",
    entrypoint: Annotated[str, typer.Option(help="Training module, e.g. digits_cnn.")] = "digits_cnn",
    image: Annotated[str | None, typer.Option(help="Training image (default: the operator's).")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE, repeatable.")] = None,
    gate: Annotated[list[str] | None, typer.Option("--gate", "-g", help="METRIC>=X or METRIC<=X.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Workers (>1: distributed).")] = 1,
    alias: Annotated[str | None, typer.Option(help="Alias to set on the registered version.")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the object, create nothing.")] = False,
) -> None:
    """Submit a TrainingRun from flags."""
    try:
        params = dict(parse_param(p) for p in param or [])
        gates = [parse_gate(g) for g in gate or []]
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    register: dict[str, Any] = {"model": model}
    if gates:
        register["gates"] = gates
    if alias:
        register["alias"] = alias
    spec: dict[str, Any] = {"framework": framework, "entrypoint": entrypoint, "workers": workers, "register": register}
    if params:
        spec["params"] = params
    if image:
        spec["image"] = image
    if experiment:
        spec["experiment"] = experiment
    body = {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    if dry_run:
        import yaml

        out.print(yaml.safe_dump(body, sort_keys=False), highlight=False)
        return
    kube = _kube()
    try:
        kube.create(body)
    except KindNotServed as exc:
        fail(str(exc))
    except Exception as exc:
        fail(error_message(exc), EXIT_USAGE if getattr(exc, "status", 0) in (400, 422) else EXIT_FAILED)
    out.print(f"trainingrun/{name} created")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
