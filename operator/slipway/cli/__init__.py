"""The `slipway` command line (also the kubectl plugin `kubectl-slipway`)."""
