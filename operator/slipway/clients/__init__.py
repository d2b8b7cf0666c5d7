"""The only code that does I/O: Kubernetes, MLflow, Prometheus and Alertmanager clients."""
