"""What tests build: tiny ONNX models, a session that runs only when the test lets it, catalog records,
models seeded into a live store and catalog, registrations over REST, the environment of a scaled-out
deployment, and the polling that waits for a state instead of sleeping a fixed time.

One module, so that a test that needs "a ready model with a profiled variant" does not grow its own
variant of it: when the catalog changes shape, this is the one place to follow it.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from infaas.catalog import ModelInfo, ProfileInfo, VariantInfo
from infaas.db.models import ModelStatus, VariantStatus
from infaas.metadata import NewModel
from infaas.onnx_check import check_model_bytes
from infaas.services import Services
from infaas.tensors import TensorSpec
from infaas.worker import Instance
from tests.redis_server import REDIS_URL

TASK = "tabular-classification"

T = TypeVar("T")

# -- ONNX models ---------------------------------------------------------------------------------


def mlp_model(in_dim: int = 8, hidden: int = 16, classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A 2-layer MLP classifier with a dynamic batch axis: input ``x`` [batch, in_dim] → ``y`` [batch, classes]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(in_dim, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(size=(hidden,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(hidden, classes)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "b2")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_mlp(path: Path, **kwargs: int) -> Path:
    """Write ``mlp_model(**kwargs)`` to ``path``."""
    onnx.save(mlp_model(**kwargs), path)
    return path


def linear_model(in_dim: int = 4, out_dim: int = 3, seed: int = 0) -> bytes:
    """``y = x @ W + b`` with a dynamic batch axis: the smallest model whose outputs are easy to check."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((in_dim, out_dim)).astype(np.float32)
    bias = rng.standard_normal(out_dim).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_dim])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def write_validation(
    path: Path, in_dim: int = 8, samples: int = 64, classes: int = 3, seed: int = 1, input_name: str = "x"
) -> Path:
    """A validation ``.npz`` for the MLP: random inputs and labels from the model's own argmax-ish rule."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(samples, in_dim)).astype(np.float32)
    labels = rng.integers(0, classes, size=samples).astype(np.int64)
    np.savez(path, **{input_name: inputs, "labels": labels})
    return path


def reference_outputs(model: bytes | Path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime itself computes for input ``x`` of a single-input, single-output model."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (an offline job's input)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class GatedSession:
    """A real ONNX Runtime session whose runs wait for ``gate``, so that requests sent meanwhile queue up
    deterministically behind the first one and are run together (or not) as the batching decides.

    ``entered`` is set when a run starts; ``feeds`` keeps every run's inputs, in order.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.feeds: list[dict[str, np.ndarray]] = []

    @property
    def batches(self) -> list[int]:
        """The rows of each run (its first input's leading dimension)."""
        return [int(next(iter(feeds.values())).shape[0]) for feeds in self.feeds]

    def get_inputs(self):  # type: ignore[no-untyped-def]
        return self.session.get_inputs()

    def get_outputs(self):  # type: ignore[no-untyped-def]
        return self.session.get_outputs()

    def run(self, names, feeds):  # type: ignore[no-untyped-def]
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        self.feeds.append(feeds)
        return self.session.run(names, feeds)

    def release(self, threads: Iterable[threading.Thread]) -> None:
        """Open the gate and wait (up to 5 s each) for ``threads``, the requests it held, to finish."""
        self.gate.set()
        for thread in threads:
            thread.join(5)


def queue_behind_gate(
    instance: Instance, gated: GatedSession, blocker: Callable[[], object], queued: Sequence[Callable[[], object]]
) -> list[threading.Thread]:
    """Start ``blocker`` and wait until its run holds ``gated``; then start each of ``queued`` in turn, waiting
    until ``instance`` has queued it, so that the queue order is the order given. Return the threads, the
    blocker's first; ``gated.release`` runs them."""
    threads = [threading.Thread(target=blocker)]
    threads[0].start()
    assert gated.entered.wait(5), "the blocking request never reached the session"
    for count, request in enumerate(queued, start=1):
        thread = threading.Thread(target=request)
        thread.start()
        threads.append(thread)
        assert wait_for(lambda n=count: len(instance._pending) == n, interval_s=0.001), f"request {count} did not queue"
    return threads


