"""The query engine's one entry point and its thread rule (``infaas.offload``), without HTTP."""

from __future__ import annotations

import threading
from dataclasses import replace

import anyio
import numpy as np
import pytest

from infaas import offload
from infaas.engine import Answer, Query, _inline_ms
from infaas.errors import InvalidInput, ModelNotReady, UnknownModel
from infaas.selector import Infeasible, Requirements
from infaas.services import Services
from tests.factories import linear_model, profiles, seed_model


def _seeded(services: Services, p50_ms: float = 0.05) -> None:
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: p50_ms, 8: p50_ms * 2})})
    services.start_serving()


def _query(rows: int = 1) -> Query:
    return Query(Requirements(model="lin"), {"x": np.ones((rows, 4), np.float32).tolist()}, tenant="t1")


def _serve(services: Services, query: Query, body_bytes: int) -> tuple[Answer, list[int]]:
    """Run ``serve`` on an event loop; also report which thread parsed the query."""
    parsed_on: list[int] = []

    def parse() -> tuple[Query, str]:
        parsed_on.append(threading.get_ident())
        return query, "context"

    async def main() -> tuple[Answer, str]:
        return await services.engine.serve(parse, body_bytes)

    answer, context = anyio.run(main)
    assert context == "context"  # what the adapter needs to render comes back untouched
    return answer, parsed_on


def test_serve_answers_and_records_the_query(services: Services) -> None:
    _seeded(services)
    answer, _ = _serve(services, _query(2), body_bytes=100)
    assert answer.outputs["y"].shape == (2, 3)
    assert answer.served_by.variant == "fp32" and answer.served_by.rows == 2
    (record,) = services.live.recent_queries(10)
    assert (record.tenant, record.variant, record.batch) == ("t1", "fp32", 2)


def test_both_quality_floors_are_recorded_for_the_autoscaler(services: Services) -> None:
    faithful = tuple(replace(p, fidelity=0.98, fidelity_metric="agreement") for p in profiles({1: 0.05}))
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": faithful})
    services.start_serving()
    wanted = Requirements(model="lin", min_accuracy=0.85, min_fidelity=0.95)
    services.engine.infer(Query(wanted, {"x": np.ones((1, 4), np.float32).tolist()}, tenant="t1"))
    (record,) = services.live.recent_queries(10)
    assert (record.min_accuracy, record.min_fidelity) == (0.85, 0.95)


def test_small_body_is_parsed_on_the_loop_and_large_one_in_the_pool(services: Services) -> None:
    _seeded(services)
    loop_thread: list[int] = []

    async def loop_ident() -> None:
        loop_thread.append(threading.get_ident())

    anyio.run(loop_ident)  # anyio.run uses the calling thread for its loop
    _, small = _serve(services, _query(), body_bytes=offload.INLINE_BODY_BYTES)
    _, large = _serve(services, _query(), body_bytes=offload.INLINE_BODY_BYTES + 1)
    assert small == loop_thread
    assert large != loop_thread


def test_blocking_infer_is_the_same_path(services: Services) -> None:
    _seeded(services)
    answer = services.engine.infer(_query(3))
    assert answer.outputs["y"].shape == (3, 3)
    assert services.live.recent_queries(10)[0].batch == 3


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (Query(Requirements(model="nope"), {"x": [[0.0] * 4]}), UnknownModel),
        (Query(Requirements(model="lin"), {"x": [[0.0] * 4]}, allowed=lambda _m: False), UnknownModel),
        (Query(Requirements(model="lin"), {"z": [[0.0] * 4]}), InvalidInput),
        (Query(Requirements(model="lin"), {"x": [[0.0] * 5]}), InvalidInput),
    ],
)
def test_engine_raises_domain_errors(services: Services, query: Query, error: type[Exception]) -> None:
    _seeded(services)
    with pytest.raises(error):
        services.engine.infer(query)


