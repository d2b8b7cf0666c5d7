"""kopf decorators only: the glue between events and reconcilers (importing this registers them)."""

from slipway.handlers import startup

__all__ = ["startup"]
