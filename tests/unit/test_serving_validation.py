"""Request validation: V1 instances and V2 tensors against the signature, and size limits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from slipway_serving.errors import (
    HTTP_STATUS,
    DtypeMismatch,
    InvalidRequest,
    PayloadTooLarge,
    ServingError,
    ShapeMismatch,
    status_of,
)
from slipway_serving.validation import InputSpec, Limits, conform, v1_instances, v2_inputs

SPEC = InputSpec(dtype=np.dtype(np.float32), shape=(4,))
LIMITS = Limits(max_instances=8)


@dataclass
class Tensor:
    """What validation reads of a ``kserve.InferInput``."""

    name: str
    datatype: str
    shape: list[int]
    data: list[object]

    def as_numpy(self) -> np.ndarray:
        dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": bool}
        return np.array(self.data, dtype=dtype[self.datatype]).reshape(self.shape)


def test_v1_instances_become_a_float32_batch():
    batch = v1_instances({"instances": [[0, 1, 2, 3], [4.5, 5, 6, 7]]}, SPEC, LIMITS)
    assert batch.dtype == np.float32 and batch.shape == (2, 4)
    assert v1_instances({"inputs": [[0, 1, 2, 3]]}, SPEC, LIMITS).shape == (1, 4)


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        ([1, 2], InvalidRequest, "JSON object"),
        ({"foo": 1}, InvalidRequest, '"instances"'),
        ({"instances": 5}, InvalidRequest, "list"),
        ({"instances": []}, InvalidRequest, "no instances"),
        ({"instances": [[1, 2, 3]]}, ShapeMismatch, "[4]"),
        ({"instances": [[1, 2, 3, 4], [1, 2]]}, ShapeMismatch, "regular array"),
        ({"instances": [[[1, 2, 3, 4]]]}, ShapeMismatch, "[4]"),
        ({"instances": [1, 2, 3, 4]}, ShapeMismatch, "[4]"),
        ({"instances": [["a", "b", "c", "d"]]}, DtypeMismatch, "strings"),
        ({"instances": [[True, False, True, False]]}, DtypeMismatch, "booleans"),
        ({"instances": [[None, 1, 2, 3]]}, ShapeMismatch, "numbers"),
        ({"instances": [[1, 2, 3, 4]] * 9}, PayloadTooLarge, "limit is 8"),
    ],
)
def test_v1_rejections(payload, error, words):
    with pytest.raises(error) as caught:
        v1_instances(payload, SPEC, LIMITS)
    assert words in caught.value.message


def test_non_finite_values_are_rejected():
    with pytest.raises(InvalidRequest, match="NaN"):
        conform(np.array([[0, np.nan, 1, 2]]), SPEC, what="instances")
    with pytest.raises(InvalidRequest, match="infinite"):
        conform(np.array([[0, np.inf, 1, 2]]), SPEC, what="instances")


def test_integer_inputs_accept_whole_floats_only():
    spec = InputSpec(dtype=np.dtype(np.int64), shape=(2,))
    assert conform(np.array([[1.0, 2.0]]), spec, what="x").dtype == np.int64
    with pytest.raises(DtypeMismatch, match="fractions"):
        conform(np.array([[1.5, 2.0]]), spec, what="x")
    narrow = InputSpec(dtype=np.dtype(np.int8), shape=(1,))
    with pytest.raises(DtypeMismatch, match="range"):
        conform(np.array([[300]]), narrow, what="x")


def test_wildcard_dimensions_accept_any_size():
    spec = InputSpec(dtype=np.dtype(np.float32), shape=(-1, 2))
    assert conform(np.zeros((1, 5, 2)), spec, what="x").shape == (1, 5, 2)
    assert spec.feature_count is None
    assert spec.describe_shape() == "[N, 2]"


def test_no_spec_accepts_any_numeric_batch():
    assert v1_instances({"instances": [[1, 2], [3, 4]]}, None, LIMITS).shape == (2, 2)
    with pytest.raises(DtypeMismatch):
        v1_instances({"instances": [["x"]]}, None, LIMITS)


def test_records_are_read_by_column_name():
    spec = InputSpec(dtype=np.dtype(np.float64), shape=(2,), columns=("a", "b"))
    batch = v1_instances({"instances": [{"b": 2, "a": 1}, {"a": 3, "b": 4}]}, spec, LIMITS)
    assert batch.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(InvalidRequest, match="lacks column 'b'"):
        v1_instances({"instances": [{"a": 1}]}, spec, LIMITS)


def test_v2_single_tensor():
    tensor = Tensor("x", "FP32", [2, 4], list(range(8)))
    batch = v2_inputs([tensor], SPEC, LIMITS)
    assert batch.shape == (2, 4) and batch.dtype == np.float32
    int_tensor = Tensor("x", "INT64", [1, 4], [1, 2, 3, 4])
    assert v2_inputs([int_tensor], SPEC, LIMITS).dtype == np.float32


@pytest.mark.parametrize(
    ("tensor", "error"),
    [
        (Tensor("x", "FP32", [1, 3], [1, 2, 3]), ShapeMismatch),
        (Tensor("x", "FP32", [1, 4], [1, 2, 3]), ShapeMismatch),
        (Tensor("x", "FP32", [4], [1, 2, 3, 4]), ShapeMismatch),
        (Tensor("x", "FP32", [], []), ShapeMismatch),
        (Tensor("x", "FP32", [-1, 4], [1, 2, 3, 4]), ShapeMismatch),
        (Tensor("x", "BYTES", [1, 4], ["a", "b", "c", "d"]), DtypeMismatch),
        (Tensor("x", "FP32", [1, 4], ["a", "b", "c", "d"]), DtypeMismatch),
        (Tensor("x", "BOOL", [1, 4], [True, False, True, False]), DtypeMismatch),
        (Tensor("x", "FP32", [9, 4], [0.0] * 36), PayloadTooLarge),
    ],
)
def test_v2_rejections(tensor, error):
    with pytest.raises(error):
        v2_inputs([tensor], SPEC, LIMITS)


def test_v2_one_input_per_column():
    spec = InputSpec(dtype=np.dtype(np.float64), shape=(2,), columns=("a", "b"))
    inputs = [Tensor("b", "FP64", [2], [3, 4]), Tensor("a", "FP64", [2, 1], [1, 2])]
    assert v2_inputs(inputs, spec, LIMITS).tolist() == [[1, 3], [2, 4]]
    with pytest.raises(InvalidRequest, match="missing"):
        v2_inputs([Tensor("a", "FP64", [2], [1, 2]), Tensor("c", "FP64", [2], [1, 2])], spec, LIMITS)
    with pytest.raises(ShapeMismatch, match="same batch size"):
        v2_inputs([Tensor("a", "FP64", [2], [1, 2]), Tensor("b", "FP64", [1], [1])], spec, LIMITS)
    with pytest.raises(InvalidRequest, match="one input tensor"):
        v2_inputs([Tensor("a", "FP64", [1], [1]), Tensor("b", "FP64", [1], [1])], SPEC, LIMITS)


def test_v2_with_real_kserve_infer_input():
    kserve_types = pytest.importorskip("kserve.protocol.infer_type")
    ok = kserve_types.InferInput("input-0", [1, 4], "FP32", [1.0, 2.0, 3.0, 4.0])
    assert v2_inputs([ok], SPEC, LIMITS).shape == (1, 4)
    short = kserve_types.InferInput("input-0", [1, 4], "FP32", [1.0, 2.0, 3.0])
    with pytest.raises(ShapeMismatch):
        v2_inputs([short], SPEC, LIMITS)
    words = kserve_types.InferInput("input-0", [1, 4], "FP32", ["a", "b", "c", "d"])
    with pytest.raises(DtypeMismatch):
        v2_inputs([words], SPEC, LIMITS)


def test_every_error_maps_to_one_status():
    assert status_of(ShapeMismatch("x")) == 400
    assert status_of(DtypeMismatch("x")) == 400
    assert status_of(InvalidRequest("x")) == 400
    assert status_of(PayloadTooLarge("x")) == 413
    assert status_of(ServingError("x")) == 500
    assert all(400 <= code < 600 for code in HTTP_STATUS.values())
    kinds = {cls.kind for cls in (ShapeMismatch, DtypeMismatch, InvalidRequest, PayloadTooLarge)}
    assert len(kinds) == 4