# -- catalog records, in memory ------------------------------------------------------------------


def profiles(
    p50_ms: Mapping[int, float],
    *,
    threads: int = 1,
    accuracy: float | None = 0.9,
    memory_mb: float = 10.0,
    p99_factor: float = 1.5,
    load_ms: float = 5.0,
) -> tuple[ProfileInfo, ...]:
    """Profiles at the given batch sizes, with the throughput that follows from each p50, as measured."""
    return tuple(
        ProfileInfo(
            batch_size=batch,
            threads=threads,
            load_ms=load_ms,
            latency_p50_ms=ms,
            latency_p99_ms=ms * p99_factor,
            throughput_per_s=batch * 1000.0 / ms,
            memory_mb=memory_mb,
            accuracy=accuracy,
        )
        for batch, ms in sorted(p50_ms.items())
    )


def model_info(
    name: str,
    *,
    task: str = "classify",
    inputs: Sequence[dict[str, Any]] = (),
    outputs: Sequence[dict[str, Any]] = (),
    max_batch: int = 16,
    status: str = "ready",
) -> ModelInfo:
    """A model as the catalog returns it, for code that takes a ``ModelInfo`` and needs no database;
    ``inputs``/``outputs`` in their stored JSON form."""
    return ModelInfo(
        id=1,
        name=name,
        task=task,
        framework="onnx",
        inputs=tuple(TensorSpec.from_json(s) for s in inputs),
        outputs=tuple(TensorSpec.from_json(s) for s in outputs),
        opset=17,
        declared_accuracy=None,
        max_batch=max_batch,
        owner="test",
        public=True,
        status=status,
        status_reason=None,
        artifact_key=artifact_key_of(name),
        validation_key=None,
        size_bytes=1,
        created_at=datetime.now(UTC),
    )


def variant_info(
    model: str,
    name: str,
    measured: tuple[ProfileInfo, ...],
    *,
    artifact_key: str | None = "a",
    kind: str = "fp32",
    hardware: str = "cpu",
) -> VariantInfo:
    """A ready variant as the catalog returns it; its thread count is that of its profiles."""
    return VariantInfo(
        id=1,
        model_name=model,
        name=name,
        kind=kind,
        precision="fp32",
        hardware=hardware,
        threads=measured[0].threads,
        providers=("CPUExecutionProvider",),
        artifact_key=artifact_key,
        status=VariantStatus.READY,
        reason=None,
        profiles=measured,
    )


# -- models seeded into a store and catalog ------------------------------------------------------


def add_model_row(
    services: Services,
    name: str,
    model: bytes,
    *,
    task: str,
    status: str = ModelStatus.PENDING,
    declared_accuracy: float | None = None,
    max_batch: int = 16,
    owner: str = "local",
    public: bool = False,
    validation_key: str | None = None,
) -> bytes:
    """Record ``model``'s catalog row, with the tensors, opset, rewrites and input shapes the registration check
    reads from it, and store no file; return the bytes registration would store (the check's rewrite, or ``model``).

    On its own, for a test of what a row without its files means (the orphan sweep); ``seed_model`` adds
    the files.
    """
    checked = check_model_bytes(model)
    stored = checked.artifact if checked.artifact is not None else model
    services.metadata.add_model(
        NewModel(
            name=name,
            task=task,
            inputs=checked.inputs,
            outputs=checked.outputs,
            opset=checked.opset,
            rewrites=checked.rewrites,
            input_shapes=checked.input_shapes,
            declared_accuracy=declared_accuracy,
            max_batch=max_batch,
            owner=owner,
            public=public,
            artifact_key=artifact_key_of(name),
            validation_key=validation_key,
            size_bytes=len(stored),
            status=status,
        )
    )
    return stored


def artifact_key_of(name: str) -> str:
    """Where registration stores a model's file."""
    return f"models/{name}/model.onnx"


