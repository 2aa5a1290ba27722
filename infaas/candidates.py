"""In-memory candidate cache: the selector's view of the catalog, with no SQL on the query path.

Rebuilt lazily from the metadata store after any catalog change. ``MetadataStore`` calls our
listener in-process; a scaled-out deployment calls ``invalidate()`` from its pub/sub subscriber.

Another process's change reaches us within a poll, so a name this cache does not know, or a model it holds
no ready variant of, first asks the announcer to catch up (``catch_up_on_miss``): a model registered through
one process of ``infaas serve --workers 2`` answered 404 on the other for up to a poll after its 201 (CI,
session 8). Only misses pay it (one ``os.stat`` for the process group's file), not the query path. In a process
group a name nobody registered so costs a few microseconds more than another tenant's private model
(``api.deps.visible_model`` keeps the two alike; they differed by 3.4 ms before issue 14).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from infaas.catalog import ModelInfo
from infaas.metadata import MetadataStore
from infaas.selector import Candidate


@dataclass(frozen=True)
class _Index:
    models: dict[str, ModelInfo] = field(default_factory=dict)
    models_by_task: dict[str, tuple[ModelInfo, ...]] = field(default_factory=dict)
    by_model: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)


class CandidateCache:
    """Ready variants indexed by model name and by task, plus every model (ready or not)."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata
        self._lock = threading.Lock()
        self._wanted = 1  # bumped by invalidate(); the index is stale while _built != _wanted
        self._built = 0
        self._index = _Index()
        self._catch_up: Callable[[], object] | None = None
        metadata.add_listener(lambda _model_name: self.invalidate())

    def catch_up_on_miss(self, catch_up: Callable[[], object]) -> None:
        """Call ``catch_up`` (which may ``invalidate()`` through the engine) before answering that a model is
        unknown or has no ready variant, so that what another process announced has been heard."""
        self._catch_up = catch_up

    def _caught_up(self) -> _Index:
        if self._catch_up is not None:
            self._catch_up()
        return self._current()

    def invalidate(self) -> None:
        """Mark the cache stale; the next read rebuilds it."""
        self._wanted += 1

    def _current(self) -> _Index:
        if self._built == self._wanted:
            return self._index
        with self._lock:
            target = self._wanted
            if self._built != target:
                self._index = self._build()
                # A change during the build bumped _wanted past target and forces another rebuild.
                self._built = target
        return self._index

    def _build(self) -> _Index:
        models = {m.name: m for m in self._metadata.list_models()}
        by_task: dict[str, list[ModelInfo]] = {}
        for m in models.values():
            by_task.setdefault(m.task, []).append(m)
        by_model: dict[str, list[Candidate]] = {}
        for model, variant in self._metadata.ready_variants():
            by_model.setdefault(model.name, []).append(Candidate.of(models.get(model.name, model), variant))
        return _Index(
            models=models,
            models_by_task={t: tuple(ms) for t, ms in by_task.items()},
            by_model={k: tuple(v) for k, v in by_model.items()},
        )

    def model(self, name: str) -> ModelInfo | None:
        """A registered model, ready or not."""
        found = self._current().models.get(name)
        return found if found is not None else self._caught_up().models.get(name)

    def models_for_task(self, task: str) -> tuple[ModelInfo, ...]:
        """Every model registered for a task."""
        return self._current().models_by_task.get(task) or self._caught_up().models_by_task.get(task, ())

    def for_model(self, name: str) -> tuple[Candidate, ...]:
        """Ready, profiled variants of one model."""
        return self._current().by_model.get(name) or self._caught_up().by_model.get(name, ())

    def all_models(self) -> tuple[ModelInfo, ...]:
        """Every registered model."""
        return tuple(self._current().models.values())
