"""kopf decorators only: the glue between events and reconcilers (importing this registers them)."""

from slipway.handlers import alerts, modeldeployment, modelversion, startup, trainingrun

__all__ = ["alerts", "modeldeployment", "modelversion", "startup", "trainingrun"]
