"""Slipway: train ML models, mirror the MLflow registry and roll models out on KServe."""
