# Slipway's entry points. Every target does its own set-up (cached outside the clone).
.PHONY: setup test lint unit integration demo testbed-up testbed-down crds lock

setup:            ## install everything: apt packages, the virtualenv, the test bed's binaries
	hack/setup

test:             ## the whole suite: lint, types, layering, unit and integration tests on the real test bed
	hack/test

lint:             ## ruff, mypy and import-linter only
	hack/test --lint-only

demo:             ## the local demo on the embedded test bed
	hack/demo

testbed-up:       ## start the test bed with MLflow, Prometheus and Alertmanager
	hack/testbed up --with mlflow,prometheus

testbed-down:
	hack/testbed down

crds:             ## regenerate crds/ and the chart's copy from the pydantic models
	hack/gen-crds

lock:             ## re-resolve constraints.txt
	hack/lock
