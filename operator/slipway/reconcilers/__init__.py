"""Observe, build, diff, apply and write status: one reconciler per kind."""
