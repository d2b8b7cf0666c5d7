"""Inbound I/O: the operator's HTTP server for webhooks (MLflow, Alertmanager), metrics and health."""
