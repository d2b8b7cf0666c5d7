"""kopf glue for notifications: start the notifier after startup.configure, stop it at shutdown."""

from __future__ import annotations

from typing import Any

import kopf

from slipway.reconcilers import notifier


@kopf.on.startup()
async def start_notifier(memo: Any, **_: Any) -> None:
    """One Notifier for the process; the places that post events hand them to it (reconcilers.notifier.notify)."""
    if "kube" not in memo or "settings" not in memo:
        raise kopf.TemporaryError("waiting for startup.configure", delay=0.1)
    memo.notifier = notifier.Notifier(memo.kube, memo.settings)
    await memo.notifier.start()
    notifier.install(memo.notifier)


@kopf.on.cleanup()
async def stop_notifier(memo: Any, **_: Any) -> None:
    """Stop the notifier's workers."""
    running: notifier.Notifier | None = getattr(memo, "notifier", None)
    notifier.install(None)
    if running is not None:
        await running.stop()
