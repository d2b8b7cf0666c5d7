"""The operator process's garbage collector: start-up's heap frozen out of collections, and its pauses measured.

Python's cyclic collector stops every thread while it runs, and a full (generation 2)
collection walks every container object the process holds. Measured on the test bed, the
operator holds about 250,000 after start-up (kopf, the kubernetes client, pydantic's schemas,
the modules themselves) and each full collection then took 150-940 ms on two loaded cores:
an alert that arrived meanwhile waited that long for its route write. Those objects live as
long as the process, so once start-up is done they are frozen (:func:`gc.freeze`): later
collections skip them. The pauses are exported as ``slipway_gc_pause_seconds{generation}``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import prometheus_client

GC_PAUSE = prometheus_client.Histogram(
    "slipway_gc_pause_seconds",
    "Python's cyclic garbage collections, by generation (every thread of the operator waits meanwhile).",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_started: list[float] = []


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    """gc's callback: time each collection (they do not nest: the collector runs holding the GIL)."""
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        GC_PAUSE.labels(str(info.get("generation", ""))).observe(time.perf_counter() - _started.pop())


def measure_pauses() -> None:
    """Export every collection's pause (idempotent)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def freeze_heap() -> int:
    """Collect once, then keep everything alive now out of all later collections; returns how many objects that is."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
