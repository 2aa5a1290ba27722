"""Registry of background tasks; each is ``function(services, **json_kwargs)`` and idempotent.

A table of ``"module:function"`` names, imported on first use: the API process starts fast, and the core
names its plugins' tasks without importing them (``Services.run_task`` runs one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TaskFunction = Callable[..., Any]
_TASKS: dict[str, str] = {
    # name -> "module:function", imported lazily so the API process starts fast.
    "build_variants": "variant_generator.build:build_model_variants",
    "profile_variants": "variant_generator.build:reprofile_model",
    "offline_job": "infaas.offline:run_offline_job",
}


def get(name: str) -> TaskFunction:
    """The function behind a task name."""
    import importlib

    try:
        module_name, attr = _TASKS[name].split(":")
    except KeyError as exc:
        raise KeyError(f"unknown background task {name!r}") from exc
    return getattr(importlib.import_module(module_name), attr)


def names() -> list[str]:
    """Every registered task name."""
    return sorted(_TASKS)
