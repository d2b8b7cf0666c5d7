"""The loader on real artifacts of each flavour: pyfunc (scikit-learn), TorchScript, TensorFlow.

In-process (no server): each artifact is saved by its framework or by MLflow, loaded by
``slipway_serving.loader``, and must predict what the framework itself predicts, with the
signature turned into the input spec validation uses. TensorFlow is skipped when not installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slipway_serving import loader
from slipway_serving.config import ServingConfig
from slipway_serving.errors import ModelLoadError
from slipway_serving.model import SlipwayModel
from slipway_serving.validation import conform

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


def test_sklearn_pyfunc_with_column_signature(tmp_path: Path, digits):
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    frame = pd.DataFrame(x[:400], columns=[f"p{i}" for i in range(64)])
    clf = LogisticRegression(max_iter=300).fit(frame, y[:400])
    mlflow.sklearn.save_model(
        clf, str(tmp_path / "m"), signature=infer_signature(frame, clf.predict(frame)), input_example=frame[:2]
    )
    loaded = loader.load(str(tmp_path / "m"))
    assert loaded.flavor == "pyfunc"
    assert loaded.input_spec is not None and loaded.input_spec.columns == tuple(frame.columns)
    assert loaded.input_example is not None and loaded.input_example.shape == (2, 64)
    rows = conform(x[400:420].astype(np.float64), loaded.input_spec, what="rows")  # as validation does
    assert rows.dtype == np.float32
    assert loaded.predict(rows).tolist() == clf.predict(pd.DataFrame(rows, columns=frame.columns)).tolist()


def test_torchscript_file(tmp_path: Path, digits):
    import torch

    x, _ = digits
    net = torch.nn.Sequential(torch.nn.Linear(64, 10), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    loaded = loader.load(path.as_uri())
    assert loaded.flavor == "torchscript" and loaded.input_spec is None
    with torch.no_grad():
        expected = net(torch.from_numpy(x[:5])).numpy()
    assert np.allclose(loaded.predict(x[:5]), expected, atol=1e-6)


def test_tensorflow_flavour_savedmodel_and_keras_file(tmp_path: Path, digits):
    pytest.importorskip("tensorflow")
    import keras
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    x, _ = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    expected = model.predict(x[:5], verbose=0)
    mlflow.tensorflow.save_model(
        model, str(tmp_path / "mlflow"), signature=infer_signature(x[:5], expected), input_example=x[:2]
    )
    model.export(str(tmp_path / "saved"))
    model.save(str(tmp_path / "model.keras"))
    for uri, flavor in (
        (tmp_path / "mlflow", "tensorflow"),
        (tmp_path / "saved", "savedmodel"),
        (tmp_path / "model.keras", "savedmodel"),
    ):
        loaded = loader.load(str(uri))
        assert loaded.flavor == flavor
        assert np.allclose(loaded.predict(x[:5]), expected, atol=1e-5), uri


def test_readiness_needs_a_successful_test_prediction(tmp_path: Path, digits):
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    x, _ = digits
    signature = infer_signature(x[:2], np.zeros((2, 10), dtype=np.float32))
    # No input example: the warm-up predicts a zero instance built from the signature.
    net = torch.nn.Sequential(torch.nn.Linear(64, 10)).eval()
    mlflow.pytorch.save_model(net, str(tmp_path / "ok"), signature=signature, serialization_format="pickle")
    model = SlipwayModel(ServingConfig(model_uri=str(tmp_path / "ok"), model_name="ok"))
    assert model.load() and model.ready
    # The signature and the example say 64 values; the network takes 65: loading must fail.
    broken = torch.nn.Sequential(torch.nn.Linear(65, 10)).eval()
    mlflow.pytorch.save_model(
        broken, str(tmp_path / "broken"), signature=signature, input_example=x[:2], serialization_format="pickle"
    )
    model = SlipwayModel(ServingConfig(model_uri=str(tmp_path / "broken"), model_name="broken"))
    with pytest.raises(ModelLoadError, match="test prediction"):
        model.load()
    assert not model.ready


def test_pickled_models_are_refused_unless_allowed_and_pt2_needs_no_pickle(tmp_path: Path, digits):
    """What a ModelDeployment's predictor (``--pickle refuse``) will and will not load."""
    import mlflow.pytorch
    import mlflow.sklearn
    import torch
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    sk = LogisticRegression(max_iter=200).fit(x[:200], y[:200])
    mlflow.sklearn.save_model(sk, str(tmp_path / "sk"), signature=infer_signature(x[:2], sk.predict(x[:2])))
    with pytest.raises(loader.PickleRefused, match="pickle"):
        loader.load(str(tmp_path / "sk"), allow_pickle=False)
    assert loader.load(str(tmp_path / "sk"), allow_pickle=True).flavor == "pyfunc"

    net = torch.nn.Sequential(torch.nn.Linear(64, 10)).eval()
    signature = infer_signature(x[:2], np.zeros((2, 10), dtype=np.float32))
    mlflow.pytorch.save_model(net, str(tmp_path / "pickled"), signature=signature, serialization_format="pickle")
    with pytest.raises(loader.PickleRefused, match=r"PyTorch model is pickled|model\.pth is a pickle"):
        loader.load(str(tmp_path / "pickled"), allow_pickle=False)
    # pt2 (torch.export, what our training logs) in a process of its own: torch.export after TensorFlow
    # was loaded in this process aborts it
    script = (
        "import sys, numpy as np, torch, mlflow.pytorch\n"
        "from mlflow.models import infer_signature\n"
        "from slipway_serving import loader\n"
        "x = np.random.default_rng(0).random((4, 64), dtype=np.float32)\n"
        "net = torch.nn.Sequential(torch.nn.Linear(64, 10)).eval()\n"
        "sig = infer_signature(x[:2], np.zeros((2, 10), dtype=np.float32))\n"
        "mlflow.pytorch.save_model(net, sys.argv[1], signature=sig, input_example=x[:2], serialization_format='pt2')\n"
        "m = loader.load(sys.argv[1], allow_pickle=False)\n"
        "print(m.flavor, m.predict(x[:3]).shape[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "pt2")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[-2:] == ["pytorch", "3"], out.stderr[-2000:]
    with pytest.raises(ModelLoadError, match=r"'\.\.'"):
        loader.load(str(tmp_path / "sk" / ".." / "sk"), allow_pickle=True)
