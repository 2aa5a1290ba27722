"""The process's service container: settings, database, metadata, model store, live state, jobs.

Built once at start-up from configuration; this is the only place that chooses between the embedded
and scaled-out implementations of each concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infaas.config import Settings
from infaas.db.migrate import upgrade
from infaas.db.session import Database
from infaas.live_state import make_live_state
from infaas.metadata import MetadataStore
from infaas.model_store import ModelStore, open_model_store

if TYPE_CHECKING:
    from infaas.jobs.runner import JobRunner


@dataclass
class Services:
    """Everything a route, a task or the autoscaler needs, passed explicitly."""

    settings: Settings
    db: Database
    metadata: MetadataStore
    store: ModelStore
    jobs: JobRunner | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Stop background work and release connections."""
        if self.jobs is not None:
            self.jobs.shutdown()
        live = self.extras.get("live_state")
        if live is not None:
            live.close()
        self.db.dispose()


def build_services(settings: Settings, *, migrate: bool = True, with_jobs: bool = True) -> Services:
    """Open every backend named by ``settings``; apply migrations first when asked."""
    settings.ensure_home()
    url = settings.resolved_database_url
    if migrate:
        upgrade(url)
    db = Database(url)
    services = Services(
        settings=settings,
        db=db,
        metadata=MetadataStore(db),
        store=open_model_store(settings.resolved_model_store, cache_dir=str(settings.home / "cache")),
    )
    # Live state is chosen here like every other backend; catalog changes made in this process
    # (registration, builds, profiling) are announced to every other process through it.
    live = services.extras["live_state"] = make_live_state(settings)
    services.metadata.add_listener(live.catalog_changed)
    if with_jobs:
        from infaas.jobs.runner import make_runner

        services.jobs = make_runner(services)
    return services
