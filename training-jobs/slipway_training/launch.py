"""What the operator puts into a training pod: container args, torchrun PET_* env, TF_CONFIG.

Pure functions, standard library only: the operator imports this module without torch or
TensorFlow installed.

For ``workers > 1`` the operator runs an Indexed Job (``completionMode: Indexed``) with a headless
Service named ``service_name`` and ``spec.template.spec.subdomain: <service_name>``, so pod ``i``
is reachable as ``<job_name>-<i>.<service_name>``. Every pod shares one template, so the
per-pod part of the environment (the node rank, the TF task index) comes from the Downward API:
the Job controller annotates each pod with ``batch.kubernetes.io/job-completion-index``.

- PyTorch: the container runs ``python -m torch.distributed.run -m slipway_training.<entry>``;
  torchrun reads each flag from ``PET_<FLAG>`` (:func:`torchrun_env`): static rendezvous on pod 0
  at ``PET_MASTER_ADDR:PET_MASTER_PORT``, ``PET_NODE_RANK`` from the completion index.
- TensorFlow: ``TF_CONFIG`` lists every worker's address; its task index is spliced in by the
  kubelet's ``$(VAR)`` expansion of an earlier env var that holds the completion index
  (:func:`tf_config_env`). Worker 0 is the chief.

:func:`resolve_env` expands such an env list the way the kubelet would, for a given index: the
tests use it to run the entry points as a pod would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .config import param_env

PACKAGE = "slipway_training"
ENTRYPOINTS = ("digits_cnn", "digits_keras")
JOB_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_INDEX_FIELD_PATH = f"metadata.annotations['{JOB_INDEX_ANNOTATION}']"
INDEX_ENV = "SLIPWAY_WORKER_INDEX"
DEFAULT_TORCH_PORT = 29500
DEFAULT_TF_PORT = 2222

EnvVar = dict[str, Any]


def entry_module(entrypoint: str) -> str:
    """``digits_cnn`` -> ``slipway_training.digits_cnn``; a dotted name is kept as it is."""
    return entrypoint if "." in entrypoint else f"{PACKAGE}.{entrypoint}"


def container_args(entrypoint: str, *, torchrun: bool, extra: Sequence[str] = ()) -> list[str]:
    """Args after the image's ``ENTRYPOINT ["python", "-m"]``.

    ``torchrun=True`` (PyTorch, several workers) wraps the module in ``torch.distributed.run``,
    which takes its flags from the ``PET_*`` env of :func:`torchrun_env`.
    """
    module = entry_module(entrypoint)
    head = ["torch.distributed.run", "--module", module] if torchrun else [module]
    return [*head, *extra]


def worker_host(job_name: str, service_name: str, index: int, namespace: str | None = None) -> str:
    """DNS name of worker ``index`` of an Indexed Job behind a headless Service."""
    host = f"{job_name}-{index}.{service_name}"
    return f"{host}.{namespace}.svc" if namespace else host


def tf_config(
    job_name: str,
    service_name: str,
    workers: int,
    index: int,
    port: int = DEFAULT_TF_PORT,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The ``TF_CONFIG`` of worker ``index``: every worker's ``host:port``, this task's index."""
    _check_workers(workers)
    if not 0 <= index < workers:
        raise ValueError(f"index {index} out of range for {workers} workers")
    return {
        "cluster": {"worker": [f"{worker_host(job_name, service_name, i, namespace)}:{port}" for i in range(workers)]},
        "task": {"type": "worker", "index": index},
    }


def index_env_var(name: str = INDEX_ENV) -> EnvVar:
    """An env var holding the pod's completion index, from the Downward API."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": JOB_INDEX_FIELD_PATH}}}


def tf_config_env(
    job_name: str,
    service_name: str,
    workers: int,
    port: int = DEFAULT_TF_PORT,
    namespace: str | None = None,
) -> list[EnvVar]:
    """Pod-template env for TensorFlow workers: the index var, then ``TF_CONFIG`` that uses it.

    The kubelet replaces ``$(SLIPWAY_WORKER_INDEX)`` inside ``TF_CONFIG`` with the index because
    that var is defined earlier in the list: keep the order.
    """
    template = tf_config(job_name, service_name, workers, 0, port, namespace)
    marker = "__SLIPWAY_INDEX__"
    template["task"]["index"] = marker
    value = json.dumps(template, separators=(",", ":")).replace(f'"{marker}"', f"$({INDEX_ENV})")
    return [index_env_var(), {"name": "TF_CONFIG", "value": value}]


def torchrun_env(
    job_name: str,
    service_name: str,
    workers: int,
    port: int = DEFAULT_TORCH_PORT,
    nproc_per_node: int = 1,
    namespace: str | None = None,
) -> list[EnvVar]:
    """Pod-template env for torchrun on an Indexed Job (static rendezvous on pod 0).

    torchrun then sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` for each process it starts. ``PET_MAX_RESTARTS=0``: a failed worker fails its
    pod, and the Job's failure policy decides what happens next.
    """
    _check_workers(workers)
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [
        {"name": "PET_NNODES", "value": str(workers)},
        {"name": "PET_NPROC_PER_NODE", "value": str(nproc_per_node)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": JOB_INDEX_FIELD_PATH}}},
        {"name": "PET_MASTER_ADDR", "value": worker_host(job_name, service_name, 0, namespace)},
        {"name": "PET_MASTER_PORT", "value": str(port)},
        {"name": "PET_MAX_RESTARTS", "value": "0"},
    ]


def params_env(params: Mapping[str, str]) -> list[EnvVar]:
    """Pod env carrying a TrainingRun's ``spec.params`` as ``SLIPWAY_PARAM_<NAME>`` (sorted)."""
    return [{"name": k, "value": v} for k, v in sorted(param_env(params).items())]


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def resolve_env(env: Sequence[Mapping[str, Any]], index: int = 0) -> dict[str, str]:
    """The environment a container would see, as the kubelet builds it, for completion ``index``.

    Supports literal values with ``$(VAR)`` expansion of earlier vars (``$$`` escapes a ``$``;
    unknown references stay as they are) and ``fieldRef`` to the completion-index annotation.
    Other ``valueFrom`` sources raise ``ValueError``.
    """
    out: dict[str, str] = {}
    for var in env:
        name = str(var["name"])
        if "valueFrom" in var:
            path = var["valueFrom"].get("fieldRef", {}).get("fieldPath")
            if path != JOB_INDEX_FIELD_PATH:
                raise ValueError(f"env {name}: unsupported valueFrom {var['valueFrom']!r}")
            out[name] = str(index)
            continue
        out[name] = _expand(str(var.get("value", "")), out)
    return out


def _expand(value: str, seen: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        return "$" if m.group(0) == "$$" else seen.get(m.group(1), m.group(0))

    return _REF.sub(one, value)
