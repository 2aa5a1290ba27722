"""Registry of background tasks; each is ``function(services, **json_kwargs)`` and idempotent.

A table of ``"module:function"`` names, imported on first use: the API process starts fast, and the core
names its plugins' tasks without importing them (``Services.run_task`` runs one). A task may also name a
give-up hook, ``function(services, reason, **json_kwargs)``, called once when the task failed for good
(``infaas.jobs.durable``), so the reason shows where its user looks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TaskFunction = Callable[..., Any]
_TASKS: dict[str, str] = {
    # name -> "module:function", imported lazily so the API process starts fast.
    "build_variants": "variant_generator.build:build_model_variants",
    "profile_variants": "variant_generator.build:reprofile_model",
    "build_cascades": "variant_generator.cascades.construct:build_task_cascades",
    "recalibrate_cascade": "variant_generator.cascades.construct:recalibrate_cascade",
    "offline_job": "infaas.offline:run_offline_job",
    # What the job transport carries: run the recorded work item with this id (infaas.jobs.durable).
    "work_item": "infaas.jobs.durable:run_work_item",
}
_GIVE_UP: dict[str, str] = {
    "build_variants": "variant_generator.build:build_given_up",
    "profile_variants": "variant_generator.build:reprofile_given_up",
    "offline_job": "infaas.offline:offline_job_given_up",
}


def _load(target: str) -> TaskFunction:
    import importlib

    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def get(name: str) -> TaskFunction:
    """The function behind a task name."""
    try:
        target = _TASKS[name]
    except KeyError as exc:
        raise KeyError(f"unknown background task {name!r}") from exc
    return _load(target)


def give_up_hook(name: str) -> TaskFunction | None:
    """The function that records a task's final failure for its user, if the task has one."""
    target = _GIVE_UP.get(name)
    return _load(target) if target else None


def names() -> list[str]:
    """Every registered task name."""
    return sorted(_TASKS)
