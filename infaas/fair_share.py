"""Fair admission under overload: a query that queueing would make late is refused when its tenant sends more
than an equal share of the recent queries.

Why: a best-effort query that no placement can serve in time is still served, flagged ``slo_at_risk``, and waits
in the instance's first-come-first-served queue. While one tenant bursts, its queries fill that queue and every
other tenant's queries wait behind them. Adding replicas cannot help on cores already saturated; choosing whose
queries wait can. In the trace benchmark (``benchmarks/trace.py``, one ``accurate`` tenant bursting to 1.5× the
calibrated capacity, one pair of runs) misses fell from 33% to 14% of feasible queries (12.6% refused instead),
the light tenants' share in time rose from 81/73% to 92/79%, the bursting tenant's from 16% to 32%, and the
steady tenant of the bursting class stayed at 77%.

The rule, checked once per query after selection (``QueryEngine._plan``):

* every query counts towards its tenant's recent arrivals, an exponentially decaying count (half-life
  ``HALF_LIFE_S``), and so towards the total;
* a query is refused only if the selector found no placement meeting its budget *because of queueing*
  (``slo_at_risk`` and not ``infeasible``: one that would miss with empty queues frees nothing by waiting) and
  its tenant's count is above the fair share, the total over the tenants active now (count ≥ ``ACTIVE_MIN``).

So a tenant within its share is always served (flagged when at risk), a bursting tenant gets what the others
leave, and with one tenant (every local client without keys is one) nothing is ever refused. The refusal is a
429 (``over_fair_share``) with ``Retry-After``, and nothing runs. Shares count queries, not their cost: a tenant
sending few large queries is never refused for their size.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from infaas.errors import TooManyRequests

HALF_LIFE_S = 2.0  # a burst counts against its tenant for a few seconds after it stops, not for minutes
ACTIVE_MIN = 0.1  # decayed queries (one query ~3.3 half-lives ago): below, a tenant is no longer active
RETRY_AFTER_S = 1.0


class OverFairShare(TooManyRequests):
    """The query could only be served late, and its tenant sends more than an equal share of recent queries."""

    code = "over_fair_share"


class FairShare:
    """Each tenant's recent arrivals; ``admit`` refuses an at-risk query of a tenant over its share. Thread-safe."""

    def __init__(self, half_life_s: float = HALF_LIFE_S, clock: Callable[[], float] = time.monotonic) -> None:
        if half_life_s <= 0:
            raise ValueError("the fair share's half-life must be positive")
        self._rate = math.log(2.0) / half_life_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, float]] = {}  # tenant -> (decayed count, when it was last decayed)

    def admit(self, tenant: str, at_risk: bool) -> None:
        """Count one query of ``tenant``; raise ``OverFairShare`` if it is ``at_risk`` (late because of queueing)
        and the tenant is over its fair share."""
        now = self._clock()
        with self._lock:
            count, at = self._counts.get(tenant, (0.0, now))
            mine = count * math.exp(-self._rate * (now - at)) + 1.0
            self._counts[tenant] = (mine, now)
            if not at_risk:
                return
            active: list[float] = []
            for other, (c, a) in list(self._counts.items()):
                decayed = c * math.exp(-self._rate * (now - a))
                if decayed >= ACTIVE_MIN:
                    active.append(decayed)
                else:
                    del self._counts[other]
        fair = sum(active) / len(active)
        if mine > fair * (1.0 + 1e-9):
            raise OverFairShare(
                f"tenant {tenant!r} sends {mine / sum(active):.0%} of the recent queries, over an equal share of "
                f"the {len(active)} active tenants, and no placement can serve this query in time now: retry later "
                "or relax latency_ms",
                retry_after_s=RETRY_AFTER_S,
            )
