"""The Job (and, for several workers, the headless Service) that runs one TrainingRun.

One worker: a plain Job with one pod. Several workers: an Indexed Job (``completionMode:
Indexed``, one pod per index, pod ``i`` has hostname ``<job>-<i>``) plus a headless Service
with ``publishNotReadyAddresses: true`` named like the Job and set as the pods' ``subdomain``, so
``<job>-<i>.<service>`` resolves before any pod is ready. The per-pod part of the environment
comes from the completion-index annotation through the Downward API (see
:mod:`slipway_training.launch`): torchrun's ``PET_*`` variables with a static rendezvous on pod
0 for PyTorch, ``TF_CONFIG`` listing every pod for TensorFlow.

Failure handling is the Job controller's:

- ``podFailurePolicy``: exit code 2 of a Slipway entry point (a bad parameter,
  :data:`slipway_training.config.CONFIG_ERROR_EXIT_CODE`) or 42 of a custom command
  (:data:`CUSTOM_PERMANENT_EXIT_CODE`) fails the Job at once — retrying a bad spec is pointless;
  a pod disrupted by the cluster (``DisruptionTarget``: preemption, eviction, node drain) is
  replaced without counting against the retries. Under torchrun a worker's exit code is hidden
  behind torchrun's own (1), so only the retries apply there;
- retries: ``backoffLimit`` for one worker, ``backoffLimitPerIndex`` with ``maxFailedIndexes: 0``
  for several (a distributed run cannot do without a worker); ``podReplacementPolicy: Failed``
  so a replacement never races its predecessor for the rendezvous;
- ``successPolicy``: the Job succeeds when the leader (index 0, the rank that logs to MLflow)
  does; ``activeDeadlineSeconds`` from ``spec.deadlineSeconds``.

The container runs an explicit ``python -m …`` command (not the image's ENTRYPOINT), with
``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID`` (the run the operator created first),
``MLFLOW_EXPERIMENT_NAME`` and ``SLIPWAY_PARAM_<NAME>`` per parameter; the user's ``spec.env``
comes first and the operator's variables win over it. GPUs (``nvidia.com/gpu`` in the
resources) add a toleration of the ``nvidia.com/gpu`` taint and, under torchrun, one process per
GPU. Every child carries the ``ml.slipway.dev/trainingrun`` label and a controller owner
reference to the TrainingRun, so deleting the run deletes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slipway.api.names import LABEL_MANAGED_BY, MANAGED_BY
from slipway.api.names import LABEL_TRAININGRUN as LABEL_TRAININGRUN
from slipway.api.names import RUN_ID_ANNOTATION as RUN_ID_ANNOTATION
from slipway.api.trainingrun import TrainingRun
from slipway_training import launch
from slipway_training.config import CONFIG_ERROR_EXIT_CODE

DEFAULT_IMAGE = "ghcr.io/slipway-dev/slipway-training:0.1.0"
CONTAINER = "trainer"
GPU = "nvidia.com/gpu"
CUSTOM_PERMANENT_EXIT_CODE = 42
TORCH_PORT = launch.DEFAULT_TORCH_PORT
TF_PORT = launch.DEFAULT_TF_PORT
OPERATOR_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")

Manifest = dict[str, Any]


@dataclass(frozen=True)
class RunTarget:
    """Where the training logs: the MLflow server and the run the operator created for it."""

    tracking_uri: str
    run_id: str
    experiment: str


def job_name(tr: TrainingRun) -> str:
    """The Job of a TrainingRun: named like it (the API caps the name so pod hostnames fit)."""
    return tr.metadata.name or ""


def service_name(tr: TrainingRun) -> str:
    """The headless Service of a distributed run: named like the Job."""
    return job_name(tr)


def experiment_name(tr: TrainingRun) -> str:
    """The MLflow experiment of a run: ``spec.experiment``, else the TrainingRun's namespace."""
    return tr.spec.experiment or tr.metadata.namespace or "default"


def gpu_count(tr: TrainingRun) -> int:
    """GPUs per worker, from ``nvidia.com/gpu`` under limits (else requests)."""
    res = tr.spec.resources
    if res is None:
        return 0
    raw = (res.limits or {}).get(GPU, (res.requests or {}).get(GPU, 0))
    try:
        return int(str(raw))
    except ValueError:
        return 0


def labels(tr: TrainingRun) -> dict[str, str]:
    """Labels of the Job, its pods and its Service (the local kubelet of the test bed selects on the first)."""
    return {LABEL_TRAININGRUN: tr.metadata.name or "", LABEL_MANAGED_BY: MANAGED_BY}


