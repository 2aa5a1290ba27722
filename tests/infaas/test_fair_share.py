"""Fair admission under overload (``infaas.fair_share``): only at-risk queries of tenants over an equal share of
the recent queries are refused; in the engine, such a refusal is a 429 and runs nothing."""

from __future__ import annotations

import numpy as np
import pytest

from infaas.engine import Query
from infaas.fair_share import FairShare, OverFairShare
from infaas.selector import Requirements
from infaas.services import Services
from tests.factories import linear_model, profiles, seed_model


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _send(share: FairShare, tenant: str, n: int) -> None:
    for _ in range(n):
        share.admit(tenant, at_risk=False)


def test_one_tenant_is_never_refused_however_overloaded() -> None:
    share = FairShare(clock=Clock())
    for _ in range(500):
        share.admit("", at_risk=True)


def test_a_bursting_tenant_is_refused_only_when_at_risk_and_the_others_never() -> None:
    share = FairShare(clock=Clock())
    _send(share, "steady", 20)
    _send(share, "burst", 200)
    share.admit("burst", at_risk=False)  # not at risk: served whatever its share
    with pytest.raises(OverFairShare, match="tenant 'burst' sends 91% of the recent queries") as refused:
        share.admit("burst", at_risk=True)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    for _ in range(50):  # within its share: served (flagged) however long the overload lasts
        share.admit("steady", at_risk=True)


def test_the_share_is_equal_among_active_tenants() -> None:
    share = FairShare(clock=Clock())
    _send(share, "a", 30)
    _send(share, "b", 30)
    _send(share, "c", 90)  # 60% of 150: over the 33% fair share
    share.admit("a", at_risk=True)
    share.admit("b", at_risk=True)
    with pytest.raises(OverFairShare, match="over an equal share of the 3 active tenants"):
        share.admit("c", at_risk=True)


def test_a_burst_stops_counting_against_its_tenant_once_it_ends() -> None:
    clock = Clock()
    share = FairShare(half_life_s=2.0, clock=clock)
    _send(share, "steady", 10)
    _send(share, "burst", 100)
    with pytest.raises(OverFairShare):
        share.admit("burst", at_risk=True)
    clock.now += 20.0  # ten half-lives: the burst's 101 queries count as 0.1
    _send(share, "steady", 10)
    share.admit("burst", at_risk=True)  # the only active tenants' counts: steady ~10, burst ~1.1


def test_a_tenant_gone_quiet_is_no_longer_active() -> None:
    clock = Clock()
    share = FairShare(half_life_s=1.0, clock=clock)
    _send(share, "old", 100)
    clock.now += 30.0
    _send(share, "new", 5)
    share.admit("new", at_risk=True)  # alone now: "old" no longer lowers the fair share


def test_a_half_life_must_be_positive() -> None:
    with pytest.raises(ValueError, match="half-life"):
        FairShare(half_life_s=0.0)


def test_the_engine_refuses_an_over_share_tenants_queued_query_and_runs_nothing(services: Services) -> None:
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 1.0, 8: 2.0})})
    services.start_serving()
    engine = services.engine
    x = {"x": np.ones((1, 4), np.float32).tolist()}
    engine.infer(Query(Requirements(model="lin"), x, tenant="steady"))  # loads the variant

    def query(tenant: str) -> Query:
        return Query(Requirements(model="lin", latency_ms=50.0), x, tenant=tenant)

    for _ in range(40):
        engine.fair_share.admit("burst", at_risk=False)
    # The only placement's queue is far past the budget: at risk because of queueing, not infeasible.
    services.live.set_queue_depth("local", "lin/fp32", 10_000)
    served_before = len(services.live.recent_queries(100))
    with pytest.raises(OverFairShare):
        engine.infer(query("burst"))
    assert len(services.live.recent_queries(100)) == served_before  # nothing ran
    services.live.set_queue_depth("local", "lin/fp32", 10_000)
    answer = engine.infer(query("steady"))  # within its share: served, flagged
    assert answer.served_by.slo_at_risk
