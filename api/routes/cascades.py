"""A task's cascades (``GET /v1/tasks/{task}/cascades``) and a cascade requested by name on ``/v1/infer``.

A kept cascade is a variant like any other (``GET /v1/models/{name}/variants`` lists it, the selector chooses it);
this route adds what the construction decided for every pair it considered, kept or not, with the numbers
(``variant_generator.cascades``), and each kept cascade's live escalation share when it has served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, ServicesDep, can_use
from api.schemas import ErrorOut
from infaas.accuracy import accuracy_of
from infaas.auth import Principal
from infaas.cascade_session import KIND
from infaas.catalog import CascadeDecisionInfo, ModelInfo
from infaas.errors import BadRequest, NotFound
from infaas.selector import mean_ms
from infaas.services import Services

router = APIRouter(
    prefix="/v1/tasks",
    tags=["models"],
    responses={404: {"model": ErrorOut, "description": "no model of this task visible to this key"}},
)


class CascadeNotFound(NotFound):
    """A query named a cascade its model (or task) does not have ready."""

    code = "cascade_not_found"


def _visible(services: Services, principal: Principal, task: str) -> dict[str, ModelInfo]:
    models = {m.name: m for m in services.metadata.list_models() if m.task == task and can_use(principal, m)}
    if not models:
        raise NotFound(f"no model registered for task {task!r}")
    return models


def _decision_out(decision: CascadeDecisionInfo) -> dict[str, Any]:
    return {
        "cheap": decision.cheap,
        "expensive": decision.expensive,
        "kept": decision.kept,
        "kind": decision.kind,
        "variant": decision.variant,
        "reason": decision.reason,
        "numbers": decision.numbers,
        "at": decision.at.isoformat() if decision.at else None,
    }


def cascades_of(services: Services, models: dict[str, ModelInfo]) -> list[dict[str, Any]]:
    """Every cascade variant of ``models`` (ready, stale or retired) with its members and measured numbers."""
    decisions = {}
    for task in {m.task for m in models.values()}:
        for d in services.metadata.list_cascade_decisions(task):
            if d.kept and d.variant:
                decisions.setdefault(d.variant, d)
    monitor = getattr(services.engine, "cascades", None)
    out = []
    for model in models.values():
        for variant in model.variants:
            if variant.kind != KIND:
                continue
            decision = decisions.get(variant.key)
            numbers = decision.numbers if decision else {}
            accuracy = accuracy_of(model, variant)
            throughput = {p.batch_size: round(p.throughput_per_s, 1) for p in variant.profiles}
            member = decision.expensive.split("/", 1)[1] if decision else None
            expensive = next((v for v in model.variants if v.name == member), None)
            mine = {p.batch_size: mean_ms(p) for p in variant.profiles}
            saving = numbers.get("saving")
            # The expensive member's profiled mean time over the cascade's, batch by batch (same host): the mean,
            # since a cascade's p50 is its cheap stage alone when most rows are confident (``ProfileCurve.of``).
            measured = {
                p.batch_size: round(mean_ms(p) / mine[p.batch_size], 3)
                for p in (expensive.profiles if expensive else ())
                if mine.get(p.batch_size)
            }
            out.append(
                {
                    "variant": variant.key,
                    "status": variant.status,
                    "reason": variant.reason,
                    "cheap": decision.cheap if decision else None,
                    "expensive": decision.expensive if decision else None,
                    "rule": numbers.get("rule"),
                    "threshold": numbers.get("threshold"),
                    "answered": numbers.get("answered"),
                    "saving": numbers.get("saving"),
                    "expected_speedup": round(1.0 / (1.0 - saving), 3) if saving is not None and saving < 1 else None,
                    "measured_speedup": measured,
                    "accuracy": accuracy.value,
                    "expensive_accuracy": numbers.get("expensive_accuracy"),
                    "accuracy_difference_interval": numbers.get("accuracy_difference_interval"),
                    "throughput_per_s": throughput,
                    "live": monitor.status(variant.key) if monitor is not None else None,
                }
            )
    return out


@router.get("/{task}/cascades")
def task_cascades(task: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """The task's cascades (members, threshold, share the cheap stage answers, expected saving, accuracy with
    its interval) and every decision the construction took about a pair, kept or not, with why."""
    models = _visible(services, principal, task)
    owners = {m.owner for m in models.values()}
    decisions = [
        _decision_out(d)
        for d in services.metadata.list_cascade_decisions(task)
        if d.owner in owners and d.expensive.split("/", 1)[0] in models | {"*": None}
    ]
    return {
        "task": task,
        "tolerance": services.settings.cascade_tolerance,
        "cascades": cascades_of(services, models),
        "decisions": decisions,
    }


def requested_cascade(
    services: Services, allowed: Callable[[ModelInfo], bool], model: str | None, task: str | None, wanted: object
) -> frozenset[str]:
    """The ready cascade variants a query asked for with ``"cascade"`` (a variant name, or ``true`` for any), to
    pin the selection to; ``CascadeNotFound`` when its model (or task) has none. A model the caller may not use
    gets an empty pin, and the engine answers it exactly as a missing one."""
    if wanted is not True and not (isinstance(wanted, str) and wanted):
        raise BadRequest("'cascade' must be true (any cascade) or a cascade variant's name, e.g. 'cascade-cpu-fp32'")
    cache = services.engine.cache
    found = [cache.model(model)] if model is not None else list(cache.models_for_task(task or ""))
    visible = [m for m in found if m is not None and allowed(m)]
    if not visible:
        return frozenset()
    ready = [c.key for m in visible for c in cache.for_model(m.name) if c.variant.kind == KIND]
    chosen = [key for key in ready if wanted is True or key.split("/", 1)[1] == wanted]
    if not chosen:
        what = f"model {model!r}" if model is not None else f"task {task!r}"
        named = "" if wanted is True else f" named {wanted!r}"
        has = f"its ready cascades: {', '.join(ready)}" if ready else "it has none ready"
        raise CascadeNotFound(
            f"{what} has no ready cascade{named} ({has}); GET /v1/tasks/{visible[0].task}/cascades says why each "
            "pair was kept or not"
        )
    return frozenset(chosen)
