"""Slipway's model server: a KServe runtime with input validation, metrics and drift detection."""

__all__ = ["__version__"]

__version__ = "0.1.0"
