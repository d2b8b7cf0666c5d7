"""The runtime's collector tuning: pauses are measured per generation, start-up's heap is frozen out of collections."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from slipway import runtime


def _count(generation: str) -> float:
    return REGISTRY.get_sample_value("slipway_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_every_collection_is_timed_by_generation() -> None:
    runtime.measure_pauses()
    runtime.measure_pauses()  # once only: a second call adds no second callback
    assert gc.callbacks.count(runtime._on_collection) == 1
    before = _count("2")
    gc.collect()
    assert _count("2") == before + 1
    before = _count("0")
    gc.collect(0)
    assert _count("0") == before + 1


def test_the_heap_alive_now_is_left_out_of_later_collections() -> None:
    kept = [[i] for i in range(1000)]  # containers alive now: frozen with the rest
    try:
        frozen = runtime.freeze_heap()
        assert frozen >= len(kept) and gc.get_freeze_count() == frozen
        assert all(len(gc.get_objects(generation)) < frozen for generation in range(3))
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
