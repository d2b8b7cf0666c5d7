"""The local test bed: a real Kubernetes control plane, kwok nodes, KServe, a Gateway, MLflow, Prometheus, Alertmanager.

``hack/testbed up [--with mlflow,prometheus]``, ``down``, ``status``, ``build``, ``env`` (see
:mod:`bed.cli`). Everything it starts runs as a local process on 127.0.0.1 and is recorded, with
its pid and ports, in ``$SLIPWAY_TESTBED_DIR/state.json`` (default ``.testbed/`` in the
repository), so ``down`` stops exactly what ``up`` started. The Kubernetes binaries are built from
the Go module proxy on first use (wrapper modules in ``hack/kube`` and ``hack/etcd``) and cached by
version under ``$SLIPWAY_CACHE_DIR`` (default ``~/.cache/slipway``); the real KServe and Gateway
API CRDs and kwok's stages are read out of their Go modules.

One module per concern:

- :mod:`bed.base`: the repository's paths, the error type and the progress log;
- :mod:`bed.state`: the ``State`` saved as ``state.json`` and the folder it lives in;
- :mod:`bed.procs`: the processes it starts (spawn, identity, readiness waits, ports);
- :mod:`bed.builds`: Go builds of every binary and the version-keyed cache;
- :mod:`bed.pki`: the CA, certificates and kubeconfigs;
- :mod:`bed.controlplane`: etcd, kube-apiserver, controller-manager, scheduler, kwok, the local kubelet;
- :mod:`bed.addons`: KServe, the Gateway (Traefik), S3 (versitygw), MLflow, Prometheus and Alertmanager;
- :mod:`bed.lifecycle`: ``up``, ``down``, ``restart`` of the whole;
- :mod:`bed.cli`: the ``hack/testbed`` command line.

The package uses only the standard library, so it runs before any virtualenv exists; the pytest
fixtures in ``tests/conftest.py`` import it (with ``hack/`` on ``sys.path``).
"""
