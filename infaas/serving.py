"""The query engine: validate inputs, select a variant, dispatch to a worker, record what happened.

Everything on the per-query path is in memory: the candidate cache (no SQL), a live-state
snapshot, the pure selector, and a direct call into the worker (which runs idle instances on the
caller's thread). Routes call ``QueryEngine.infer`` from a worker thread (it blocks while the
model runs) and map the exceptions below to HTTP statuses.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from infaas.candidates import CandidateCache
from infaas.catalog import ModelInfo
from infaas.live_state import LiveSnapshot, LiveState, MemoryLiveState, QueryRecord
from infaas.selector import AccuracyUnavailable, Candidate, Decision, NoWorkerAvailable, Requirements, select
from infaas.services import Services
from infaas.worker import InferResult, LocalWorker, WorkerClient, WorkerError
from infaas.worker.remote import RemoteWorkerClient, WorkerUnavailable

log = logging.getLogger(__name__)


class QueryError(Exception):
    """A query that cannot be served; ``status`` is the HTTP status routes answer with."""

    status = 500


class InvalidInput(QueryError):
    """Wrong input names, dtype or shape, or too many rows/inputs."""

    status = 400


class UnknownModel(QueryError):
    """No such model or task, or none the caller may use (indistinguishable on purpose)."""

    status = 404


class ModelNotReady(QueryError):
    """The model exists but has no ready, profiled variant yet (or no worker can take it)."""

    status = 503


@dataclass(frozen=True)
class TensorSpec:
    """A model input as registered: numpy dtype and shape with ``-1`` for dynamic dimensions."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TensorSpec:
        """From the catalog's ``{"name", "dtype", "shape"}`` dict."""
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in raw.get("shape") or ())
        return cls(name=str(raw["name"]), dtype=np.dtype(raw["dtype"]), shape=shape)


@dataclass(frozen=True)
class ServedBy:
    """How a query was served: returned to the caller and recorded in live state."""

    model: str
    variant: str
    worker: str
    rows: int  # rows in this query
    batch: int  # rows in the session run the query was part of (≥ rows when batched with others)
    estimated_ms: float
    actual_ms: float
    queue_ms: float
    service_ms: float
    cost: float
    slo_at_risk: bool
    reason: str


def _kind_ok(expected: np.dtype, got: np.dtype) -> bool:
    """JSON numbers may feed float tensors; integer tensors need integers; bool needs bool."""
    if expected.kind == "f":
        return got.kind in "iuf"
    if expected.kind in "iu":
        return got.kind in "iu"
    return got.kind == expected.kind