def seed_model(
    services: Services,
    name: str,
    model: bytes,
    *,
    task: str,
    declared_accuracy: float | None = None,
    max_batch: int = 16,
    owner: str = "local",
    public: bool = False,
    validation: bytes | None = None,
    variants: Mapping[str, tuple[ProfileInfo, ...]] | None = None,
    variant_status: str = VariantStatus.READY,
) -> None:
    """Store a model and record it with profiled CPU variants, as registration and the variant build would.

    Registration's field checks and build queue are skipped on purpose: a test of serving, jobs or
    scaling wants a model in a known state now, not a build that races the test. Each variant serves
    the model's own file and runs with the threads of its profiles.
    """
    artifact_key = artifact_key_of(name)
    validation_key = f"models/{name}/validation.npz" if validation is not None else None
    stored = add_model_row(
        services,
        name,
        model,
        task=task,
        declared_accuracy=declared_accuracy,
        max_batch=max_batch,
        owner=owner,
        public=public,
        validation_key=validation_key,
    )
    services.store.put_bytes(artifact_key, stored)
    if validation is not None and validation_key is not None:
        services.store.put_bytes(validation_key, validation)
    for variant, measured in (variants or {}).items():
        services.metadata.upsert_variant(
            name,
            variant,
            kind="fp32",
            precision="fp32",
            hardware="cpu",
            threads=measured[0].threads,
            providers=["CPUExecutionProvider"],
            status=variant_status,
            artifact_key=artifact_key,
        )
        services.metadata.replace_profiles(name, variant, measured)


# -- the REST API --------------------------------------------------------------------------------


def upload_model(
    client: httpx.Client,
    name: str,
    model_bytes: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    validation: bytes | None = None,
    filename: str = "m.onnx",
    **form_fields: str,
) -> httpx.Response:
    """``POST /v1/models`` as a client registers: the model (uploaded as ``filename``) and validation set as
    files, ``name`` and the ``task`` (``TASK`` unless given) with any other ``form_fields`` as form values."""
    files = {"model": (filename, model_bytes, "application/octet-stream")}
    if validation is not None:
        files["validation"] = ("v.npz", validation, "application/octet-stream")
    data = {"name": name, "task": TASK, **form_fields}
    return client.post("/v1/models", data=data, files=files, headers=headers)


# -- scaled-out deployments ----------------------------------------------------------------------


def scaled_out_env(database_url: str, redis_prefix: str, store: Path, **settings: object) -> dict[str, str]:
    """The environment of processes that share one PostgreSQL catalog, one Redis (under ``redis_prefix``) and
    one model store, with no in-process worker; ``settings`` add ``INFAAS_<NAME>`` values (``heartbeat_s=0.5``).

    Settings this process inherited that would point the children elsewhere (a broker, an admin key, a
    worker id) are dropped.
    """
    env = {
        **os.environ,
        "INFAAS_DATABASE_URL": database_url,
        "INFAAS_REDIS_URL": REDIS_URL,
        "INFAAS_REDIS_PREFIX": redis_prefix,
        "INFAAS_MODEL_STORE": str(store),
        "INFAAS_IN_PROCESS_WORKER": "false",
    }
    for key in ("INFAAS_BROKER_URL", "INFAAS_ADMIN_KEY", "INFAAS_WORKER_ID"):
        env.pop(key, None)
    for key, value in settings.items():
        env[f"INFAAS_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


# -- waiting -------------------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], T], timeout_s: float = 5.0, *, until: Callable[[T], object] = bool, interval_s: float = 0.05
) -> T:
    """Call ``probe`` until ``until`` accepts its value or ``timeout_s`` passes; return the last value.

    Concurrent code reaches a state at its own pace: a test polls for the state (and asserts on what
    this returns) rather than sleeping a guess that is too short on a loaded machine.
    """
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = probe()
    return value


def wait_for_job(client: TestClient, job_id: str, timeout_s: float = 30.0, headers: dict | None = None) -> dict:
    """The job's description once it is done or failed."""
    body = wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=headers).json(),
        timeout_s,
        until=lambda b: b["status"] in {"done", "failed"},
    )
    assert body["status"] in {"done", "failed"}, f"job {job_id} did not finish: {body}"
    return body