def test_a_rejected_query_runs_nothing(services: Services) -> None:
    _seeded(services, p50_ms=5.0)  # cold: 5 ms load + 7.5 ms service (the p99: factories' p99 is 1.5 × p50)
    query = Query(Requirements(model="lin", latency_ms=1, on_infeasible="reject"), {"x": [[0.0] * 4]}, tenant="t1")
    with pytest.raises(Infeasible, match="no placement meets latency_ms 1; nothing was run") as excinfo:
        services.engine.infer(query)
    assert excinfo.value.best.latency_ms == 5.0 + 5.0 * 1.5
    # Nothing ran: no query recorded, nothing loaded on any worker.
    assert services.live.recent_queries(10) == [] and services.live.instances() == []
    assert services.engine.workers.local is not None and services.engine.workers.local.status().instances == ()
    # The same query, best effort, is served and flagged.
    answer = services.engine.infer(
        replace(query, requirements=replace(query.requirements, on_infeasible="best_effort"))
    )
    assert answer.served_by.slo_at_risk and len(services.live.recent_queries(10)) == 1
    # The rejection is counted apart (the console and /v1/stats show it), and the served query, whose budget is
    # below even the loaded service time, is marked infeasible: not a miss that replicas fix.
    rejected = services.live.rejection_stats()["lin"]
    assert (rejected.rejected, rejected.unmet_latency, rejected.unmet_max_cost) == (1, 1, 0)
    assert services.live.recent_queries(10)[0].infeasible
    assert services.live.variant_stats()["lin/" + answer.served_by.variant].infeasible_rate == 1.0


def test_an_unaffordable_query_runs_nothing_even_best_effort(services: Services) -> None:
    _seeded(services)
    query = Query(Requirements(model="lin", max_cost=1e-15), {"x": [[0.0] * 4]})
    with pytest.raises(Infeasible, match="max_cost"):
        services.engine.infer(query)
    assert services.live.recent_queries(10) == [] and services.live.instances() == []
    assert services.live.rejection_stats()["lin"].unmet_max_cost == 1


def test_a_model_without_ready_variants_is_not_ready(services: Services) -> None:
    seed_model(services, "lin", linear_model(), task="t")
    services.start_serving()
    with pytest.raises(ModelNotReady, match="not ready"):
        services.engine.infer(_query())


# -- the thread rule ------------------------------------------------------------------------------
def _threads_used(expected_ms: float, now_result: str | None) -> tuple[str, list[str]]:
    calls: list[str] = []
    main = threading.get_ident()

    def try_now() -> str | None:
        calls.append("now" if threading.get_ident() == main else "now-elsewhere")
        return now_result

    def blocking() -> str:
        calls.append("pool" if threading.get_ident() != main else "blocking-on-loop")
        return "blocked"

    async def run() -> str:
        return await offload.short_inline_else_pool(expected_ms, try_now, blocking)

    return anyio.run(run), calls


def test_short_run_on_an_idle_instance_stays_on_the_loop() -> None:
    assert _threads_used(offload.INLINE_MAX_MS, "ran") == ("ran", ["now"])


def test_short_run_on_a_busy_instance_goes_to_the_pool() -> None:
    assert _threads_used(0.1, None) == ("blocked", ["now", "pool"])


def test_long_run_never_tries_the_loop() -> None:
    assert _threads_used(offload.INLINE_MAX_MS * 2, "ran") == ("blocked", ["pool"])


def test_the_record_carries_each_value_under_its_own_field(services: Services) -> None:
    """``_account`` builds the record positionally (cheaper): every field must still hold its own value."""
    faithful = tuple(replace(p, fidelity=0.98, fidelity_metric="agreement") for p in profiles({1: 0.05, 8: 0.1}))
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": faithful})
    services.start_serving()
    wanted = Requirements(model="lin", latency_ms=500.0, min_accuracy=0.25, min_fidelity=0.5, max_cost=7.5)
    answer = services.engine.infer(Query(wanted, {"x": np.ones((2, 4), np.float32).tolist()}, tenant="t9"))
    served, record = answer.served_by, answer.record
    assert services.live.recent_queries(1) == [record]
    shared = {"model", "variant", "worker", "estimated_ms", "actual_ms", "queue_ms", "cost", "slo_at_risk", "reason"}
    assert {name: getattr(record, name) for name in shared} == {name: getattr(served, name) for name in shared}
    assert (record.tenant, record.batch, served.rows) == ("t9", 2, 2)
    assert (record.latency_ms, record.max_cost, record.min_accuracy, record.min_fidelity) == (500.0, 7.5, 0.25, 0.5)
    assert record.infeasible is False and isinstance(record.at, float) and record.at > 1e9