def _to_array(spec: TensorSpec, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.dtype != spec.dtype:
            raise InvalidInput(f"input {spec.name!r} has dtype {value.dtype}, the model expects {spec.dtype}")
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {spec.name!r} is not a rectangular array of numbers") from exc
    if array.dtype == object or not _kind_ok(spec.dtype, array.dtype):
        raise InvalidInput(
            f"input {spec.name!r} holds {array.dtype.name if array.dtype != object else 'mixed'} values, "
            f"the model expects {spec.dtype}"
        )
    if spec.dtype.kind in "iu" and array.size:
        limits = np.iinfo(spec.dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise InvalidInput(f"input {spec.name!r} has values outside the range of {spec.dtype}")
    return array.astype(spec.dtype, copy=False)


def check_limits(inputs: Mapping[str, Any], max_batch: int, max_inputs: int) -> None:
    """The per-query limits, checked before anything about the model so that an over-limit query gets
    its 400 whatever state the model is in (and costs no conversion work)."""
    if len(inputs) > max_inputs:
        raise InvalidInput(f"{len(inputs)} inputs sent; at most {max_inputs} are accepted")
    for name, value in inputs.items():
        if isinstance(value, np.ndarray):
            rows = value.shape[0] if value.ndim else 1
        else:
            rows = len(value) if isinstance(value, list | tuple) else 1
        if rows > max_batch:
            raise InvalidInput(
                f"input {name!r} has {rows} rows; at most {max_batch} per query (INFAAS_MAX_BATCH_PER_QUERY)"
            )


def validate_inputs(
    specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any], max_batch: int, max_inputs: int
) -> tuple[dict[str, np.ndarray], int]:
    """Arrays of the model's dtypes and shapes, and the query's batch (rows); ``InvalidInput`` if not."""
    if len(inputs) > max_inputs:
        raise InvalidInput(f"{len(inputs)} inputs sent; at most {max_inputs} are accepted")
    expected = {s.name for s in specs}
    if inputs.keys() != expected:
        missing = sorted(expected - inputs.keys())
        extra = sorted(inputs.keys() - expected)
        parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""]
        raise InvalidInput(f"inputs {'; '.join(p for p in parts if p)}; the model takes {sorted(expected)}")
    arrays: dict[str, np.ndarray] = {}
    batch: int | None = None
    for spec in specs:
        array = _to_array(spec, inputs[spec.name])
        shape = array.shape
        if len(shape) != len(spec.shape) or any(
            want > 0 and got != want for want, got in zip(spec.shape, shape, strict=True)
        ):
            wanted = ["N" if i == 0 and d < 0 else ("?" if d < 0 else d) for i, d in enumerate(spec.shape)]
            raise InvalidInput(f"input {spec.name!r} has shape {list(shape)}, the model expects {wanted}")
        rows = shape[0] if shape else 1
        if batch is None:
            batch = rows
        elif rows != batch:
            raise InvalidInput(f"inputs disagree on the batch size ({batch} and {rows} rows)")
        arrays[spec.name] = array
    batch = batch or 0
    if batch < 1:
        raise InvalidInput("the batch is empty: send at least one row")
    if batch > max_batch:
        raise InvalidInput(f"{batch} rows sent; at most {max_batch} per query (INFAAS_MAX_BATCH_PER_QUERY)")
    return arrays, batch


# A query expected to run this fast on an idle, loaded instance may run on the event loop's thread
# (skipping the thread-pool hop); anything slower, queued or cold goes through the pool.
INLINE_MAX_MS = 1.0


@dataclass(frozen=True)
class Plan:
    """A validated, selected query, ready to run."""

    requirements: Requirements
    decision: Decision
    client: WorkerClient
    arrays: dict[str, np.ndarray]
    start: float  # time.monotonic() when the query arrived
    tenant: str
    candidates: tuple[Candidate, ...] = ()  # to choose again if the chosen worker turns out to be gone


