"""Request validation: V1 and V2 payloads in, one checked numpy batch out, or a 4xx error."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import DtypeMismatch, InvalidRequest, PayloadTooLarge, ShapeMismatch

#: Open Inference Protocol datatypes and their numpy equivalents (BYTES is not served).
V2_DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}

_NUMERIC_KINDS = frozenset("biuf")


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (``BYTES`` for anything non-numeric)."""
    for name, candidate in V2_DATATYPES.items():
        if candidate == dtype:
            return name
    return "BYTES"


@dataclass(frozen=True)
class InputSpec:
    """What one request instance must look like: dtype and per-instance shape (-1: any)."""

    dtype: np.dtype[Any] | None
    shape: tuple[int, ...]
    name: str = "input-0"
    columns: tuple[str, ...] | None = None

    @property
    def feature_count(self) -> int | None:
        """Values per instance, when every dimension is fixed."""
        if any(d < 0 for d in self.shape):
            return None
        return math.prod(self.shape)

    def describe_shape(self) -> str:
        """The instance shape as users write it, e.g. ``[64]`` or ``[1, 8, 8]``."""
        return "[" + ", ".join("N" if d < 0 else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class Limits:
    """Size limits per request; bodies are also capped in bytes by the HTTP middleware."""

    max_instances: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024


class V2Tensor(Protocol):
    """The part of ``kserve.InferInput`` that validation reads."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> list[int]: ...

    def as_numpy(self) -> np.ndarray: ...


def v1_instances(payload: Any, spec: InputSpec | None, limits: Limits) -> np.ndarray:
    """Validate a V1 body (``{"instances": [...]}`` or ``{"inputs": [...]}``) into a batch."""
    if not isinstance(payload, dict | Mapping):  # dict first: the ABC check costs microseconds
        raise InvalidRequest('the body must be a JSON object with an "instances" list')
    instances = payload.get("instances", payload.get("inputs"))
    if instances is None:
        raise InvalidRequest('the body must have an "instances" (or "inputs") list')
    if not isinstance(instances, list):
        raise InvalidRequest('"instances" must be a list, one entry per instance')
    _check_count(len(instances), limits)
    if spec is not None and spec.columns is not None and isinstance(instances[0], dict | Mapping):
        instances = _rows_from_records(instances, spec.columns)
    try:
        array = np.asarray(instances)
    except (ValueError, TypeError) as exc:
        raise ShapeMismatch(f"instances are not a regular array{_expected(spec)}: {_first_line(exc)}") from exc
    return conform(array, spec, what="instances")


def v2_inputs(inputs: Sequence[V2Tensor], spec: InputSpec | None, limits: Limits) -> np.ndarray:
    """Validate V2 inputs (one tensor, or one tensor per signature column) into a batch."""
    if not inputs:
        raise InvalidRequest('"inputs" must hold at least one tensor')
    if len(inputs) == 1:
        tensor = inputs[0]
        shape = _v2_shape(tensor)
        if not shape:
            raise ShapeMismatch(f"input {tensor.name!r}: the shape must include the batch size")
        _check_count(shape[0], limits)
        array = _v2_array(tensor, shape)
        return conform(array, spec, what=f"input {tensor.name!r}")
    if spec is None or spec.columns is None:
        raise InvalidRequest(f"this model takes one input tensor, got {len(inputs)}")
    by_name = {t.name: t for t in inputs}
    missing = [c for c in spec.columns if c not in by_name]
    if missing or len(by_name) != len(spec.columns):
        raise InvalidRequest(f"expected one input per column {list(spec.columns)}; missing {missing}")
    columns = []
    for column in spec.columns:
        tensor = by_name[column]
        shape = _v2_shape(tensor)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise ShapeMismatch(f"input {column!r}: expected shape [N] or [N, 1], got {shape}")
        _check_count(shape[0], limits)
        columns.append(_v2_array(tensor, shape).reshape(shape[0]))
    if len({c.shape[0] for c in columns}) != 1:
        raise ShapeMismatch("all column inputs must have the same batch size")
    return conform(np.stack(columns, axis=1), spec, what="inputs")


def conform(array: np.ndarray, spec: InputSpec | None, *, what: str) -> np.ndarray:
    """Check a batch against the spec and convert it, losslessly, to the spec's dtype."""
    if array.dtype.kind not in _NUMERIC_KINDS:
        if array.dtype.kind == "O":
            raise ShapeMismatch(f"{what} are not a regular array of numbers{_expected(spec)}")
        raise DtypeMismatch(f"{what} must be numbers, got {_kind_name(array.dtype)}")
    if array.ndim == 0:
        raise ShapeMismatch(f"{what} must be a list of instances, got a single value")
    if spec is None:
        _check_finite(array, what)
        return array
    instance_shape = array.shape[1:]
    if instance_shape != spec.shape and (
        len(instance_shape) != len(spec.shape)
        or any(want >= 0 and want != got for want, got in zip(spec.shape, instance_shape, strict=False))
    ):
        raise ShapeMismatch(
            f"{what}: each instance must have shape {spec.describe_shape()}, got {list(instance_shape)}"
        )
    if spec.dtype is not None and array.dtype != spec.dtype:
        array = _cast(array, spec.dtype, what)
    _check_finite(array, what)
    return array


def _cast(array: np.ndarray, target: np.dtype[Any], what: str) -> np.ndarray:
    source = array.dtype
    if target.kind == "f":
        if source.kind == "b":
            raise DtypeMismatch(f"{what}: expected {target.name} numbers, got booleans")
        return array.astype(target)
    if target.kind in "iu":
        if source.kind == "b":
            raise DtypeMismatch(f"{what}: expected {target.name} integers, got booleans")
        if source.kind == "f" and (not np.all(np.isfinite(array)) or not np.array_equal(array, np.trunc(array))):
            raise DtypeMismatch(f"{what}: expected {target.name} integers, got fractions")
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise DtypeMismatch(f"{what}: values out of range for {target.name}")
        return array.astype(target)
    if target.kind == "b":
        if source.kind != "b":
            raise DtypeMismatch(f"{what}: expected booleans, got {_kind_name(source)}")
        return array
    raise DtypeMismatch(f"{what}: the model's input type {target} is not served")


def _check_finite(array: np.ndarray, what: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidRequest(f"{what} contain NaN or infinite values")


def _check_count(count: int, limits: Limits) -> None:
    if count <= 0:
        raise InvalidRequest("the request holds no instances")
    if count > limits.max_instances:
        raise PayloadTooLarge(f"{count} instances in one request; the limit is {limits.max_instances}")


def _v2_shape(tensor: V2Tensor) -> list[int]:
    shape = list(tensor.shape)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise ShapeMismatch(f"input {tensor.name!r}: invalid shape {shape}")
    return shape


def _v2_array(tensor: V2Tensor, shape: list[int]) -> np.ndarray:
    datatype = tensor.datatype.upper()
    if datatype not in V2_DATATYPES:
        raise DtypeMismatch(
            f"input {tensor.name!r}: datatype {datatype} is not served; use one of {', '.join(V2_DATATYPES)}"
        )
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError) as exc:
        message = _first_line(exc)
        if "reshape" in message or "inhomogeneous" in message:
            raise ShapeMismatch(f"input {tensor.name!r}: the data does not fill shape {shape}") from exc
        raise DtypeMismatch(f"input {tensor.name!r}: data is not {datatype}: {message}") from exc


def _rows_from_records(records: list[Any], columns: tuple[str, ...]) -> list[list[Any]]:
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InvalidRequest(f"instance {i} is not an object like the others")
        try:
            rows.append([record[c] for c in columns])
        except KeyError as exc:
            raise InvalidRequest(f"instance {i} lacks column {exc.args[0]!r}") from exc
    return rows


def _expected(spec: InputSpec | None) -> str:
    return "" if spec is None else f" of instances shaped {spec.describe_shape()}"


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"U": "strings", "S": "bytes", "O": "objects", "b": "booleans"}.get(dtype.kind, dtype.name)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
