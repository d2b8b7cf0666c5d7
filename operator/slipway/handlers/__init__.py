"""kopf decorators only: the glue between events and reconcilers."""
