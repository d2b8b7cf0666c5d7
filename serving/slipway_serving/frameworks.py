"""Framework adapters: each loaded artifact becomes a numpy-in, numpy-out predict function."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


def configure_torch_threads(threads: int) -> None:
    """Pin torch's intra- and inter-op pools (1 keeps a server responsive on a shared node)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or parallel work already started
        log.debug("torch inter-op threads already fixed")


def thread_initializer(threads: int) -> Callable[[], None]:
    """What each model thread runs first: the torch thread settings, when torch is in use."""

    def initialize() -> None:
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)

    return initialize


def torch_predict(module: Any) -> Predict:
    """Wrap an ``nn.Module`` or TorchScript module: eval mode, inference mode, CPU numpy out."""
    import torch

    try:
        module.eval()
    except (NotImplementedError, RuntimeError):  # torch.export modules refuse eval()/train()
        log.debug("module %s has no eval mode", type(module).__name__)
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    float_dtype = param.dtype if param is not None and param.is_floating_point() else None
    device = param.device if param is not None else torch.device("cpu")

    def predict(batch: np.ndarray) -> np.ndarray:
        if float_dtype is not None and batch.dtype.kind == "f":
            tensor = torch.as_tensor(batch, dtype=float_dtype, device=device)
        else:
            tensor = torch.as_tensor(batch, device=device)
        with torch.inference_mode():
            out = module(tensor)
        return _to_numpy(out)

    return predict


def load_torchscript(path: Path) -> Predict:
    """A TorchScript file (``torch.jit.save``)."""
    import torch

    return torch_predict(torch.jit.load(str(path), map_location="cpu"))  # type: ignore[no-untyped-call]


def tensorflow_predict(model: Any) -> Predict:
    """Wrap a Keras model, or a SavedModel's ``serving_default`` signature."""
    import tensorflow as tf

    if hasattr(model, "predict_on_batch"):

        def predict_keras(batch: np.ndarray) -> np.ndarray:
            return _to_numpy(model(batch, training=False))

        return predict_keras
    signature = model.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()
    input_dtype = signature.structured_input_signature[1][input_name].dtype

    def predict_saved_model(batch: np.ndarray) -> np.ndarray:
        out = signature(**{input_name: tf.constant(batch, dtype=input_dtype)})
        return _to_numpy(out)

    return predict_saved_model


def load_saved_model(path: Path) -> Predict:
    """A TensorFlow SavedModel directory, or a Keras ``.keras``/``.h5`` file."""
    import tensorflow as tf

    if path.is_file():
        return tensorflow_predict(tf.keras.models.load_model(str(path)))
    return tensorflow_predict(tf.saved_model.load(str(path)))


def pyfunc_predict(model: Any, columns: tuple[str, ...] | None) -> Predict:
    """Wrap an ``mlflow.pyfunc`` model; column signatures get a DataFrame."""

    def predict(batch: np.ndarray) -> np.ndarray:
        if columns is not None:
            import pandas as pd  # type: ignore[import-untyped]

            return _to_numpy(model.predict(pd.DataFrame(batch, columns=list(columns))))
        return _to_numpy(model.predict(batch))

    return predict


def _to_numpy(out: Any) -> np.ndarray:
    """Tensors, arrays, DataFrames, or a single-entry tuple/list/dict of them, as numpy."""
    if isinstance(out, dict):
        if len(out) != 1:
            raise TypeError(f"the model returned {len(out)} named outputs; one is served")
        out = next(iter(out.values()))
    if isinstance(out, tuple | list) and out and not isinstance(out[0], int | float):
        out = out[0]
    if hasattr(out, "detach"):  # torch.Tensor
        return np.asarray(out.detach().cpu().numpy())
    if hasattr(out, "to_numpy"):  # pandas
        return np.asarray(out.to_numpy())
    if hasattr(out, "numpy"):  # tf.Tensor
        return np.asarray(out.numpy())
    return np.asarray(out)
