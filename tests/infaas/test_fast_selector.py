"""The indexed selector makes exactly the reference selector's decisions (``infaas.selector.select`` is the oracle).

Random cases (seeded, so a failure names the case that reproduces it) over small fleets, where exact ties,
full workers, exclusions, draining workers, hardware kinds, floors, price limits and corrections are common.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import fields, replace

import pytest

from infaas.accuracy import Accuracy, Fidelity
from infaas.errors import InfaasError
from infaas.fast_selector import FastSelector, fast_select
from infaas.live_state import InstanceState, LiveSnapshot, WorkerState
from infaas.selector import Candidate, Requirements, Selection, select
from tests.factories import model_info, profiles, variant_info

CASES = 4000
HARDWARE = (("cpu",), ("cpu",), ("cpu", "gpu"), ("gpu",), ("cpu", "gpu", "tensorrt"))


def _candidates(rng: random.Random) -> list[Candidate]:
    out = []
    latencies = [1.0, 2.0, 4.0, 8.0, rng.uniform(0.5, 20.0)]  # few values: equal costs and estimates are common
    for m in range(rng.randint(1, 4)):
        for v in range(rng.randint(1, 5)):
            hardware = rng.choice(("cpu", "cpu", "gpu"))
            p50 = {b: rng.choice(latencies) * (1 + b / 8) for b in sorted(rng.sample([1, 4, 8, 16], rng.randint(1, 3)))}
            measured = profiles(
                p50,
                threads=rng.choice((0, 1, 2, 4)) if hardware == "cpu" else 1,
                memory_mb=rng.choice((50.0, 200.0, 400.0, 900.0)),
                load_ms=rng.choice((0.0, 50.0, 300.0)),
                p99_factor=rng.choice((1.0, 1.5)),
            )
            if rng.random() < 0.3:  # dynamic INT8: never batched, and a batch-invariant near-tie wins under load
                measured = tuple(replace(p, batch_invariant=False) for p in measured)
            variant = variant_info(f"m{m}", f"v{v}", measured, hardware=hardware)
            if hardware == "gpu" and rng.random() < 0.4:  # TensorRT: needs a worker advertising "tensorrt" too
                variant = replace(variant, providers=("TensorrtExecutionProvider",))
            c = Candidate.of(model_info(f"m{m}", task="t"), variant)
            accuracy = Accuracy(rng.choice((None, 0.5, 0.7, 0.9)), rng.choice(("top1", "top1", "f1")), "measured")
            fidelity = Fidelity(rng.choice((None, 0.8, 0.95, 1.0)), "agreement")
            out.append(replace(c, accuracy=accuracy.value, accuracy_info=accuracy, fidelity=fidelity))
    rng.shuffle(out)
    return out


def _live(rng: random.Random, candidates: list[Candidate]) -> LiveSnapshot:
    workers = []
    for i in rng.sample(range(40), rng.randint(0, 10)):
        budget = rng.choice((500.0, 1000.0, 2000.0))
        workers.append(
            WorkerState(
                id=f"w{i}",
                address="local",
                cores=rng.randint(1, 8),
                memory_budget_mb=budget,
                memory_used_mb=rng.choice((0.0, budget / 2, budget * 0.9, budget, rng.uniform(0, budget * 1.1))),
                hardware=rng.choice(HARDWARE),
                draining=rng.random() < 0.15,
            )
        )
    instances: dict[str, list[InstanceState]] = {}
    depth: dict[tuple[str, str], int] = {}
    for c in candidates:
        for w in workers:
            if rng.random() < 0.3:
                instances.setdefault(c.key, []).append(
                    InstanceState(w.id, c.key, rng.randint(0, 3), rng.choice((50.0, 100.0, 400.0)))
                )
                if rng.random() < 0.6:
                    depth[(w.id, c.key)] = rng.choice((0, 1, 3, 10, 40))
    if workers and rng.random() < 0.2:  # an instance on a worker the snapshot no longer has
        instances.setdefault(candidates[0].key, []).append(InstanceState("gone", candidates[0].key, 1, 100.0))
    return LiveSnapshot(tuple(workers), {k: tuple(v) for k, v in instances.items()}, depth)


def _requirements(rng: random.Random) -> Requirements:
    return Requirements(
        task="t",
        latency_ms=rng.choice((None, 1.0, 3.0, 6.0, 12.0, 50.0, 400.0, rng.uniform(1, 100))),
        min_accuracy=rng.choice((0.0, 0.0, 0.6, 0.8, 0.95)),
        min_fidelity=rng.choice((0.0, 0.0, 0.9, 0.99)),
        max_cost=rng.choice((None, None, 1e-7, 1e-6, 1e-5, rng.uniform(0, 1e-5))),
        batch=rng.choice((1, 1, 3, 8, 20)),
        on_infeasible=rng.choice(("best_effort", "reject")),
    )


def _correction(rng: random.Random) -> Callable[[str, str, float], float] | None:
    if rng.random() < 0.3:
        return None
    overhead = rng.choice((0.0, 0.5, 2.0))
    factors: dict[tuple[str, str], float] = {}

    def correct(key: str, worker: str, raw_ms: float) -> float:
        factor = factors.setdefault((key, worker), rng.choice((0.5, 1.0, 1.0, 1.3, 3.0)))
        return overhead + factor * raw_ms

    return correct


def _prices(rng: random.Random) -> dict[str, float]:
    return rng.choice(({"cpu-core": 0.048, "gpu": 2.5}, {"cpu-core": 0.048, "gpu": 0.048}, {}, {"gpu": 1.0}))


def _outcome(choose: Callable[..., Selection], *args: object) -> tuple[str, object]:
    try:
        return "selection", choose(*args)
    except InfaasError as exc:
        return type(exc).__name__, (str(exc), exc.headers)
    except ValueError as exc:  # the reference's own failure (a negative price): the same one
        return type(exc).__name__, str(exc)


def _same(reference: tuple[str, object], fast: tuple[str, object], case: int) -> None:
    assert fast[0] == reference[0], f"case {case}: {fast} != {reference}"
    if reference[0] != "selection":
        assert fast[1] == reference[1], f"case {case}"
        return
    ref, got = reference[1], fast[1]
    assert isinstance(ref, Selection) and isinstance(got, Selection)
    for f in fields(Selection):
        if f.name == "reason" and not ref.slo_at_risk:
            continue  # a feasible choice's reason does not count every feasible placement (module docstring)
        assert getattr(got, f.name) == getattr(ref, f.name), f"case {case}: {f.name}: {got} != {ref}"


@pytest.mark.parametrize("seed", range(4))
def test_same_decisions_as_the_reference(seed: int) -> None:
    outcomes: dict[str, int] = {}
    selector = FastSelector()  # one across cases: its caches must never leak one case into another
    for case in range(seed * CASES, (seed + 1) * CASES):
        rng = random.Random(case)
        candidates = _candidates(rng)
        live = _live(rng, candidates)
        requirements = _requirements(rng)
        prices = _prices(rng)
        pairs = [(c.key, w.id) for c in candidates for w in live.workers]
        exclude = set(rng.sample(pairs, min(len(pairs), rng.choice((0, 0, 1, 5))))) if pairs else set()
        correct = _correction(rng)
        reference = _outcome(select, requirements, candidates, live, prices, exclude, correct)
        fast = _outcome(selector.select, requirements, candidates, live, prices, exclude, correct)
        _same(reference, fast, case)
        # The same snapshot again after its depths moved underneath (as the live states' mappings do) and with
        # other needs: what the selector cached for this snapshot must not carry a stale depth or need over.
        depths = live.queue_depth
        assert isinstance(depths, dict)
        for pair in list(depths)[::2]:
            depths[pair] = rng.choice((0, 2, 50))
        again = _requirements(rng)
        _same(
            _outcome(select, again, candidates, live, prices, (), correct),
            _outcome(selector.select, again, candidates, live, prices, (), correct),
            case,
        )
        kind = reference[0]
        if kind == "selection":
            assert isinstance(reference[1], Selection)
            kind = "at_risk" if reference[1].slo_at_risk else ("cold" if not reference[1].loaded else "loaded")
            if "batch-invariant" in reference[1].reason:
                outcomes["invariant_under_load"] = outcomes.get("invariant_under_load", 0) + 1
        outcomes[kind] = outcomes.get(kind, 0) + 1
    # The cases reach every kind of outcome, so agreement is not agreement on one easy path.
    for kind in ("loaded", "cold", "at_risk", "Infeasible", "NoWorkerAvailable", "AccuracyUnavailable"):
        assert outcomes.get(kind, 0) >= CASES // 100, outcomes
    assert outcomes.get("invariant_under_load", 0) >= CASES // 400, outcomes


def test_cache_follows_a_changed_snapshot_and_candidate_list() -> None:
    """The same fleet object replaced (a worker fills up, a new instance) gives the new decision, not a cached one."""
    rng = random.Random(7)
    candidates = _candidates(rng)
    while not candidates:
        candidates = _candidates(rng)
    w1 = WorkerState("w1", "local", 4, 1000.0, hardware=("cpu", "gpu"))
    w2 = WorkerState("w2", "local", 4, 1000.0, hardware=("cpu", "gpu"))
    prices = {"cpu-core": 0.048, "gpu": 2.5}
    requirements = Requirements(task="t")
    selector = FastSelector()
    for live in (
        LiveSnapshot((w1, w2), {}, {}),
        LiveSnapshot((w1, replace(w2, memory_used_mb=1000.0)), {}, {}),
        LiveSnapshot((w1, w2), {candidates[-1].key: (InstanceState("w2", candidates[-1].key, 1, 10.0),)}, {}),
    ):
        for subset in (candidates, candidates[::-1], candidates[:1]):
            got = selector.select(requirements, subset, live, prices)
            want = select(requirements, subset, live, prices)
            assert (got.variant.key, got.worker, got.estimated_ms) == (want.variant.key, want.worker, want.estimated_ms)


def test_negative_price_falls_back_to_the_reference() -> None:
    """A bound is only a bound for non-negative prices: with a negative one the reference decides (and fails
    where it fails: a negative cheapest cost leaves no tie)."""
    rng = random.Random(3)
    for case in range(200):
        candidates = _candidates(rng)
        live = _live(rng, candidates)
        requirements = _requirements(rng)
        prices = {"cpu-core": -0.048, "gpu": 2.5}
        _same(
            _outcome(select, requirements, candidates, live, prices),
            _outcome(fast_select, requirements, candidates, live, prices),
            case,
        )


def test_same_decisions_when_nothing_is_feasible() -> None:
    """The path where no placement meets the need (every option priced): budgets around the fastest estimates and
    deep queues, so that best effort serves the fastest (at risk, infeasible or not), ``reject`` names the best
    achievable with and without a Retry-After, and ``max_cost`` refuses; each the reference's, message and header."""
    outcomes: dict[str, int] = {}
    selector = FastSelector()
    for case in range(3000):
        rng = random.Random(10**6 + case)
        candidates = _candidates(rng)
        live = _live(rng, candidates)
        depths = live.queue_depth
        assert isinstance(depths, dict)
        for inst in (i for group in live.instances.values() for i in group):
            if rng.random() < 0.7:
                depths[(inst.worker_id, inst.variant_key)] = rng.choice((5, 20, 60, 200))
        requirements = Requirements(
            task="t",
            latency_ms=rng.choice((0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, rng.uniform(0.5, 20))),
            min_accuracy=rng.choice((0.0, 0.0, 0.6)),
            max_cost=rng.choice((None, None, None, 1e-9, 1e-7)),
            batch=rng.choice((1, 1, 8)),
            on_infeasible=rng.choice(("best_effort", "reject")),
        )
        prices = _prices(rng)
        correct = _correction(rng)
        reference = _outcome(select, requirements, candidates, live, prices, (), correct)
        _same(reference, _outcome(selector.select, requirements, candidates, live, prices, (), correct), case)
        kind = reference[0]
        if isinstance(reference[1], Selection):
            kind = "served" if not reference[1].slo_at_risk else ("hopeless" if reference[1].infeasible else "queued")
        elif kind == "Infeasible":
            message, headers = reference[1]  # type: ignore[misc]
            kind = "max_cost" if "max_cost" in message else ("retry" if headers else "no_retry")
        outcomes[kind] = outcomes.get(kind, 0) + 1
    for kind in ("hopeless", "queued", "retry", "no_retry", "max_cost"):
        assert outcomes.get(kind, 0) >= 30, outcomes