class QueryEngine:
    """Serves queries: candidate cache + live state + selector + workers."""

    def __init__(self, services: Services, live: LiveState, cache: CandidateCache) -> None:
        self.services = services
        self.live = live
        self.cache = cache
        self._workers: dict[str, WorkerClient] = {}
        self._remote: dict[str, RemoteWorkerClient] = {}  # workers in other processes, by id
        self._avoid: dict[str, float] = {}  # worker id -> monotonic time until which it is skipped
        self._local: LocalWorker | None = None
        self._specs: dict[str, tuple[ModelInfo, tuple[TensorSpec, ...]]] = {}
        settings = services.settings
        self._prices = dict(settings.prices)
        self._max_batch = settings.max_batch_per_query
        self._max_inputs = settings.max_inputs_per_request
        self._started = False
        self._lock = threading.Lock()
        services.metadata.add_listener(self._catalog_changed)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the in-process worker (when configured) and register it in live state."""
        if self._started:  # get_engine calls this per request: no lock once started
            return
        with self._lock:
            if self._started:
                return
            settings = self.services.settings
            if settings.in_process_worker:
                self._local = LocalWorker(
                    settings.worker_id or "local",
                    self.services.store,
                    self.live,
                    memory_budget_mb=settings.worker_memory_mb,
                    cores=settings.worker_cores,
                    heartbeat_s=settings.heartbeat_s,
                )
                self._local.start()
                self.add_worker(self._local)
            self._started = True

    def stop(self) -> None:
        """Unload everything and leave live state."""
        with self._lock:
            if self._local is not None:
                self._local.stop()
                self._workers.pop(self._local.id, None)
                self._local = None
            for client in self._remote.values():
                client.close()
            self._remote.clear()
            self._started = False

    def add_worker(self, client: WorkerClient) -> None:
        """Make a worker reachable by id (the in-process one, or a remote client)."""
        self._workers[client.id] = client

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker client."""
        self._workers.pop(worker_id, None)

    def worker(self, worker_id: str) -> WorkerClient | None:
        """A worker client by id (the autoscaler drives replicas through it)."""
        return self._client(worker_id, self.live.snapshot())

    def _client(self, worker_id: str, snapshot: LiveSnapshot) -> WorkerClient | None:
        """The in-process worker, or a pooled HTTP client for a worker another process registered."""
        client = self._workers.get(worker_id)
        if client is not None:
            return client
        state = next((w for w in snapshot.workers if w.id == worker_id), None)
        if state is None or not state.address.startswith(("http://", "https://")):
            return None
        remote = self._remote.get(worker_id)
        if remote is not None and remote.address == state.address:
            return remote
        with self._lock:
            remote = self._remote.get(worker_id)
            if remote is None or remote.address != state.address:  # new, or restarted elsewhere
                on_depth = functools.partial(self.live.note_local_depth, worker_id)
                remote = self._remote[worker_id] = RemoteWorkerClient(worker_id, state.address, on_depth=on_depth)
            return remote

    def _snapshot(self) -> LiveSnapshot:
        """Live state without the workers this front-end just failed to reach."""
        snapshot = self.live.snapshot()
        if not self._avoid:
            return snapshot
        now = time.monotonic()
        for worker_id, until in list(self._avoid.items()):
            if until <= now:
                self._avoid.pop(worker_id, None)
        return replace(snapshot, workers=tuple(w for w in snapshot.workers if w.id not in self._avoid))

    def catalog_changed_elsewhere(self, model_name: str) -> None:
        """Another process changed the catalog (heard through live state): refresh as for a local change."""
        self.cache.invalidate()
        self._catalog_changed(model_name)

    # -- catalog ------------------------------------------------------------------------------
    def _catalog_changed(self, model_name: str) -> None:
        """Unload local instances of variants that are no longer ready (deleted or rebuilt)."""
        local = self._local
        if local is None:
            return
        prefix = f"{model_name}/"
        loaded = [i.variant_key for i in local.status().instances if i.variant_key.startswith(prefix)]
        if not loaded:
            return
        try:
            ready = {c.key: c.variant.artifact_key for c in self.cache.for_model(model_name)}
        except Exception:  # the catalog may be mid-change; a stale instance is harmless for a while
            log.exception("could not refresh candidates after a change to %s", model_name)
            return
        for key in loaded:
            if key not in ready:
                local.unload(key)

    def _signature(self, model: ModelInfo) -> tuple[TensorSpec, ...]:
        cached = self._specs.get(model.name)
        if cached is not None and cached[0] is model:
            return cached[1]
        specs = tuple(TensorSpec.parse(raw) for raw in model.inputs)
        self._specs[model.name] = (model, specs)
        return specs

    def resolve(self, allowed: Callable[[ModelInfo], bool], model: str | None, task: str | None) -> list[ModelInfo]:
        """The models a query may use; ``UnknownModel`` when there are none."""
        if model is not None:
            info = self.cache.model(model)
            if info is None or not allowed(info):
                raise UnknownModel(f"model {model!r} not found")
            return [info]
        if task is None:
            raise InvalidInput("name a model or a task")
        models = [m for m in self.cache.models_for_task(task) if allowed(m)]
        if not models:
            raise UnknownModel(f"no model registered for task {task!r}")
        return models

    # -- queries ------------------------------------------------------------------------------
    def plan(
        self,
        allowed: Callable[[ModelInfo], bool],
        requirements: Requirements,
        inputs: Mapping[str, Any],
        *,
        tenant: str = "",
    ) -> Plan:
        """Validate and select without running anything: cheap and non-blocking (no I/O, no waits)."""
        start = time.monotonic()
        models = self.resolve(allowed, requirements.model, requirements.task)
        candidates, arrays, batch = self._candidates(models, inputs)
        requirements = replace(requirements, batch=batch)
        snapshot = self._snapshot()
        decision = select(requirements, candidates, snapshot, self._prices)
        client = self._client(decision.worker, snapshot)
        if client is None:
            raise ModelNotReady(f"worker {decision.worker!r} is not reachable from this front-end")
        return Plan(requirements, decision, client, arrays, start, tenant, tuple(candidates))

    def run(self, plan: Plan) -> tuple[dict[str, np.ndarray], ServedBy]:
        """Run a plan, waiting for a replica (and loading the variant) if needed: blocking."""
        latency_ms = plan.requirements.latency_ms
        deadline = plan.start + latency_ms / 1000.0 if latency_ms is not None else None
        try:
            try:
                result = plan.client.infer(plan.decision.variant, plan.arrays, deadline)
            except WorkerUnavailable as exc:
                # The worker died or cannot be reached: skip it until the registry forgets it, and
                # run the query once more on the best remaining worker (inference is idempotent).
                log.warning("%s; retrying the query on another worker", exc)
                self._avoid[plan.client.id] = time.monotonic() + self.services.settings.heartbeat_ttl_s
                snapshot = self._snapshot()
                decision = select(plan.requirements, plan.candidates, snapshot, self._prices)
                client = self._client(decision.worker, snapshot)
                if client is None:
                    raise ModelNotReady(f"worker {decision.worker!r} is not reachable from this front-end") from exc
                plan = replace(plan, decision=decision, client=client)
                result = client.infer(decision.variant, plan.arrays, deadline)
        except WorkerError as exc:
            raise ModelNotReady(str(exc)) from exc
        return result.outputs, self._account(plan, result)

    def try_run_inline(self, plan: Plan) -> tuple[dict[str, np.ndarray], ServedBy] | None:
        """Run a plan on this thread only if it can start at once and should take under
        ``INLINE_MAX_MS``; otherwise return ``None`` having done nothing (then call ``run``).
        """
        decision = plan.decision
        if not decision.loaded or decision.candidate.curve.service_ms(decision.batch) > INLINE_MAX_MS:
            return None
        result = plan.client.try_infer_now(decision.variant, plan.arrays)
        if result is None:
            return None
        return result.outputs, self._account(plan, result)

    def infer(
        self,
        allowed: Callable[[ModelInfo], bool],
        requirements: Requirements,
        inputs: Mapping[str, Any],
        *,
        tenant: str = "",
    ) -> tuple[dict[str, np.ndarray], ServedBy]:
        """Serve one query (blocking); raises ``QueryError`` subclasses or the selector's ``SelectionError``."""
        return self.run(self.plan(allowed, requirements, inputs, tenant=tenant))

    def _account(self, plan: Plan, result: InferResult) -> ServedBy:
        """Record the query in live state and describe how it was served."""
        actual_ms = (time.monotonic() - plan.start) * 1000.0
        decision, requirements = plan.decision, plan.requirements
        variant = decision.variant
        self.live.record_query(
            QueryRecord(
                at=time.time(),
                tenant=plan.tenant,
                model=variant.model_name,
                variant=variant.name,
                worker=decision.worker,
                batch=decision.batch,
                latency_ms=requirements.latency_ms,
                min_accuracy=requirements.min_accuracy,
                max_cost=requirements.max_cost,
                estimated_ms=decision.estimated_ms,
                actual_ms=actual_ms,
                queue_ms=result.queue_ms,
                cost=decision.estimated_cost,
                slo_at_risk=decision.slo_at_risk,
                reason=decision.reason,
            )
        )
        return ServedBy(
            model=variant.model_name,
            variant=variant.name,
            worker=decision.worker,
            rows=decision.batch,
            batch=result.batch,
            estimated_ms=decision.estimated_ms,
            actual_ms=actual_ms,
            queue_ms=result.queue_ms,
            service_ms=result.service_ms,
            cost=decision.estimated_cost,
            slo_at_risk=decision.slo_at_risk,
            reason=decision.reason,
        )

    def _candidates(
        self, models: list[ModelInfo], inputs: Mapping[str, Any]
    ) -> tuple[list[Candidate], dict[str, np.ndarray], int]:
        """Ready candidates of the models whose signature the inputs fit, with the converted inputs."""
        check_limits(inputs, self._max_batch, self._max_inputs)
        ready = [m for m in models if self.cache.for_model(m.name)]
        if not ready:
            first = models[0]
            why = f" ({first.status_reason})" if first.status_reason else ""
            what = f"model {first.name!r}" if len(models) == 1 else f"no model for task {first.task!r}"
            raise ModelNotReady(f"{what} is not ready: status {first.status}{why}")
        first_error: InvalidInput | None = None
        converted: dict[tuple[TensorSpec, ...], tuple[dict[str, np.ndarray], int]] = {}
        candidates: list[Candidate] = []
        chosen: tuple[dict[str, np.ndarray], int] | None = None
        for model in ready:
            specs = self._signature(model)
            if specs not in converted:
                try:
                    converted[specs] = validate_inputs(specs, inputs, self._max_batch, self._max_inputs)
                except InvalidInput as exc:
                    first_error = first_error or exc
                    continue
            # One array set per query: models of a task must share the first fitting signature.
            if chosen is None:
                chosen = converted[specs]
            elif converted[specs] is not chosen:
                continue
            candidates.extend(self.cache.for_model(model.name))
        if chosen is None:
            assert first_error is not None
            raise first_error
        return candidates, chosen[0], chosen[1]


