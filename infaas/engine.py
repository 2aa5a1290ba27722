"""The query engine: one entry point that serves a query — select, run, record — in memory.

Everything on the per-query path is in memory: the candidate cache (no SQL), a live-state snapshot, the
pure selector, and a direct call into the worker (which runs idle instances on the caller's thread).
HTTP adapters (``/v1/infer``, OIP infer) hand ``serve`` a parse function and the body size; the engine
decides which thread parses and runs the query (``infaas.offload``), and raises ``infaas.errors``
subclasses that the API renders in one place.

The engine also learns how far its latency estimates are from what queries take (``infaas.calibration``): every
query served by a loaded instance is observed, and the selector compares the corrected estimate with the budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from infaas import offload, tracing
from infaas.calibration import Calibration
from infaas.candidates import CandidateCache
from infaas.cascade_drift import CascadeMonitor
from infaas.cascade_session import STAGE_OUTPUT, split_stages
from infaas.catalog import ModelInfo
from infaas.errors import InvalidInput, ModelNotReady, UnknownModel
from infaas.fair_share import FairShare
from infaas.fast_selector import fast_select
from infaas.live_state import LiveState, QueryRecord, Rejection
from infaas.metrics import QueryMetrics
from infaas.selector import Candidate, Infeasible, NoWorkerAvailable, Requirements, Selection
from infaas.tensors import TensorSpec, check_limits, conform_inputs
from infaas.worker import InferResult, OutOfMemory, WorkerClient, WorkerError
from infaas.worker.clients import WorkerClients
from infaas.worker.remote import WorkerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    """A parsed query: what it needs, its raw inputs, and who asks."""

    requirements: Requirements
    inputs: Mapping[str, Any]
    allowed: Callable[[ModelInfo], bool] = lambda _model: True  # which models the caller may use
    tenant: str = ""
    # Only these variants (``model/variant`` keys) when any of them is ready: a planned pipeline stage's
    # (``infaas.pipelines.serving``); ``None`` lets the selector choose among every ready one.
    variants: frozenset[str] | None = None


@dataclass(frozen=True)
class ServedBy:
    """How a query was served: returned to the caller and recorded in live state."""

    model: str
    variant: str
    worker: str
    rows: int  # rows in this query
    batch: int  # rows in the session run the query was part of (≥ rows when batched with others)
    estimated_ms: float  # the corrected tail estimate the budget was compared with
    raw_estimated_ms: float  # before correction: profile p99 + queueing + load
    actual_ms: float
    queue_ms: float
    service_ms: float
    cost: float
    slo_at_risk: bool
    reason: str
    # A cascade's (``infaas.cascade_session``): rows its expensive stage answered, their share, and each row's stage.
    cascade: dict[str, Any] | None = None


@dataclass(frozen=True)
class Answer:
    """A served query's outputs and how it was served."""

    outputs: dict[str, np.ndarray]
    served_by: ServedBy
    record: QueryRecord  # what live state recorded (the metrics read the budget and infeasibility from it)


@dataclass(slots=True)
class _Dispatch:
    """A validated, selected query, ready to run. Private and never mutated: not frozen, since a frozen
    dataclass sets each field through ``object.__setattr__`` (one is built per query)."""

    query: Query
    requirements: Requirements  # with the query's batch filled in
    decision: Selection
    client: WorkerClient
    arrays: dict[str, np.ndarray]
    start: float  # time.monotonic() when the query arrived
    candidates: tuple[Candidate, ...]  # to choose again if the chosen worker turns out to be gone


def _inline_ms(decision: Selection, run_ms: Callable[[str, str, float], float]) -> float:
    """How long the chosen run is expected to take, for the event-loop rule (``offload.run_is_short``): its profiled
    median at the query's batch as runs of this placement have been observed to take (``Calibration.run_ms``: the
    worker's own run time, without any wait), or infinite when the variant must be loaded first.

    Not the bare profile: on the trace benchmark's busy two cores at 1.5× load (``benchmarks/trace.py``), the large
    MLP's cascade, profiled well under 1 ms for a 256-row query, took 58% of the loop's samples (py-spy) running
    inline while the queries behind it waited to be planned: 1,954 of 24,507 could not even be sent within their
    budget. Not the latency correction either (this rule's previous reading): its factor includes the waits of the
    thread it ran on, the pool's hop among them, so it had two fixed points, a fast model kept in the pool by what
    the pool made it wait or kept on the loop by never waiting (``infaas.calibration``, run times).
    """
    if not decision.loaded:
        return float("inf")
    return run_ms(decision.candidate.key, decision.worker, decision.candidate.curve.service_ms(decision.batch))


