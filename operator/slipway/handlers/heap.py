"""kopf glue of the runtime's tuning: once every other start-up handler is done, freeze the heap they built."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from slipway import runtime


@kopf.on.startup()
async def freeze_heap(logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Time the collections and take start-up's objects out of them (see :mod:`slipway.runtime`)."""
    runtime.measure_pauses()
    frozen = runtime.freeze_heap()
    logger.info("start-up heap frozen: %d objects left out of garbage collections", frozen)
