"""``TensorSpec``: its stored JSON form and the one rule that conforms a client's value to a model's tensor."""

from __future__ import annotations

import numpy as np
import pytest

from infaas.errors import InvalidInput
from infaas.tensors import TensorSpec, check_limits, conform_inputs

X = TensorSpec("x", np.dtype("float32"), (-1, 4))
IDS = TensorSpec("ids", np.dtype("int8"), (-1, 2))
MASK = TensorSpec("mask", np.dtype("bool"), (-1, 2))


def test_json_round_trip_keeps_the_stored_form() -> None:
    stored = {"name": "x", "dtype": "float32", "shape": [-1, 4]}
    spec = TensorSpec.from_json(stored)
    assert spec == X and spec.to_json() == stored
    assert TensorSpec.from_json(spec.to_json()) == spec
    # Exporters' symbolic dimensions and missing shapes read as dynamic / scalar.
    assert TensorSpec.from_json({"name": "t", "dtype": "int64", "shape": ["batch", 0, 7]}).shape == (-1, -1, 7)
    assert TensorSpec.from_json({"name": "s", "dtype": "float16"}).shape == ()
    assert hash(spec) == hash(TensorSpec.from_json(stored))  # usable as a cache key


def test_floats_from_ints_and_dynamic_dims() -> None:
    array = X.conform([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert array.dtype == np.float32 and array.shape == (2, 4)
    assert X.conform([[0.5] * 4] * 3).shape == (3, 4)
    assert TensorSpec("v", np.dtype("float32"), (-1, -1)).conform([[1.0] * 9]).shape == (1, 9)


def test_integers_are_not_taken_from_floats_and_must_fit() -> None:
    with pytest.raises(InvalidInput, match="holds float64 values, the model expects int8"):
        IDS.conform([[1.5, 2.0]])
    assert IDS.conform([[-128, 127]]).dtype == np.int8
    with pytest.raises(InvalidInput, match="outside the range of int8"):
        IDS.conform([[1, 300]])


def test_bool_only_from_bool() -> None:
    assert MASK.conform([[True, False]]).dtype == np.bool_
    with pytest.raises(InvalidInput, match="holds int64 values"):
        MASK.conform([[1, 0]])
    with pytest.raises(InvalidInput, match="holds bool values"):
        X.conform([[True, False, True, False]])


def test_not_numbers_or_ragged() -> None:
    with pytest.raises(InvalidInput, match="expects float32"):
        X.conform([["a", "b", "c", "d"]])
    with pytest.raises(InvalidInput, match="not a rectangular array"):
        X.conform([[1, 2, 3, 4], [1, 2]])


def test_wrong_rank_or_fixed_dimension() -> None:
    with pytest.raises(InvalidInput, match=r"shape \[4\], the model expects \['N', 4\]"):
        X.conform([1, 2, 3, 4])
    with pytest.raises(InvalidInput, match=r"shape \[1, 3\], the model expects \['N', 4\]"):
        X.conform([[1, 2, 3]])
    pinned = TensorSpec("p", np.dtype("float32"), (1, -1))
    with pytest.raises(InvalidInput, match=r"the model expects \[1, '\?'\]"):
        pinned.conform([[1.0], [2.0]])


def test_a_typed_array_must_have_the_exact_dtype_on_a_query() -> None:
    exact = np.zeros((2, 4), np.float32)
    assert X.conform(exact) is exact  # no copy
    with pytest.raises(InvalidInput, match="has dtype float64, the model expects float32"):
        X.conform(np.zeros((2, 4), np.float64))


def test_samples_count_on_the_first_axis_and_convert_within_kind() -> None:
    pinned = TensorSpec("p", np.dtype("float32"), (1, 4))
    samples = pinned.conform(np.ones((10, 4), np.float64), samples=True)
    assert samples.dtype == np.float32 and samples.shape == (10, 4)
    with pytest.raises(InvalidInput, match=r"shape \[10, 5\], the model expects \[N, 4\]"):
        pinned.conform(np.ones((10, 5), np.float32), samples=True)
    with pytest.raises(InvalidInput, match="has dtype complex64"):
        pinned.conform(np.ones((10, 4), np.complex64), samples=True)
    with pytest.raises(InvalidInput, match="has dtype float32, the model expects int8"):
        IDS.conform(np.ones((3, 2), np.float32), samples=True)
    with pytest.raises(InvalidInput, match="outside the range"):
        IDS.conform(np.full((3, 2), 1000, np.int64), samples=True)


def test_conform_inputs_returns_arrays_and_batch() -> None:
    arrays, batch = conform_inputs((X, MASK), {"x": [[0] * 4] * 3, "mask": [[True, False]] * 3})
    assert batch == 3 and arrays["x"].dtype == np.float32 and arrays["mask"].shape == (3, 2)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"z": [[1, 2, 3, 4]], "mask": [[True, True]]}, "missing ['x']; unexpected ['z']"),
        ({"x": [[0] * 4] * 2, "mask": [[True, True]]}, "disagree on the batch size (2 and 1 rows)"),
        ({"x": np.zeros((0, 4), np.float32), "mask": np.zeros((0, 2), bool)}, "the batch is empty"),
        ({"x": [[0] * 4] * 9, "mask": [[True, True]] * 9}, "has 9 rows; at most 8 per query"),
        ({"x": [[0] * 4], "mask": [[True, True]], "y": [1], "z": [1], "w": [1]}, "5 inputs sent; at most 4"),
    ],
)
def test_conform_inputs_refusals(inputs: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:  # the engine's order: limits once, then conversion
        check_limits(inputs, 8, 4)
        conform_inputs((X, MASK), inputs)
    assert message in str(raised.value)


def test_limits_need_no_conversion() -> None:
    # Lengths alone: values that could never be converted are refused for their count first.
    with pytest.raises(InvalidInput, match="at most 2 per query"):
        check_limits({"x": [object()] * 3}, 2, 4)
    with pytest.raises(InvalidInput, match="at most 2 per query"):
        check_limits({"x": np.zeros((3, 4))}, 2, 4)
    check_limits({"x": 1.0}, 1, 1)  # a scalar is one row
