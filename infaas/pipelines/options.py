"""What a stage can run as: each ready, profiled variant of its models that meets the stage's accuracy floor.

The planner chooses among these (``infaas.pipelines.planner``), the simulator runs them with their measured
profiles (``infaas.pipelines.simulator``). The floor is read the way the selector reads a query's
``min_accuracy`` (``infaas.accuracy.floor_metric`` over the stage's candidates), so a plan never picks a variant
that the serving path would refuse for the same floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infaas.accuracy import floor_metric
from infaas.catalog import ModelInfo
from infaas.db.models import VariantStatus
from infaas.selector import Candidate, ProfileCurve

DEFAULT_CORES = 4  # what a ``threads=0`` (all cores) CPU variant is charged for: a 4-vCPU worker (m6i.xlarge)


@dataclass(frozen=True)
class StageOption:
    """One variant a stage may run as, with its profile curve and what one replica costs per hour."""

    model: str
    variant: str
    curve: ProfileCurve
    max_batch: int  # the model's: the largest batch a worker runs
    accuracy: float | None
    per_hour: float

    @property
    def key(self) -> str:
        return f"{self.model}/{self.variant}"


def replica_price(candidate: Candidate, prices: Mapping[str, float]) -> float:
    """Dollars per hour one loaded replica holds, priced as the selector prices a query's hardware."""
    variant = candidate.variant
    if variant.hardware == "cpu":
        return prices.get("cpu-core", 0.0) * (variant.threads or DEFAULT_CORES)
    return prices.get(variant.hardware, prices.get(f"{variant.hardware}-core", 0.0))


def stage_options(models: Sequence[ModelInfo], min_accuracy: float, prices: Mapping[str, float]) -> list[StageOption]:
    """The stage's usable variants, fastest at batch 1 first (the planner's starting point)."""
    candidates = [
        Candidate.of(m, v) for m in models for v in m.variants if v.status == VariantStatus.READY and v.profiles
    ]
    metric = floor_metric((c.model.name, c.accuracy_info) for c in candidates)
    options = [
        StageOption(
            model=c.model.name,
            variant=c.variant.name,
            curve=c.curve,
            max_batch=c.model.max_batch,
            accuracy=c.accuracy,
            per_hour=replica_price(c, prices),
        )
        for c in candidates
        if c.accuracy_info.reaches(min_accuracy, metric)
    ]
    return sorted(options, key=lambda o: (o.curve.tail_ms(1), o.per_hour, o.key))


__all__ = ["DEFAULT_CORES", "StageOption", "replica_price", "stage_options"]