def owner_reference(tr: TrainingRun) -> dict[str, Any]:
    """The controller owner reference to the TrainingRun (children are garbage-collected with it)."""
    return {
        "apiVersion": tr.api_version,
        "kind": tr.kind,
        "name": tr.metadata.name,
        "uid": tr.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(tr: TrainingRun, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": tr.metadata.namespace,
        "labels": labels(tr),
        "ownerReferences": [owner_reference(tr)],
    }


def _distributed(tr: TrainingRun) -> bool:
    return tr.spec.workers > 1


def _torchrun(tr: TrainingRun) -> bool:
    return tr.spec.framework == "pytorch" and _distributed(tr) and tr.spec.command is None


def _port(tr: TrainingRun) -> int | None:
    if tr.spec.framework == "pytorch":
        return TORCH_PORT
    if tr.spec.framework == "tensorflow":
        return TF_PORT
    return None


def command(tr: TrainingRun) -> list[str]:
    """The container command: ``spec.command``, or ``python -m`` the entry point (under torchrun if distributed)."""
    if tr.spec.command is not None:
        return list(tr.spec.command)
    return ["python", "-m", *launch.container_args(tr.spec.entrypoint or "", torchrun=_torchrun(tr))]


def _distributed_env(tr: TrainingRun) -> list[dict[str, Any]]:
    if not _distributed(tr):
        return []
    name, svc, workers = job_name(tr), service_name(tr), tr.spec.workers
    if tr.spec.framework == "pytorch":
        return launch.torchrun_env(name, svc, workers, TORCH_PORT, nproc_per_node=max(1, gpu_count(tr)))
    if tr.spec.framework == "tensorflow":
        return launch.tf_config_env(name, svc, workers, TF_PORT)
    return [launch.index_env_var()]


def env(tr: TrainingRun, run: RunTarget) -> list[dict[str, Any]]:
    """The container env: the user's ``spec.env``, then MLflow, parameters and the distributed wiring (ours win)."""
    ours: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": run.tracking_uri},
        {"name": "MLFLOW_RUN_ID", "value": run.run_id},
        {"name": "MLFLOW_EXPERIMENT_NAME", "value": run.experiment},
        *launch.params_env(tr.spec.params),
        *_distributed_env(tr),
    ]
    taken = {str(e["name"]) for e in ours}
    users = [{"name": e.name, "value": e.value} for e in tr.spec.env or [] if e.name not in taken]
    return [*users, *ours]


def _tolerations(tr: TrainingRun) -> list[dict[str, Any]]:
    out = [t.to_dict() for t in tr.spec.tolerations or []]
    tolerated = any(t.get("key") == GPU or (t.get("key") is None and t.get("operator") == "Exists") for t in out)
    if gpu_count(tr) > 0 and not tolerated:
        out.append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    return out


def _pod_failure_policy(tr: TrainingRun) -> dict[str, Any]:
    code = CUSTOM_PERMANENT_EXIT_CODE if tr.spec.command is not None else CONFIG_ERROR_EXIT_CODE
    return {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [code]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _container(tr: TrainingRun, run: RunTarget, default_image: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": tr.spec.image or default_image,
        "command": command(tr),
    }
    if tr.spec.args:
        container["args"] = list(tr.spec.args)
    container["env"] = env(tr, run)
    port = _port(tr)
    if _distributed(tr) and port is not None:
        container["ports"] = [{"name": "rendezvous", "containerPort": port, "protocol": "TCP"}]
    if tr.spec.resources is not None:
        container["resources"] = tr.spec.resources.to_dict()
    container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return container


def _pod_spec(tr: TrainingRun, run: RunTarget, default_image: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"restartPolicy": "Never", "enableServiceLinks": False}
    if _distributed(tr):
        spec["subdomain"] = service_name(tr)
    if tr.spec.node_selector:
        spec["nodeSelector"] = dict(tr.spec.node_selector)
    tolerations = _tolerations(tr)
    if tolerations:
        spec["tolerations"] = tolerations
    security: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if tr.spec.image is None:
        security["runAsNonRoot"] = True  # the Slipway training image runs as 65532
    spec["securityContext"] = security
    spec["containers"] = [_container(tr, run, default_image)]
    return spec


def build_job(tr: TrainingRun, run: RunTarget, *, default_image: str = DEFAULT_IMAGE) -> Manifest:
    """The batch/v1 Job running the training (an Indexed Job for several workers)."""
    workers = tr.spec.workers
    meta = _metadata(tr, job_name(tr))
    meta["annotations"] = {RUN_ID_ANNOTATION: run.run_id}
    spec: dict[str, Any] = {"completions": workers, "parallelism": workers}
    if _distributed(tr):
        spec.update(
            completionMode="Indexed",
            backoffLimitPerIndex=tr.spec.backoff_limit,
            maxFailedIndexes=0,
            successPolicy={"rules": [{"succeededIndexes": "0", "succeededCount": 1}]},
        )
    else:
        spec["backoffLimit"] = tr.spec.backoff_limit
    spec.update(
        activeDeadlineSeconds=tr.spec.deadline_seconds,
        podReplacementPolicy="Failed",
        podFailurePolicy=_pod_failure_policy(tr),
        template={"metadata": {"labels": labels(tr)}, "spec": _pod_spec(tr, run, default_image)},
    )
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def build_service(tr: TrainingRun) -> Manifest | None:
    """The headless Service giving each worker of a distributed run a stable DNS name; None for one worker."""
    if not _distributed(tr):
        return None
    spec: dict[str, Any] = {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {LABEL_TRAININGRUN: tr.metadata.name or ""},
    }
    port = _port(tr)
    if port is not None:
        spec["ports"] = [{"name": "rendezvous", "port": port, "targetPort": port, "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(tr, service_name(tr)), "spec": spec}


def build_children(tr: TrainingRun, run: RunTarget, *, default_image: str = DEFAULT_IMAGE) -> list[Manifest]:
    """Everything to apply, in order: the Service first (so names resolve when pods start), then the Job."""
    service = build_service(tr)
    job = build_job(tr, run, default_image=default_image)
    return [service, job] if service is not None else [job]
