"""kopf decorators only: the glue between events and reconcilers (importing this registers them)."""

from slipway.handlers import modeldeployment, modelversion, startup, trainingrun

__all__ = ["modeldeployment", "modelversion", "startup", "trainingrun"]
