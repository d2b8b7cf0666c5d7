"""What runs on the test bed's control plane: KServe, the Gateway, S3, MLflow, Prometheus and Alertmanager."""
