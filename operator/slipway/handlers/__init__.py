"""kopf decorators only: the glue between events and reconcilers (importing this registers them)."""

from slipway.handlers import (
    alerts,
    modeldeployment,
    modelversion,
    notifications,
    rbac,
    startup,
    trainingrun,
    watch_cache,
)

__all__ = [
    "alerts",
    "modeldeployment",
    "modelversion",
    "notifications",
    "rbac",
    "startup",
    "trainingrun",
    "watch_cache",
]
