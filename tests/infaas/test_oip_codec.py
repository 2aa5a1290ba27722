"""The Open Inference Protocol codec, including the binary tensor data extension."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from infaas.oip import OipError, datatype, decode_request, encode_response, numpy_dtype, tensor_metadata
from infaas.tensors import TensorSpec


def binary_body(arrays: dict[str, np.ndarray], extra: dict | None = None) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "datatype": datatype(a.dtype),
                    "shape": list(a.shape),
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in arrays.items()
            ],
            **(extra or {}),
        }
    )
    return header + b"".join(a.tobytes() for a in arrays.values()), len(header)


def test_datatypes_round_trip() -> None:
    for name in ("BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64"):
        assert datatype(numpy_dtype(name)) == name
    assert datatype("float32") == "FP32"
    with pytest.raises(OipError):
        numpy_dtype("BYTES")
    with pytest.raises(OipError):
        datatype(np.dtype("complex64"))


def test_decode_binary_inputs() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1], [2]], dtype=np.int64)
    body, length = binary_body({"a": a, "b": b}, {"id": 7, "parameters": {"slo_latency_ms": 5}})
    request = decode_request(body, str(length))
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], b)
    assert request.id == "7" and request.parameters == {"slo_latency_ms": 5}


def test_decode_json_inputs_flat_or_nested() -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "flat", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]},
                {"name": "nested", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        }
    )
    request = decode_request(body, None)
    assert request.inputs["flat"].dtype == np.float32 and request.inputs["flat"].shape == (2, 2)
    assert request.inputs["nested"].dtype == np.int32
    assert [(o.name, o.binary) for o in request.outputs] == [("y", True), ("z", None)]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, b: (h, b, "-1"), "body has"),
        (lambda h, b: (h, b, str(len(h) + len(b) + 1)), "body has"),
        (lambda h, b: (h, b, "x"), "must be an integer"),
        (lambda h, b: (h, b, "2"), "not valid JSON"),
        (lambda h, b: (h, b[:-4], str(len(h))), "runs past the end"),
        (lambda h, b: (h, b + b"\0\0\0\0", str(len(h))), "not claimed"),
        (lambda h, b: (h.replace(b'"binary_data_size":24', b'"binary_data_size":-24'), b, None), "non-negative"),
        (lambda h, b: (h.replace(b'"binary_data_size":24', b'"binary_data_size":20'), b, None), "needs 24"),
        (lambda h, b: (h.replace(b"FP32", b"BYTES"), b, None), "unsupported datatype"),
        (lambda h, b: (h.replace(b"[2,3]", b"[2,-3]"), b, None), "non-negative integers"),
        (lambda h, b: (b"[1]", b, None), "JSON object"),
        (lambda h, b: (b'{"inputs":[]}', b, None), "non-empty list"),
    ],
)
def test_malformed_requests_are_rejected(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    body, length = binary_body({"a": np.zeros((2, 3), np.float32)})
    header, binary = body[:length], body[length:]
    new_header, new_binary, new_length = mutate(header, binary)
    if new_length is None:
        new_length = str(len(new_header))
    with pytest.raises(OipError, match=message):
        decode_request(new_header + new_binary, new_length)


def test_json_data_errors() -> None:
    def one(tensor: dict) -> None:
        decode_request(orjson.dumps({"inputs": [tensor]}), None)

    with pytest.raises(OipError, match="needs 4"):
        one({"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]})
    with pytest.raises(OipError, match="not a list of FP32"):
        one({"name": "a", "datatype": "FP32", "shape": [1], "data": [{"x": 1}]})
    with pytest.raises(OipError, match="not a list of INT32"):  # JSON values follow TensorSpec.conform's rule
        one({"name": "a", "datatype": "INT32", "shape": [1], "data": [1.5]})
    with pytest.raises(OipError, match="neither 'data' nor binary_data_size"):
        one({"name": "a", "datatype": "FP32", "shape": [1]})
    with pytest.raises(OipError, match="given twice"):
        t = {"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}
        decode_request(orjson.dumps({"inputs": [t, t]}), None)


def test_encode_json_and_binary_outputs() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    z = np.array([1, 0], dtype=np.int64)
    body, length = binary_body({"a": np.zeros(1, np.float32)}, {"id": "q", "parameters": {"binary_data_output": True}})
    request = decode_request(body, length)
    out, header_length = encode_response(request, "m", {"y": y, "z": z}, {"variant": "m/v"})
    assert header_length is not None
    document = orjson.loads(out[:header_length])
    assert document["id"] == "q" and document["parameters"] == {"variant": "m/v"}
    assert [t["parameters"]["binary_data_size"] for t in document["outputs"]] == [24, 16]
    raw = out[header_length:]
    np.testing.assert_array_equal(np.frombuffer(raw[:24], np.float32).reshape(2, 3), y)
    np.testing.assert_array_equal(np.frombuffer(raw[24:], np.int64), z)

    json_request = decode_request(
        orjson.dumps(
            {
                "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [0]}],
                "outputs": [{"name": "z", "parameters": {"binary_data": False}}],
            }
        ),
        None,
    )
    out, header_length = encode_response(json_request, "m", {"y": y, "z": z}, {})
    assert header_length is None
    assert orjson.loads(out)["outputs"] == [{"name": "z", "datatype": "INT64", "shape": [2], "data": [1, 0]}]
    bad = decode_request(
        orjson.dumps(
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [0]}], "outputs": [{"name": "q"}]}
        ),
        None,
    )
    with pytest.raises(OipError, match="unknown output"):
        encode_response(bad, "m", {"y": y}, {})


def test_tensor_metadata() -> None:
    assert tensor_metadata(TensorSpec.from_json({"name": "x", "dtype": "float32", "shape": [-1, 4]})) == {
        "name": "x",
        "datatype": "FP32",
        "shape": [-1, 4],
    }
