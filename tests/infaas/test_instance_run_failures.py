"""ONNX Runtime failing on a query's values (issue 14, item 10): the sender gets ``InvalidInput`` (a 400) with the
runtime's message, and requests batched with it are not failed for it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from infaas.errors import InvalidInput
from infaas.live_state import MemoryLiveState
from infaas.model_store import LocalModelStore
from infaas.selector import ProfileCurve
from infaas.worker import Instance
from infaas.worker.instance import InferResult
from infaas.worker.remote import RemoteWorkerClient
from tests.factories import GatedSession, profiles, queue_behind_gate, variant_info
from tests.worker_app import served_worker

# y = table[i]: any index past 3 fails inside ONNX Runtime ("indices element out of data bounds").
_GRAPH = helper.make_graph(
    [helper.make_node("Gather", ["table", "i"], ["y"])],
    "gather",
    [helper.make_tensor_value_info("i", TensorProto.INT64, ["n"])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    [numpy_helper.from_array(np.arange(4, dtype=np.float32) * 10, "table")],
)
_MODEL = helper.make_model(_GRAPH, opset_imports=[helper.make_opsetid("", 17)])
_MODEL.ir_version = 8


def _gated_session() -> GatedSession:
    return GatedSession(ort.InferenceSession(_MODEL.SerializeToString(), providers=["CPUExecutionProvider"]))


def _instance(session: GatedSession) -> Instance:
    curve = ProfileCurve.of(variant_info("gather", "v", profiles({1: 1.0, 4: 2.0})))
    return Instance("gather/v", lambda: session, curve)


def test_a_failing_run_is_invalid_input_with_the_runtimes_message() -> None:
    session = _gated_session()
    session.gate.set()
    instance = _instance(session)
    assert instance.infer({"i": np.array([2], np.int64)}).outputs["y"].tolist() == [20.0]
    with pytest.raises(InvalidInput, match=r"could not run on this input: .*out of data bounds.*idx=9"):
        instance.infer({"i": np.array([9], np.int64)})
    assert instance.outstanding == 0  # the replica went back to the pool
    assert instance.infer({"i": np.array([3], np.int64)}).outputs["y"].tolist() == [30.0]
    instance.close()


def test_only_the_failing_request_of_a_batch_gets_the_error() -> None:
    session = _gated_session()
    instance = _instance(session)
    outcomes: dict[int, InferResult | BaseException] = {}

    def send(key: int, index: int) -> None:
        try:
            outcomes[key] = instance.infer({"i": np.array([index], np.int64)})
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertions
            outcomes[key] = exc

    queued = [lambda k=k, index=index: send(k, index) for k, index in enumerate([1, 99, 2])]
    session.release(queue_behind_gate(instance, session, lambda: send(-1, 0), queued))
    assert [1, 99, 2] in [feeds["i"].tolist() for feeds in session.feeds]  # run together once, and that run failed
    assert isinstance(outcomes[1], InvalidInput) and "idx=99" in str(outcomes[1])
    assert outcomes[0].outputs["y"].tolist() == [10.0]  # type: ignore[union-attr]
    assert outcomes[2].outputs["y"].tolist() == [20.0]  # type: ignore[union-attr]
    assert instance.outstanding == 0
    instance.close()


def test_a_remote_worker_passes_the_failure_back_as_invalid_input(tmp_path: Path) -> None:
    """Over HTTP the worker answers 400 marked as bad input; the front-end raises ``InvalidInput``, not a worker
    failure (which would retry the query elsewhere and end in a 503)."""
    store = LocalModelStore(tmp_path / "store")
    store.put_bytes("gather/model.onnx", _MODEL.SerializeToString())
    with served_worker(store, MemoryLiveState(), memory_budget_mb=100) as url:
        variant = variant_info("gather", "fp32", profiles({1: 0.1}), artifact_key="gather/model.onnx")
        client = RemoteWorkerClient("w", url)
        assert client.infer(variant, {"i": np.array([1], np.int64)}, None).outputs["y"].tolist() == [10.0]
        with pytest.raises(InvalidInput, match=r"could not run on this input: .*idx=42"):
            client.infer(variant, {"i": np.array([42], np.int64)}, None)
        client.close()


@pytest.mark.parametrize(("budget_s", "runs"), [(2.0, [1, 1, 1, 1]), (None, [1, 3])])
def test_queued_requests_are_not_batched_past_their_deadlines(budget_s: float | None, runs: list[int]) -> None:
    # Profiled 1 s alone and 3 s for 2-4 rows (best batch 4): with a 2 s budget, any two together would be late.
    session = _gated_session()
    curve = ProfileCurve.of(variant_info("gather", "v", profiles({1: 1000.0, 4: 3000.0})))
    instance = Instance("gather/v", lambda: session, curve)

    def send(index: int) -> None:
        deadline = None if budget_s is None else time.monotonic() + budget_s
        instance.infer({"i": np.array([index], np.int64)}, deadline)

    queued = [lambda index=index: send(index) for index in (1, 2, 3)]
    session.release(queue_behind_gate(instance, session, lambda: send(0), queued))
    assert session.batches == runs
    instance.close()
