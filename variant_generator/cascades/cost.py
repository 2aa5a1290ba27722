"""A cascade's expected cost from its members' profiles: what the threshold sweep minimises.

Per row at batch ``b``: ``cost(cheap, b) + (1 - f) * cost(expensive, b')``, where ``cost(v, b)`` is the
variant's profiled p50 at ``b`` divided by ``b`` times the price of the hardware it holds (``threads`` cores,
or all of a worker's when 0, priced per ``cpu-core``: the selector's ``query_cost``), and ``b' = ceil((1 - f)
b)`` is the batch the escalated rows form, whose per-row cost is higher than at ``b`` (at batch 1 it is the
issue's formula exactly). Relative to the expensive variant alone at ``b``, averaged over the expensive
variant's profiled batch sizes, so a cascade is kept only when it saves across the sizes queries come in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from infaas.catalog import VariantInfo
from infaas.selector import ProfileCurve

MIN_SAVING = 0.10  # a cascade saving less than this over its expensive member is not kept


def units(variant: VariantInfo, cores: int) -> int:
    """Cores (or devices) the variant holds while it runs."""
    return (variant.threads or cores) if variant.hardware == "cpu" else 1


def price(variant: VariantInfo, cores: int, prices: Mapping[str, float]) -> float:
    """$/hour of what the variant holds (a price of 0 counts as 1: the comparison is relative)."""
    per_unit = prices.get("cpu-core", 0.0) if variant.hardware == "cpu" else prices.get(variant.hardware, 0.0)
    return (per_unit or 1.0) * units(variant, cores)


class CostModel:
    """Per-row costs of a (cheap, expensive) pair at the expensive variant's profiled batch sizes."""

    def __init__(self, cheap: VariantInfo, expensive: VariantInfo, cores: int, prices: Mapping[str, float]) -> None:
        self._cheap, self._expensive = ProfileCurve.of(cheap), ProfileCurve.of(expensive)
        self._cheap_price, self._expensive_price = price(cheap, cores, prices), price(expensive, cores, prices)
        self.batches: Sequence[int] = self._expensive.batches

    def per_row(self, curve: ProfileCurve, hourly: float, batch: int) -> float:
        """Dollars per row (scaled: hours are a constant factor) of a variant run at ``batch``."""
        return curve.service_ms(batch) / batch * hourly

    def expensive(self, batch: int) -> float:
        """The expensive variant alone, per row at ``batch``."""
        return self.per_row(self._expensive, self._expensive_price, batch)

    def cheap(self, batch: int) -> float:
        """The cheap variant alone, per row at ``batch``."""
        return self.per_row(self._cheap, self._cheap_price, batch)

    def cascade(self, answered: float, batch: int) -> float:
        """The cascade per row at ``batch`` when the cheap stage answers a share ``answered`` of rows."""
        escalated = 1.0 - answered
        cost = self.cheap(batch)
        if escalated > 0:
            cost += escalated * self.per_row(self._expensive, self._expensive_price, math.ceil(escalated * batch))
        return cost

    def relative(self, answered: float) -> float:
        """The cascade's cost over the expensive variant's, averaged over the profiled batch sizes."""
        return sum(self.cascade(answered, b) / self.expensive(b) for b in self.batches) / len(self.batches)

    def savings(self, answered: float) -> dict[int, float]:
        """1 - relative cost at each profiled batch size (what a decision records)."""
        return {b: 1.0 - self.cascade(answered, b) / self.expensive(b) for b in self.batches}