def error_status(exc: Exception) -> int | None:
    """The HTTP status for a query failure, or ``None`` if it is not one (a bug: answer 500)."""
    if isinstance(exc, QueryError):
        return exc.status
    if isinstance(exc, AccuracyUnavailable):
        return 422
    if isinstance(exc, NoWorkerAvailable):
        return 503
    return None


def build_engine(services: Services) -> QueryEngine:
    """The engine over this process's services; kept in ``services.extras["engine"]``.

    Uses ``services.extras["live_state"]`` when one was installed (e.g. Redis), else in-memory.
    """
    live = services.extras.get("live_state")
    if live is None:
        live = services.extras["live_state"] = MemoryLiveState()
    engine = QueryEngine(services, live, CandidateCache(services.metadata))
    live.on_catalog_change(engine.catalog_changed_elsewhere)
    services.extras["engine"] = engine
    return engine


_ENGINE_LOCK = threading.Lock()


def get_engine(services: Services) -> QueryEngine:
    """The started engine, built on first use when the app lifespan did not build it."""
    engine = services.extras.get("engine")
    if engine is None:
        with _ENGINE_LOCK:
            engine = services.extras.get("engine") or build_engine(services)
    engine.start()  # idempotent: an engine built elsewhere (e.g. by the autoscaler) may not be started yet
    return engine


__all__ = [
    "AccuracyUnavailable",
    "InvalidInput",
    "ModelNotReady",
    "NoWorkerAvailable",
    "Plan",
    "QueryEngine",
    "QueryError",
    "ServedBy",
    "UnknownModel",
    "build_engine",
    "error_status",
    "get_engine",
    "validate_inputs",
]
