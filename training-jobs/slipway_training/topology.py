"""Where this process sits in a distributed run, from torchrun's env or ``TF_CONFIG``.

Standard library only; the framework-specific setup (process groups, strategies) lives in
``torch_net`` and ``keras_net``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


class TopologyError(ValueError):
    """The distributed environment is inconsistent (e.g. ``RANK`` >= ``WORLD_SIZE``)."""


@dataclass(frozen=True)
class Topology:
    """World size and ranks of this process; rank 0 (the chief) is the one that logs."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise TopologyError(f"{name}={raw!r} is not an integer") from None


def torch_topology(environ: Mapping[str, str]) -> Topology:
    """From torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; a single process when unset."""
    world = _int(environ, "WORLD_SIZE", 1)
    rank = _int(environ, "RANK", 0)
    local = _int(environ, "LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise TopologyError(f"inconsistent WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local}")
    if world > 1 and not (environ.get("MASTER_ADDR") and environ.get("MASTER_PORT")):
        raise TopologyError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (run under torchrun)")
    return Topology(world, rank, local)


def tf_topology(environ: Mapping[str, str]) -> Topology:
    """From ``TF_CONFIG``: the chief (a ``chief`` task, else worker 0) is rank 0.

    Without ``TF_CONFIG``, or with a single task, this is a single process.
    """
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return Topology()
    try:
        conf = json.loads(raw)
        cluster = conf.get("cluster", {})
        chiefs = list(cluster.get("chief", []))
        workers = list(cluster.get("worker", []))
        task_type = str(conf.get("task", {}).get("type", "worker"))
        index = int(conf.get("task", {}).get("index", 0))
    except (ValueError, TypeError, AttributeError) as e:
        raise TopologyError(f"TF_CONFIG is not valid: {e}") from None
    world = len(chiefs) + len(workers)
    if world == 0:
        return Topology()
    if task_type == "chief":
        rank = index
    elif task_type == "worker":
        rank = len(chiefs) + index
    else:
        raise TopologyError(f"TF_CONFIG task type {task_type!r} is not chief or worker")
    pool = chiefs if task_type == "chief" else workers
    if not 0 <= index < len(pool):
        raise TopologyError(f"TF_CONFIG task index {index} out of range for {len(pool)} {task_type}s")
    return Topology(world, rank, 0)
