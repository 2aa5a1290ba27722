"""Registering, reading and deleting pipelines: every check runs before the one write.

A pipeline is parsed (``spec``), checked against the models its owner may use (``validation``), its scale
factors measured on validation rows (``scale``), and only then stored, so a refused one leaves nothing. A model
that a pipeline names cannot be deleted from under it: ``PipelineStore.refuse_if_used`` (called by the model
deletion path) answers 409 naming the pipelines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infaas.catalog import ModelInfo
from infaas.pipelines.scale import measure
from infaas.pipelines.spec import PipelineSpec, parse_spec
from infaas.pipelines.store import PipelineInfo, PipelineStore, UnknownPipeline
from infaas.pipelines.validation import check_against_catalog
from infaas.services import Services


def store_of(services: Services) -> PipelineStore:
    """The pipelines table over the services' database (stateless: built per use)."""
    return PipelineStore(services.db)


def register_pipeline(
    services: Services, raw: Any, owner: str, allowed: Callable[[ModelInfo], bool]
) -> tuple[PipelineInfo, PipelineSpec]:
    """Validate ``raw`` against the models ``allowed`` to the owner, measure its scale factors, store it."""
    spec = parse_spec(raw)
    models = [m for m in services.metadata.list_models() if allowed(m)]
    served = check_against_catalog(spec, models)
    scale = measure(spec, served, services.store)
    info = store_of(services).add(spec.name, owner, spec.to_json(), spec.models(), scale.to_json())
    return info, spec


def visible_pipeline(services: Services, name: str, tenant: str, is_admin: bool) -> PipelineInfo:
    """The pipeline if its owner (or an admin) asks; 404 otherwise, never revealing that it exists."""
    info = store_of(services).get(name)
    if info is None or not (is_admin or info.owner == tenant):
        raise UnknownPipeline(f"pipeline {name!r} not found")
    return info


__all__ = ["register_pipeline", "store_of", "visible_pipeline"]
