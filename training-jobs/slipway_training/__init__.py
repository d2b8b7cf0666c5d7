"""Slipway's training entry points (``python -m slipway_training.digits_cnn`` / ``digits_keras``).

Importing the package imports nothing heavy: ``config``, ``launch`` and ``topology`` use only the
standard library, so the operator can import them without torch or TensorFlow.
"""
