"""Registering, reading and deleting pipelines: every check runs before the one write.

A pipeline is parsed (``spec``), checked against the models its owner may use (``validation``), its scale
factors measured on validation rows (``scale``), and only then stored, so a refused one leaves nothing. A model
that a pipeline names cannot be deleted from under it: ``PipelineStore.refuse_if_used`` (called by the model
deletion path) answers 409 naming the pipelines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from infaas.catalog import ModelInfo
from infaas.errors import Unprocessable
from infaas.pipelines.options import StageOption, stage_options
from infaas.pipelines.path import ServingPath
from infaas.pipelines.planner import plan, service_time_p99
from infaas.pipelines.scale import ScaleFactors, measure
from infaas.pipelines.simulator import arrival_times
from infaas.pipelines.spec import PipelineInvalid, PipelineSpec, parse_spec
from infaas.pipelines.store import PipelineInfo, PipelineStore, UnknownPipeline
from infaas.pipelines.validation import check_against_catalog
from infaas.services import Services


class ObjectiveBelowServiceTime(Unprocessable):
    """The end-to-end objective is below what the fastest variants take with no queueing."""

    code = "objective_below_service_time"


class NothingToPlan(Unprocessable):
    """A stage has no ready, profiled variant that meets its accuracy floor (yet)."""

    code = "nothing_to_plan"


def store_of(services: Services) -> PipelineStore:
    """The pipelines table over the services' database (stateless: built per use)."""
    return PipelineStore(services.db)


def register_pipeline(
    services: Services, raw: Any, owner: str, allowed: Callable[[ModelInfo], bool], namespace: str | None = None
) -> tuple[PipelineInfo, PipelineSpec]:
    """Validate ``raw`` against the models ``allowed`` to the owner, measure its scale factors, store it.

    Names are namespaced as models are (``infaas.auth.model_namespace``): a tenant's pipeline is stored as
    ``<tenant>.<name>``, so a definition never collides with (and so never reveals) another tenant's.
    """
    spec = parse_spec(raw)
    if namespace is not None and not spec.name.startswith(f"{namespace}."):
        spec = replace(spec, name=f"{namespace}.{spec.name}")
    elif namespace is None and "." in spec.name:
        raise PipelineInvalid(
            "names with '.' are reserved for tenant namespaces ('<tenant>.<name>'); pick a name without '.'"
        )
    models = [m for m in services.metadata.list_models() if allowed(m)]
    served = check_against_catalog(spec, models)
    scale = measure(spec, served, services.store)
    options = {
        name: stage_options(served[name], spec.stage(name).min_accuracy, services.settings.prices)
        for name in spec.order
    }
    if all(options.values()):  # profiled already: an objective no plan can meet is refused now
        _check_objective(spec, options, scale)
    info = store_of(services).add(spec.name, owner, spec.to_json(), spec.models(), scale.to_json())
    return info, spec


def _check_objective(
    spec: PipelineSpec, options: dict[str, list[StageOption]], scale: ScaleFactors, path: ServingPath | None = None
) -> float:
    best = service_time_p99(spec, options, scale.edges, path=path)
    if best > spec.p99_ms:
        raise ObjectiveBelowServiceTime(
            f"p99_ms {spec.p99_ms:g} is below the pipeline's service time: its fastest variants, with no queueing, "
            f"reach a P99 of {best:.2f} ms; ask for at least that"
        )
    return best


def plan_pipeline(
    services: Services, info: PipelineInfo, allowed: Callable[[ModelInfo], bool], path: ServingPath | None = None
) -> PipelineInfo:
    """Plan a stored pipeline on its arrivals with the current profiles, store the plan and return it.

    ``path``: the serving path's measured work (``infaas.pipelines.path.measure``), judged with every candidate;
    when not given, the one the current plan was made with, if it had one (a re-plan keeps what was measured),
    else none (the plan document's ``serving_path`` then says it was not measured).

    Refused (422, nothing stored) when a stage has no usable variant yet or the objective is below the
    service time.
    """
    stored = (info.plan or {}).get("serving_path") or {}
    if path is None and "entry_ms" in stored:
        path = ServingPath.from_json(stored)
    spec = parse_spec(info.spec)
    served = check_against_catalog(spec, [m for m in services.metadata.list_models() if allowed(m)])
    options = {
        name: stage_options(served[name], spec.stage(name).min_accuracy, services.settings.prices)
        for name in spec.order
    }
    empty = [name for name, found in options.items() if not found]
    if empty:
        raise NothingToPlan(
            f"stage(s) {empty} have no ready, profiled variant meeting their min_accuracy yet: wait for the builds"
        )
    scale = ScaleFactors.from_json(info.scale_factors)
    service_ms = _check_objective(spec, options, scale, path)
    planned = plan(spec, options, scale.edges, arrival_times(spec.arrivals), path=path)
    document = planned.to_json(options) | {
        "planned_at": datetime.now(UTC).isoformat(),
        "scale_factors": scale.stages,
        "service_ms": round(service_ms, 3),  # the tuner's shortest envelope window
    }
    return store_of(services).set_plan(info.name, document)


def visible_pipeline(services: Services, name: str, tenant: str, is_admin: bool) -> PipelineInfo:
    """The pipeline if its owner (or an admin) asks; 404 otherwise, never revealing that it exists."""
    info = store_of(services).get(name)
    if info is None or not (is_admin or info.owner == tenant):
        raise UnknownPipeline(f"pipeline {name!r} not found")
    return info


__all__ = [
    "NothingToPlan",
    "ObjectiveBelowServiceTime",
    "plan_pipeline",
    "register_pipeline",
    "store_of",
    "visible_pipeline",
]
