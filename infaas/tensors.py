"""A model's tensors and the one rule that turns a client's value into what the model takes.

``TensorSpec`` is how every part of infaas sees a graph input or output: the catalog builds them once
when it reads a model, registration stores them (``to_json``), the API and OIP metadata render them,
and every path that feeds a model -- online queries, offline jobs, validation sets, accuracy
measurement -- goes through ``TensorSpec.conform``, so a value accepted in one place is accepted in all.
"""

from __future__ import annotations

from array import array as c_doubles
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infaas.errors import InvalidInput

# A JSON list at least this long that feeds a float tensor is converted by ``array('d')`` (see
# ``_json_floats``): 0.74 ms against 1.20 ms for ``np.asarray`` on ResNet-18's 49,152 values; below about
# 2,000 values the fixed cost of the extra checks makes it slower (64 values: 4.5 us against 2.3 us).
FAST_JSON_FLOATS = 2048
_EXACT_IN_FLOAT64 = 2.0**53  # every integer of smaller magnitude is a float64 exactly


def _json_floats(values: list[Any]) -> np.ndarray | None:
    """A flat list of JSON numbers as float64, exactly as ``np.asarray`` then ``astype`` would give them; ``None``
    when that is not certain, so the caller takes the general rule (which also words any refusal).

    ``array('d')`` converts in one C loop without numpy's type discovery pass. It refuses strings, nulls
    and nested lists (``TypeError``) but would take booleans: a list whose first value is a boolean is left
    to the general rule, which refuses a list of booleans and, like this, reads booleans among numbers as
    0 and 1. A list of integers only is an int64 array to numpy, cast once to the tensor's dtype; here each
    integer goes through float64 first, which is the same value while it is below 2**53 in magnitude, so a
    larger value sends the list to the general rule. Only values from a JSON parser qualify: an object with
    ``__float__`` (a ``Decimal``) would pass here where numpy refuses it.
    """
    if type(values[0]) is bool:
        return None
    try:
        floats = np.frombuffer(c_doubles("d", values), dtype=np.float64)
    except (TypeError, OverflowError):
        return None
    if not np.abs(floats).max() < _EXACT_IN_FLOAT64:
        return None
    return floats