class QueryEngine:
    """Serves queries: candidate cache + live state + selector + worker clients."""

    def __init__(
        self,
        cache: CandidateCache,
        live: LiveState,
        workers: WorkerClients,
        *,
        prices: Mapping[str, float],
        max_batch: int,
        max_inputs: int,
    ) -> None:
        self.cache = cache
        self.live = live
        self.workers = workers
        self._prices = dict(prices)
        self._max_batch = max_batch
        self._max_inputs = max_inputs
        self.calibration = Calibration()
        self.fair_share = FairShare()  # under overload, refuses the at-risk queries of tenants over an equal share
        self.metrics: QueryMetrics | None = None  # set by the app when INFAAS_METRICS is on; None costs nothing
        self.cascades: CascadeMonitor | None = None  # live escalation shares (``infaas.cascade_drift``)

    # -- the entry point ------------------------------------------------------------------------
    async def serve(
        self, parse: Callable[[], tuple[Query, T]], body_bytes: int, endpoint: str = "v1"
    ) -> tuple[Answer, T]:
        """Parse, select, run and record one query; ``parse`` also returns what the adapter needs to render.

        With metrics on (``infaas.metrics``), the query is counted under ``endpoint`` with its outcome,
        failures included (a parse error is a ``client_error`` of that endpoint).
        """
        metrics = self.metrics
        if metrics is None:
            return await self._serve(parse, body_bytes)
        try:
            answer, context = await self._serve(parse, body_bytes)
        except Exception as exc:
            metrics.failed(endpoint, exc)
            raise
        served = answer.served_by
        metrics.served(endpoint, answer.record, served.service_ms, served.batch)
        return answer, context

    async def _serve(self, parse: Callable[[], tuple[Query, T]], body_bytes: int) -> tuple[Answer, T]:
        """``serve`` without the metrics.

        A small body is parsed and planned on the event loop, and the model runs there too when the
        chosen instance is idle and takes under ``offload.INLINE_MAX_MS`` (``_inline_ms``); anything else runs in
        the pool.
        """
        if tracing.ENABLED:
            return await self._serve_traced(parse, body_bytes)
        if not offload.body_is_small(body_bytes):
            return await offload.in_pool(self._parse_and_run, parse)
        query, context = parse()
        plan = self._plan(query)
        ran = await offload.short_inline_else_pool(
            _inline_ms(plan.decision, self.calibration.run_ms),
            lambda: self._try_now(plan),
            lambda: self._run(plan),
        )
        return self._account(*ran), context

    def infer(self, query: Query, endpoint: str | None = None) -> Answer:
        """Serve a query on the calling thread, blocking while it runs (callers already off the event loop:
        a pipeline's stages, benchmarks, the trace replay, tests). With metrics on, counted under ``endpoint``
        when one is given (``"pipeline"``), as ``serve`` counts its queries."""
        metrics = self.metrics
        if metrics is None or endpoint is None:
            return self._infer(query)
        try:
            answer = self._infer(query)
        except Exception as exc:
            metrics.failed(endpoint, exc)
            raise
        metrics.served(endpoint, answer.record, answer.served_by.service_ms, answer.served_by.batch)
        return answer

    def _infer(self, query: Query) -> Answer:
        if tracing.ENABLED:
            with tracing.tracer().start_as_current_span("query"):
                return self._infer_traced(query)
        return self._account(*self._run(self._plan(query)))

    def _parse_and_run(self, parse: Callable[[], tuple[Query, T]]) -> tuple[Answer, T]:
        query, context = parse()
        return self._infer(query), context  # counted by ``serve``

    # -- the same, in spans (only while tracing is on: ``infaas.tracing``) ------------------------
    async def _serve_traced(self, parse: Callable[[], tuple[Query, T]], body_bytes: int) -> tuple[Answer, T]:
        """``serve`` with a ``query`` span around ``parse``, ``select``, ``run`` (and its ``queue``) and ``account``.

        ``run`` is the current span while the worker is called, in the pool too (the pool copies the context),
        so a remote worker's spans join this trace as its children.
        """
        tracer = tracing.tracer()
        with tracer.start_as_current_span("query"):
            if not offload.body_is_small(body_bytes):
                return await offload.in_pool(self._parse_and_infer_traced, parse)
            with tracer.start_as_current_span("parse"):
                query, context = parse()
            plan = self._plan_traced(query)
            with tracer.start_as_current_span("run") as span:
                started_ns = tracing.now_ns()
                ran = await offload.short_inline_else_pool(
                    _inline_ms(plan.decision, self.calibration.run_ms),
                    lambda: self._try_now(plan),
                    lambda: self._run(plan),
                )
                self._describe_run(span, started_ns, *ran)
            with tracer.start_as_current_span("account"):
                return self._account(*ran), context

    def _parse_and_infer_traced(self, parse: Callable[[], tuple[Query, T]]) -> tuple[Answer, T]:
        with tracing.tracer().start_as_current_span("parse"):
            query, context = parse()
        return self._infer_traced(query), context

    def _infer_traced(self, query: Query) -> Answer:
        plan = self._plan_traced(query)
        tracer = tracing.tracer()
        with tracer.start_as_current_span("run") as span:
            started_ns = tracing.now_ns()
            ran = self._run(plan)
            self._describe_run(span, started_ns, *ran)
        with tracer.start_as_current_span("account"):
            return self._account(*ran)

    def _plan_traced(self, query: Query) -> _Dispatch:
        with tracing.tracer().start_as_current_span("select") as span:
            plan = self._plan(query)
            decision = plan.decision
            span.set_attributes(
                {
                    "infaas.model": decision.variant.model_name,
                    "infaas.variant": decision.variant.name,
                    "infaas.worker": decision.worker,
                    "infaas.estimated_ms": decision.estimated_ms,
                    "infaas.slo_at_risk": decision.slo_at_risk,
                }
            )
            return plan

    @staticmethod
    def _describe_run(span: Any, started_ns: int, plan: _Dispatch, result: InferResult) -> None:
        span.set_attributes({"infaas.variant": plan.decision.variant.key, "infaas.worker": plan.client.id})
        tracing.record_run(
            span, started_ns=started_ns, queue_ms=result.queue_ms, service_ms=result.service_ms, batch=result.batch
        )

    # -- plan, run, record ----------------------------------------------------------------------
    def _plan(self, query: Query) -> _Dispatch:
        """Validate and select without running anything: cheap and non-blocking (no I/O, no waits)."""
        start = time.monotonic()
        requirements = query.requirements
        models = self._resolve(query.allowed, requirements.model, requirements.task)
        candidates, arrays, batch = self._candidates(models, query.inputs)
        if query.variants is not None:
            candidates = [c for c in candidates if c.key in query.variants] or candidates
        if requirements.batch != batch:  # ``replace`` costs ~2 µs; most queries already say their batch (1)
            requirements = replace(requirements, batch=batch)
        snapshot = self.workers.snapshot()
        try:
            decision = fast_select(
                requirements, candidates, snapshot, self._prices, correct=self.calibration.correction()
            )
        except Infeasible as refused:
            self._record_rejection(query, refused)
            raise
        self.fair_share.admit(query.tenant, decision.slo_at_risk and not decision.infeasible)
        client = self.workers.get(decision.worker, snapshot)
        if client is None:
            raise ModelNotReady(f"worker {decision.worker!r} is not reachable from this front-end")
        return _Dispatch(query, requirements, decision, client, arrays, start, tuple(candidates))

    def _record_rejection(self, query: Query, refused: Infeasible) -> None:
        """Count a query refused as infeasible (nothing ran), so the console and ``/v1/stats`` show it apart."""
        requirements = query.requirements
        self.live.record_rejection(
            Rejection(
                at=time.time(),
                tenant=query.tenant,
                target=requirements.model or f"task:{requirements.task}",
                unmet=refused.unmet.split(" ", 1)[0],  # Infeasible.unmet starts with the requirement's name
            )
        )

    def _try_now(self, plan: _Dispatch) -> tuple[_Dispatch, InferResult] | None:
        """Run on this thread only if a replica is free right now; ``None`` having done nothing otherwise."""
        result = plan.client.try_infer_now(plan.decision.variant, plan.arrays)
        return None if result is None else (plan, result)

    def _run(self, plan: _Dispatch) -> tuple[_Dispatch, InferResult]:
        """Run a plan, waiting for a replica (and loading the variant) if needed: blocking.

        A load that fails for lack of memory (live state was stale: another front-end's load landed first)
        moves the query to the next placement, without the one that failed; the selector never offers an
        excluded placement again, so this ends after at most one try per (variant, worker). A worker that
        cannot be reached is skipped and the query runs once more elsewhere (inference is idempotent).
        """
        latency_ms = plan.requirements.latency_ms
        deadline = plan.start + latency_ms / 1000.0 if latency_ms is not None else None
        out_of_memory: set[tuple[str, str]] = set()
        retried_unreachable = False
        while True:
            try:
                return plan, plan.client.infer(plan.decision.variant, plan.arrays, deadline)
            except OutOfMemory as exc:
                log.info("%s on %s: %s; trying the next placement", plan.decision.candidate.key, plan.client.id, exc)
                out_of_memory.add((plan.decision.candidate.key, plan.client.id))
                plan = self._replan(plan, out_of_memory, exc)
            except WorkerUnavailable as exc:
                if retried_unreachable:
                    raise ModelNotReady(str(exc)) from exc
                retried_unreachable = True
                log.warning("%s; retrying the query on another worker", exc)
                self.workers.avoid(plan.client.id)
                plan = self._replan(plan, out_of_memory, exc)
            except WorkerError as exc:
                raise ModelNotReady(str(exc)) from exc

    def _replan(self, plan: _Dispatch, exclude: set[tuple[str, str]], cause: WorkerError) -> _Dispatch:
        """Choose again for ``plan`` without the excluded placements (and the workers being avoided)."""
        snapshot = self.workers.snapshot()
        try:
            decision = fast_select(
                plan.requirements, plan.candidates, snapshot, self._prices, exclude, self.calibration.correction()
            )
        except NoWorkerAvailable as exc:
            raise NoWorkerAvailable(f"{cause}; {exc}") from cause
        client = self.workers.get(decision.worker, snapshot)
        if client is None:
            raise ModelNotReady(f"worker {decision.worker!r} is not reachable from this front-end") from cause
        return replace(plan, decision=decision, client=client)

    def _account(self, plan: _Dispatch, result: InferResult) -> Answer:
        """Record the query in live state and in the calibration, and describe how it was served."""
        actual_ms = (time.monotonic() - plan.start) * 1000.0
        decision, requirements = plan.decision, plan.requirements
        variant = decision.variant
        model, name, worker, rows = variant.model_name, variant.name, decision.worker, decision.batch
        estimated_ms, queue_ms, cost = decision.estimated_ms, result.queue_ms, decision.estimated_cost
        slo_at_risk, reason, latency_ms = decision.slo_at_risk, decision.reason, requirements.latency_ms
        outputs, cascade = result.outputs, None
        if STAGE_OUTPUT in outputs:  # a cascade: the per-row stage goes to served_by, not to the answer
            outputs, cascade = split_stages(outputs)
            if self.cascades is not None:
                self.cascades.observe(decision.candidate.key, cascade["rows"], cascade["escalated"])
        # Positional, in field order: keywords cost ~1 µs more per record on this path (two records a query).
        served_by = ServedBy(
            model,
            name,
            worker,
            rows,
            result.batch,  # the whole session run's rows; the record's ``batch`` is the query's own (``rows``)
            estimated_ms,
            decision.raw_estimated_ms,
            actual_ms,
            queue_ms,
            result.service_ms,
            cost,
            slo_at_risk,
            reason,
            cascade,
        )
        record = QueryRecord(
            time.time(),
            plan.query.tenant,
            model,
            name,
            worker,
            rows,
            latency_ms,
            requirements.min_accuracy,
            requirements.max_cost,
            estimated_ms,
            actual_ms,
            queue_ms,
            cost,
            slo_at_risk,
            reason,
            decision.infeasible,
            requirements.min_fidelity,
        )
        self.live.record_query(record)
        if decision.loaded:  # a load's one-off time is the profile's to measure, not a serving-path error
            self.calibration.observe(
                decision.candidate.key,
                worker,
                decision.raw_estimated_ms,
                actual_ms,
                worker_ms=queue_ms + result.service_ms,
                budget_ms=latency_ms,
            )
            self.calibration.observe_run(
                decision.candidate.key, worker, decision.candidate.curve.service_ms(result.batch), result.service_ms
            )
        return Answer(outputs, served_by, record)

    # -- models and inputs ----------------------------------------------------------------------
    def _resolve(self, allowed: Callable[[ModelInfo], bool], model: str | None, task: str | None) -> list[ModelInfo]:
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
            specs = model.inputs
            if specs not in converted:
                try:
                    converted[specs] = conform_inputs(specs, inputs)
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

    # -- catalog ------------------------------------------------------------------------------
    def catalog_changed(self, model_name: str) -> None:
        """The catalog changed (here or, heard through live state, elsewhere): drop cached candidates and
        unload this process's instances of variants that are no longer ready (deleted or rebuilt)."""
        self.cache.invalidate()
        local = self.workers.local
        if local is None:
            return
        prefix = f"{model_name}/"
        loaded = [i.variant_key for i in local.status().instances if i.variant_key.startswith(prefix)]
        if not loaded:
            return
        try:
            ready = {c.key for c in self.cache.for_model(model_name)}
        except Exception:  # the catalog may be mid-change; a stale instance is harmless for a while
            log.exception("could not refresh candidates after a change to %s", model_name)
            return
        for key in loaded:
            if key not in ready:
                local.unload(key)