def _tried_on_the_loop(services: Services) -> list[str]:
    """Record the variants the engine tries to run on the event loop from now on."""
    engine = services.engine
    tried: list[str] = []
    real_try_now = engine._try_now

    def try_now(plan):  # type: ignore[no-untyped-def]
        tried.append(plan.decision.variant.key)
        return real_try_now(plan)

    engine._try_now = try_now  # type: ignore[method-assign]
    return tried


def test_a_run_the_calibration_has_learnt_is_slow_leaves_the_loop(services: Services) -> None:
    """The loop rule reads the runs observed, not the profile: a variant profiled at 0.05 ms whose runs take 5 ms on
    this worker must not stall the event loop (every query behind it waits to be planned)."""
    _seeded(services)
    engine = services.engine
    tried = _tried_on_the_loop(services)
    _serve(services, _query(), body_bytes=100)  # loads the variant (a cold run never tries the loop)
    answer, _ = _serve(services, _query(), body_bytes=100)
    assert tried == ["lin/fp32"]  # idle, loaded, profiled and observed fast: run on the loop
    served = answer.served_by
    key = f"{served.model}/{served.variant}"
    for _ in range(200):
        engine.calibration.observe(key, served.worker, served.raw_estimated_ms, 5.0, worker_ms=4.9, budget_ms=None)
        engine.calibration.observe_run(key, served.worker, 0.05, 4.9)
    tried.clear()
    answer, _ = _serve(services, _query(), body_bytes=100)
    assert answer.served_by.estimated_ms > offload.INLINE_MAX_MS
    assert tried == []  # straight to the pool


def test_waits_outside_the_run_keep_a_fast_model_on_the_loop(services: Services) -> None:
    """Queries of a 0.05 ms model that took 5 ms end to end (waiting for a pool thread, say) while each run took its
    profiled time leave it on the loop: read from the latency correction, whose factor holds those waits, the rule
    kept a model it had once sent to the pool there (the trace benchmark measured 650 or 2,155 q/s with one command).
    Fails with the correction's factor as the rule's input."""
    _seeded(services)
    engine = services.engine
    tried = _tried_on_the_loop(services)
    _serve(services, _query(), body_bytes=100)  # loads the variant
    served = _serve(services, _query(), body_bytes=100)[0].served_by
    key = f"{served.model}/{served.variant}"
    for _ in range(200):
        engine.calibration.observe(key, served.worker, served.raw_estimated_ms, 0.1, worker_ms=0.05, budget_ms=None)
        engine.calibration.observe(key, served.worker, served.raw_estimated_ms, 5.0, worker_ms=0.05, budget_ms=None)
        engine.calibration.observe_run(key, served.worker, 0.05, 0.05)
    correct = engine.calibration.correction()
    assert correct(key, served.worker, 0.05) - correct(key, served.worker, 0.0) > offload.INLINE_MAX_MS  # the waits
    tried.clear()
    _serve(services, _query(), body_bytes=100)
    assert tried == ["lin/fp32"]


def test_the_loop_rule_reads_the_observed_runs_at_the_querys_batch(services: Services) -> None:
    """The rule's time is the profile at the query's batch times the placement's observed run ratio (``run_ms``);
    a variant to load first never runs on the loop."""
    _seeded(services)
    engine = services.engine
    _serve(services, _query(), body_bytes=100)  # loads the variant
    decision = engine._plan(_query()).decision
    service_ms = decision.candidate.curve.service_ms(decision.batch)
    assert decision.loaded and service_ms * 60.0 > offload.INLINE_MAX_MS > service_ms
    assert _inline_ms(decision, lambda _k, _w, profiled: profiled) == pytest.approx(service_ms)
    assert _inline_ms(decision, lambda _k, _w, profiled: 60.0 * profiled) == pytest.approx(60.0 * service_ms)
    cold = replace(decision, loaded=False)
    assert _inline_ms(cold, lambda _k, _w, profiled: profiled) == float("inf")  # a load first: never on the loop