def _kind_ok(expected: np.dtype, got: np.dtype) -> bool:
    """JSON numbers may feed float tensors; integer tensors need integers; bool needs bool."""
    if expected.kind == "f":
        return got.kind in "iuf"
    if expected.kind in "iu":
        return got.kind in "iu"
    return got.kind == expected.kind


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape (``-1`` for a dynamic dimension) of a graph input or output."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TensorSpec:
        """From the stored ``{"name", "dtype", "shape"}`` form; any dimension not a positive int is dynamic."""
        shape = tuple(
            d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else -1 for d in raw.get("shape") or ()
        )
        return cls(name=str(raw["name"]), dtype=np.dtype(raw["dtype"]), shape=shape)

    def to_json(self) -> dict[str, Any]:
        """The form stored in the catalog and shown by the API: ``{"name", "dtype": "float32", "shape": [-1, 8]}``."""
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    def conform(self, value: Any, *, samples: bool = False, from_json: bool = False) -> np.ndarray:
        """``value`` as an array of this tensor's dtype and shape; ``InvalidInput`` saying why it cannot be.

        A value without a dtype of its own (JSON lists) is taken by kind: numbers feed float tensors,
        integers (within range) feed integer tensors, bools feed bool tensors. An array carries the dtype
        its sender declared (an OIP ``datatype``), so on a query it must match exactly, as Triton requires.

        ``samples=True`` is for an array of samples read from a file (an offline job's input, a validation
        set): its first axis counts samples whatever the model's batch dimension says, because infaas cuts
        it into batches the model takes; and it is taken by kind like a JSON value, because numpy writes
        float64 unless told otherwise and refusing that would only annoy.

        ``from_json=True`` says ``value`` came from a JSON parser (its leaves are only numbers, booleans,
        strings and nulls): a long flat list for a float tensor then takes a faster conversion with the same
        result (``_json_floats``).
        """
        if isinstance(value, np.ndarray):
            array = value
            if array.dtype != self.dtype and not (samples and _kind_ok(self.dtype, array.dtype)):
                raise InvalidInput(f"input {self.name!r} has dtype {array.dtype}, the model expects {self.dtype}")
        elif (
            from_json
            and self.dtype.kind == "f"
            and type(value) is list
            and len(value) >= FAST_JSON_FLOATS
            and (floats := _json_floats(value)) is not None
        ):
            array = floats
        else:
            try:
                array = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"input {self.name!r} is not a rectangular array of numbers") from exc
            if array.dtype == object or not _kind_ok(self.dtype, array.dtype):
                raise InvalidInput(
                    f"input {self.name!r} holds {array.dtype.name if array.dtype != object else 'mixed'} values, "
                    f"the model expects {self.dtype}"
                )
        self._check_shape(array.shape, samples)
        if array.dtype == self.dtype:
            return array
        if self.dtype.kind in "iu" and array.size:
            limits = np.iinfo(self.dtype)
            if array.min() < limits.min or array.max() > limits.max:
                raise InvalidInput(f"input {self.name!r} has values outside the range of {self.dtype}")
        return array.astype(self.dtype)

    def _check_shape(self, shape: tuple[int, ...], samples: bool) -> None:
        dims = self.shape
        if len(shape) == len(dims):  # a plain loop: 0.3 us against 0.8 for zip and all() (every query)
            for i in range(1 if samples else 0, len(dims)):
                if dims[i] >= 0 and shape[i] != dims[i]:
                    break
            else:
                return
        if samples:
            wanted = f"[N, {', '.join(str(d) if d > 0 else '?' for d in self.shape[1:])}]"
        else:
            wanted = str(["N" if i == 0 and d < 0 else ("?" if d < 0 else d) for i, d in enumerate(self.shape)])
        raise InvalidInput(f"input {self.name!r} has shape {list(shape)}, the model expects {wanted}")


def check_limits(inputs: Mapping[str, Any], max_batch: int, max_inputs: int) -> None:
    """The per-query limits, from the values' lengths alone: no conversion work for an over-limit query.

    The engine calls it once per query, before it looks at any model, so such a query gets its 400
    whatever state the model is in; ``conform_inputs`` then needs no limits of its own.
    """
    if len(inputs) > max_inputs:
        raise InvalidInput(f"{len(inputs)} inputs sent; at most {max_inputs} are accepted")
    for name, value in inputs.items():
        if isinstance(value, np.ndarray):
            rows = value.shape[0] if value.ndim else 1
        else:
            # A tuple of types: ``list | tuple`` builds a new union on every call (107 ns against 55).
            rows = len(value) if isinstance(value, (list, tuple)) else 1
        if rows > max_batch:
            raise InvalidInput(
                f"input {name!r} has {rows} rows; at most {max_batch} per query (INFAAS_MAX_BATCH_PER_QUERY)"
            )


def conform_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """A query's inputs conformed to the model's, and its batch (rows); ``InvalidInput`` if they do not fit.

    Call ``check_limits`` first: this does the per-element work the limits exist to bound.
    """
    expected = {s.name for s in specs}
    if inputs.keys() != expected:
        missing = sorted(expected - inputs.keys())
        extra = sorted(inputs.keys() - expected)
        parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""]
        raise InvalidInput(f"inputs {'; '.join(p for p in parts if p)}; the model takes {sorted(expected)}")
    arrays: dict[str, np.ndarray] = {}
    batch: int | None = None
    for spec in specs:
        array = spec.conform(inputs[spec.name])
        rows = array.shape[0] if array.ndim else 1
        if batch is None:
            batch = rows
        elif rows != batch:
            raise InvalidInput(f"inputs disagree on the batch size ({batch} and {rows} rows)")
        arrays[spec.name] = array
    if not batch:
        raise InvalidInput("the batch is empty: send at least one row")
    return arrays, batch


__all__ = ["TensorSpec", "check_limits", "conform_inputs"]
