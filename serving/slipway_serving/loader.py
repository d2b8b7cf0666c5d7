"""Finding and loading the artifact: storage URI to local path, flavor, signature, baseline."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from . import frameworks
from .drift import Baseline, BaselineFormatError
from .errors import ModelLoadError
from .performance import ValidationFormatError, ValidationSplit
from .validation import InputSpec

log = logging.getLogger(__name__)

#: URI schemes only an MLflow tracking server can resolve.
MLFLOW_SCHEMES = frozenset({"runs", "models", "mlflow-artifacts"})

#: Files that are unpickled on load (running whatever code they hold).
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".cloudpickle", ".joblib", ".pth", ".sav", ".dill"})


class PickleRefused(ModelLoadError):
    """The artifact would be unpickled (or runs code it ships) and the server was not told to allow that."""


def pickle_use(path: Path) -> str | None:
    """Why loading the MLflow model at ``path`` would unpickle data or run code it ships (None: it would not).

    Pickle files anywhere in the model, PyTorch's pickle serialization, and pyfunc models with a
    loader module of their own or a ``code`` folder.
    """
    root = path if path.is_dir() else path.parent
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.suffix.lower() in PICKLE_SUFFIXES:
            return f"{file.relative_to(root)} is a pickle"
    if not (root / "MLmodel").is_file():
        return None
    from mlflow.models import Model as MlflowModel

    meta = MlflowModel.load(str(root / "MLmodel"))
    torch_conf = meta.flavors.get("pytorch") or {}
    if torch_conf and not (root / str(torch_conf.get("model_data") or "data") / "model.pt2").is_file():
        return "the PyTorch model is pickled (log it with serialization_format='pt2')"
    if torch_conf.get("code"):
        return "the PyTorch model ships code of its own"
    pyfunc = meta.flavors.get("python_function") or {}
    loader = str(pyfunc.get("loader_module") or "")
    if pyfunc and not meta.flavors.keys() & {"pytorch", "keras", "tensorflow"}:
        if not loader.startswith("mlflow.") or pyfunc.get("code") or (root / "code").is_dir():
            return f"the pyfunc model runs code of its own (loader {loader or 'python_model'})"
        if loader in ("mlflow.sklearn", "mlflow.pyfunc.model", "mlflow.xgboost", "mlflow.lightgbm"):
            return f"the pyfunc model ({loader}) is pickled"
    return None


def refuse_dot_dot(uri: str) -> None:
    """ModelLoadError for a URI or path with a ``..`` segment (it could climb out of where models live)."""
    path = unquote(urlparse(uri).path) if "://" in uri else uri
    if ".." in Path(path).parts or ".." in path.replace("\\", "/").split("/"):
        raise ModelLoadError(f"{uri}: '..' in a model path is refused")


#: Where a baseline may sit, relative to the model directory (first match wins): inside the
#: model (an extra file of the logged model), or next to it in the run's artifacts.
BASELINE_CANDIDATES = (
    "baseline.json",
    "drift_baseline.json",
    "../baseline.json",
    "../baseline/baseline.json",
    "../drift_baseline.json",
)


@dataclass(frozen=True)
class LoadedModel:
    """A loaded artifact and what is known about its inputs."""

    predict: frameworks.Predict
    flavor: str
    path: Path
    input_spec: InputSpec | None
    input_example: np.ndarray | None
    baseline: Baseline | None
    validation: ValidationSplit | None = None
    """The validation split saved with the baseline (calibrates the accuracy estimate)."""


def resolve_uri(uri: str, download_dir: Path | None = None) -> Path:
    """A local path for ``uri``: paths and ``file://`` as they are, anything else downloaded.

    ``runs:/``, ``models:/`` and ``mlflow-artifacts:`` need ``MLFLOW_TRACKING_URI``; other
    remote schemes (``s3://``, ``gs://``, ...) work when MLflow has the matching client.
    """
    refuse_dot_dot(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # 1: a Windows drive
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist")
        return path
    if parsed.scheme in MLFLOW_SCHEMES and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ModelLoadError(f"{parsed.scheme}: URIs need MLFLOW_TRACKING_URI to be set")
    target = download_dir or Path(tempfile.mkdtemp(prefix="slipway-model-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
    except Exception as exc:
        raise ModelLoadError(f"cannot download {uri}: {exc}") from exc
    log.info("downloaded %s to %s", uri, local)
    return Path(local)


def load(
    uri: str,
    *,
    flavor: str = "auto",
    download_dir: Path | None = None,
    baseline_uri: str | None = None,
    allow_pickle: bool = True,
) -> LoadedModel:
    """Resolve, detect the flavor, load, and read signature, input example and baseline.

    ``allow_pickle=False``: :class:`PickleRefused` for an artifact that would be unpickled (or run
    code it ships), before anything of it is loaded.
    """
    path = _model_root(resolve_uri(uri, download_dir))
    if not allow_pickle:
        why = pickle_use(path)
        if why is not None:
            raise PickleRefused(f"{uri}: {why}; this server refuses pickled models (--pickle allow to load it)")
    load_from = _load_mlflow if (path / "MLmodel").is_file() else _load_plain
    try:
        loaded = load_from(path, flavor)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load {uri}: {type(exc).__name__}: {exc}") from exc
    baseline, validation = _load_baseline(path, baseline_uri, download_dir)
    return LoadedModel(
        predict=loaded[0],
        flavor=loaded[1],
        path=path,
        input_spec=loaded[2],
        input_example=loaded[3],
        baseline=baseline,
        validation=validation,
    )


def _model_root(path: Path) -> Path:
    """KServe's storage initializer may leave the model one directory down."""
    if path.is_dir() and not (path / "MLmodel").exists():
        children = [c for c in path.iterdir() if not c.name.startswith(".")]
        if len(children) == 1 and (children[0] / "MLmodel").is_file():
            return children[0]
    return path


_Loaded = tuple[frameworks.Predict, str, InputSpec | None, np.ndarray | None]


def _load_mlflow(path: Path, flavor: str) -> _Loaded:
    from mlflow.models import Model as MlflowModel

    meta = MlflowModel.load(str(path / "MLmodel"))
    flavors = set(meta.flavors)
    spec = spec_from_signature(meta.signature)
    example = _example_array(meta.load_input_example(str(path)))
    chosen = flavor if flavor != "auto" else _pick_flavor(flavors)
    if chosen == "pytorch":
        import mlflow.pytorch

        predict = frameworks.torch_predict(mlflow.pytorch.load_model(str(path)))
    elif chosen == "keras":
        import mlflow.keras

        predict = frameworks.tensorflow_predict(mlflow.keras.load_model(str(path)))
    elif chosen == "tensorflow":
        import mlflow.tensorflow

        predict = frameworks.tensorflow_predict(mlflow.tensorflow.load_model(str(path)))
    elif chosen == "pyfunc":
        import mlflow.pyfunc

        columns = spec.columns if spec is not None else None
        predict = frameworks.pyfunc_predict(mlflow.pyfunc.load_model(str(path)), columns)
    else:
        raise ModelLoadError(f"flavor {chosen} is not in this MLflow model: {sorted(flavors)}")
    if example is None and spec is not None:
        example = _synthetic_example(spec)
    return predict, chosen, spec, example


def _pick_flavor(flavors: set[str]) -> str:
    for name in ("pytorch", "keras", "tensorflow"):
        if name in flavors:
            return name
    if "python_function" in flavors:
        return "pyfunc"
    raise ModelLoadError(f"no servable flavor among {sorted(flavors)}")


def _load_plain(path: Path, flavor: str) -> _Loaded:
    suffix = path.suffix.lower()
    if flavor == "torchscript" or (flavor == "auto" and suffix in (".pt", ".pth", ".torchscript")):
        return frameworks.load_torchscript(path), "torchscript", None, None
    if flavor == "savedmodel" or (
        flavor == "auto" and ((path / "saved_model.pb").is_file() or suffix in (".keras", ".h5"))
    ):
        return frameworks.load_saved_model(path), "savedmodel", None, None
    raise ModelLoadError(f"{path} is not an MLflow model (no MLmodel), a TorchScript file or a SavedModel")


def spec_from_signature(signature: Any) -> InputSpec | None:
    """The single input a signature declares, as an :class:`InputSpec` (None: unchecked)."""
    if signature is None or signature.inputs is None:
        return None
    schema = signature.inputs
    if schema.is_tensor_spec():
        tensors = schema.inputs
        if len(tensors) != 1:
            raise ModelLoadError(f"the signature has {len(tensors)} input tensors; one is served")
        tensor = tensors[0]
        shape = tuple(int(d) for d in tensor.shape)
        if not shape:
            raise ModelLoadError("the input tensor has no batch dimension")
        return InputSpec(dtype=np.dtype(tensor.type), shape=shape[1:], name=tensor.name or "input-0")
    names = tuple(str(n) for n in schema.input_names())
    try:
        dtypes = [np.dtype(t) for t in schema.numpy_types()]
    except Exception as exc:
        raise ModelLoadError(f"unsupported column types in the signature: {exc}") from exc
    if not all(d.kind in "biuf" for d in dtypes):
        raise ModelLoadError("only numeric columns are served")
    return InputSpec(dtype=np.result_type(*dtypes), shape=(len(names),), name="input-0", columns=names)


def _example_array(example: Any) -> np.ndarray | None:
    if example is None:
        return None
    if hasattr(example, "to_numpy"):
        return np.asarray(example.to_numpy())
    if isinstance(example, dict):
        if len(example) != 1:
            return None
        example = next(iter(example.values()))
    array = np.asarray(example)
    return array if array.dtype.kind in "biuf" else None


def _synthetic_example(spec: InputSpec) -> np.ndarray:
    shape = (1, *(max(d, 1) for d in spec.shape))
    return np.zeros(shape, dtype=spec.dtype or np.float32)


def _load_baseline(
    model_path: Path, baseline_uri: str | None, download_dir: Path | None
) -> tuple[Baseline | None, ValidationSplit | None]:
    if baseline_uri is not None:
        candidates = [resolve_uri(baseline_uri, download_dir)]
    else:
        base = model_path if model_path.is_dir() else model_path.parent
        candidates = [base / c for c in BASELINE_CANDIDATES]
    for candidate in candidates:
        if candidate.is_file():
            try:
                baseline = Baseline.load(candidate)
                validation = ValidationSplit.from_baseline(json.loads(candidate.read_text()))
            except (BaselineFormatError, ValidationFormatError) as exc:
                raise ModelLoadError(f"baseline {candidate}: {exc}") from exc
            log.info(
                "drift baseline: %s (%d features, %s validation rows)",
                candidate,
                len(baseline.features),
                len(validation.y) if validation is not None else "no",
            )
            return baseline, validation
    log.info("no drift baseline next to the model: drift metrics are off")
    return None, None
