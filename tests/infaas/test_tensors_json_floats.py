"""The faster conversion of long JSON lists into float tensors gives exactly what the general rule gives.

``TensorSpec.conform(..., from_json=True)`` converts a flat list of at least ``FAST_JSON_FLOATS`` JSON
values for a float tensor with ``array('d')`` and hands anything it cannot vouch for to the general rule.
Each case here is conformed both ways (``from_json`` on and off) and must give the same array, bit for
bit, or the same refusal with the same message.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from infaas import tensors
from infaas.errors import InvalidInput
from infaas.tensors import FAST_JSON_FLOATS, TensorSpec

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

N = FAST_JSON_FLOATS
FLOATS = [TensorSpec("x", np.dtype(d), (-1,)) for d in ("float32", "float64", "float16")]


def _both(spec: TensorSpec, values: list) -> tuple[object, object]:
    """The fast and the general outcome: an array, or the refusal's message."""
    outcomes = []
    for from_json in (True, False):
        try:
            outcomes.append(spec.conform(values, from_json=from_json))
        except InvalidInput as exc:
            outcomes.append(str(exc))
    return outcomes[0], outcomes[1]


def _same(fast: object, general: object) -> None:
    if isinstance(general, str):
        assert fast == general
    else:
        assert isinstance(fast, np.ndarray) and isinstance(general, np.ndarray)
        assert fast.dtype == general.dtype and fast.shape == general.shape
        assert fast.tobytes() == general.tobytes()  # bit for bit: -0.0 and rounding included


def _json(text: str) -> list:
    """What the OIP decoder hands ``conform``: orjson's parse of a body's ``data``."""
    return orjson.loads(text)


def _random_texts() -> list[str]:
    rng = np.random.default_rng(7)
    texts = [
        ", ".join(repr(float(v)) for v in rng.standard_normal(N)),  # Python's repr, as json.dumps writes
        ",".join(f"{v:.3e}" for v in rng.standard_normal(N) * 1e30),  # exponents, no point
        ",".join(str(int(v)) for v in rng.integers(-(2**40), 2**40, N)),  # integers only
        ",".join(str(int(v)) if i % 2 else repr(float(v)) for i, v in enumerate(rng.integers(-9, 9, N))),  # mixed
        ",".join(["-0", "-0.0", "0"] * (N // 3 + 1)),  # signed zeros as integer and as float
        ",".join(["3.4028235677973366e38", "1e-46", "65504.1", "-1e300"] * (N // 4)),  # float32/16 overflow, underflow
        ",".join(["1.5"] * (N - 1) + ["true"]),  # a boolean among numbers reads as 1
        ",".join(["true"] + ["1.5"] * (N - 1)),  # the first value a boolean: the general rule decides
        ",".join(["true", "false"] * (N // 2)),  # booleans only: refused
        ",".join(["1.5"] * (N - 1) + ['"1.5"']),  # a string
        ",".join(["1.5"] * (N - 1) + ["null"]),  # a null
        ",".join(["1.5"] * (N - 1) + ["[1.5]"]),  # ragged
        # 2**53 + 2**29 + 1: float64 rounds it to a float32 tie, which then rounds down, where int64 -> float32
        # rounds up; among floats numpy too goes through float64
        ",".join(["9007199791611905"] * N),
        ",".join(["9007199791611905", "0.5"] * (N // 2)),
        ",".join(["18446744073709551615", "-1"] * (N // 2)),  # beyond int64
    ]
    return [f"[{t}]" for t in texts]


@pytest.mark.parametrize("text", _random_texts())
@pytest.mark.parametrize("spec", FLOATS, ids=lambda s: s.dtype.name)
def test_fast_and_general_conversions_agree(spec: TensorSpec, text: str) -> None:
    values = _json(text)
    assert len(values) >= N
    _same(*_both(spec, values))


def test_the_fast_conversion_is_taken_and_refusals_keep_their_message(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[bool] = []
    original = tensors._json_floats

    def spy(values: list) -> np.ndarray | None:
        floats = original(values)
        taken.append(floats is not None)
        return floats

    monkeypatch.setattr(tensors, "_json_floats", spy)
    spec = FLOATS[0]
    assert spec.conform([0.25] * N, from_json=True).tolist() == [0.25] * N
    assert taken == [True]
    spec.conform([0.25] * N)  # not from JSON: not offered
    spec.conform([0.25] * (N - 1), from_json=True)  # too short: not offered
    assert taken == [True]
    with pytest.raises(InvalidInput, match="holds bool values, the model expects float32"):
        spec.conform([True, False] * (N // 2), from_json=True)
    with pytest.raises(InvalidInput, match="holds mixed values"):
        spec.conform([0.5] * (N - 1) + [None], from_json=True)
    with pytest.raises(InvalidInput, match=r"has shape \[2048, 2\]"):
        TensorSpec("x", np.dtype("float32"), (-1,)).conform([[0.5, 0.5]] * N, from_json=True)


def test_integer_tensors_and_short_lists_keep_the_general_rule() -> None:
    ids = TensorSpec("ids", np.dtype("int64"), (-1,))
    assert ids.conform(list(range(N)), from_json=True).dtype == np.int64
    with pytest.raises(InvalidInput, match="holds float64 values, the model expects int64"):
        ids.conform([0.5] * N, from_json=True)
    _same(*_both(FLOATS[0], [True] + [0.5] * 10))
