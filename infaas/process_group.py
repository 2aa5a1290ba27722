"""What the processes of one embedded ``infaas serve --workers N`` share beyond the database and the model store.

``infaas serve --workers N`` runs N copies of the embedded front-end on one port (uvicorn's worker processes,
accepting from one listening socket). Each copy is a whole embedded deployment -- its own in-process live
state, in-process worker and autoscaler -- on the shared SQLite metadata and model folder, so a query is
answered entirely inside the process that accepted its connection, with no hop between processes. Why: one
process's Python work per request (HTTP, the OIP decode, dispatch) under one GIL was what limited
``benchmarks/peers.py``; MLServer runs one process per core.

Only one thing must travel between the copies: that the catalog changed (a registration, a build, a profile,
a deletion). In a scaled-out deployment Redis announces it (``RedisLiveState.catalog_changed``); here
:class:`CatalogFile` does, through an append-only file in the infaas home that every copy writes to when its
metadata store changes the catalog and polls for the others' lines. A copy learns of another's change within
one poll (``POLL_S``), like a Redis subscriber after a lost message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from infaas.config import Settings

log = logging.getLogger(__name__)

# How often a copy looks for the others' announcements: one ``os.stat`` per poll, from a background thread.
# A copy's own cache is invalidated at once; another copy's within this.
POLL_S = 0.2
CATALOG_FILE = "serve-catalog-changes"


def check_serve_workers(settings: Settings, workers: int) -> None:
    """Refuse, with the reason, a number of ``infaas serve`` processes these settings cannot serve correctly.

    Embedded copies share nothing in memory, so what must be counted across them cannot be: per-tenant quotas
    (registrations, re-profiles) would allow N times their limit, so with an admin key several processes need
    Redis. With Redis, each copy's in-process worker would register in the shared live state under one id
    (``INFAAS_WORKER_ID`` or ``local``), and other front-ends cannot reach an in-process worker anyway: scaled
    out, the workers are ``infaas worker`` processes and the front-ends run without one.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        return
    if settings.redis_url and settings.in_process_worker:
        raise ValueError(
            "with INFAAS_REDIS_URL, several serve processes share the live state, where their in-process workers "
            "would register under one id: run `infaas worker` processes and set INFAAS_IN_PROCESS_WORKER=false"
        )
    if settings.auth_enabled and not settings.redis_url:
        raise ValueError(
            "with INFAAS_ADMIN_KEY set, per-tenant quotas would be counted per process: set INFAAS_REDIS_URL "
            "to count them together, or serve with one process"
        )


def group_environment(settings: Settings, workers: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables ``infaas serve`` sets for its worker processes (they inherit its environment).

    ``INFAAS_SERVE_WORKERS`` tells each copy that it is one of a group (so it watches the catalog file). The
    embedded copies' in-process workers split the cores (``INFAAS_WORKER_CORES``, unless set): N workers that
    each believed they had every core would each run replicas for all of them, so the cores would be promised
    N times over to the model-level autoscaler and the selector's throughput figures.
    """
    env = {"INFAAS_SERVE_WORKERS": str(workers)}
    if workers > 1 and not settings.redis_url and "INFAAS_WORKER_CORES" not in environ:
        env["INFAAS_WORKER_CORES"] = str(max(1, settings.worker_cores // workers))
    return env


def catalog_file_path(home: Path) -> Path:
    """Where the copies of one ``infaas serve --workers N`` announce catalog changes."""
    return home / CATALOG_FILE


def watch_catalog(
    settings: Settings,
    add_listener: Callable[[Callable[[str], None]], None],
    catalog_changed: Callable[[str], None],
    catch_up_on_miss: Callable[[Callable[[], object]], None],
) -> CatalogFile | None:
    """In one copy of an embedded ``infaas serve --workers N``: announce this copy's catalog changes (through
    ``add_listener``, the metadata store's), pass the others' to ``catalog_changed`` (the engine's), and read
    them at once when the catalog misses a model (``catch_up_on_miss``, the candidate cache's), so a model
    registered through one copy is known to all as soon as its registration answered. ``None`` for a single
    process, or with Redis, whose live state already announces changes between front-ends."""
    if settings.serve_workers == 1 or settings.redis_url:
        return None
    announcements = CatalogFile(catalog_file_path(settings.home))
    add_listener(announcements.changed)
    announcements.on_change(catalog_changed)
    catch_up_on_miss(announcements.poll)
    announcements.start()
    return announcements


class CatalogFile:
    """Catalog changes announced between processes through one append-only file.

    Each line is a JSON pair ``[token, model_name]``: the token tells a process its own lines (which its
    metadata listeners have already handled) from the others'. Lines are appended with ``O_APPEND`` in one
    ``write`` each, so concurrent writers never interleave within a line; a reader keeps its offset and
    hands only whole lines on. A file that shrank (removed or truncated by a new ``infaas serve``) is read
    from its start again, and every callback is told ``""`` (any model), as Redis's polled counter does.
    """

    def __init__(self, path: Path, poll_s: float = POLL_S) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self.path = path
        self.poll_s = poll_s
        self.token = uuid.uuid4().hex
        self._callbacks: list[Callable[[str], None]] = []
        self._offset = self._size()  # earlier changes are already in the catalog this process reads at start
        self._partial = b""
        self._reading = threading.RLock()  # the poller thread, and request threads catching up on a miss
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def changed(self, model_name: str) -> None:
        """Announce that ``model_name`` (its variants or profiles) changed: a metadata listener; never raises."""
        line = (json.dumps([self.token, model_name]) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            # The change itself is committed; the other processes still serve, with a stale catalog.
            log.warning("could not announce a change to %s in %s", model_name, self.path, exc_info=True)

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(model_name)`` for every change another process announces."""
        self._callbacks.append(callback)

    def start(self) -> None:
        """Start polling (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="catalog-file", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # a bad line or callback must not end the watcher
                log.exception("catalog file %s: poll failed", self.path)

    def poll(self) -> list[str]:
        """Read what was appended since the last poll and notify; the other processes' model names, in order."""
        with self._reading:
            return self._poll()

    def _poll(self) -> list[str]:
        size = self._size()
        if size < self._offset:
            self._offset, self._partial = 0, b""
            self._notify("")
        if size == self._offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = self._partial + handle.read(size - self._offset)
        self._offset = size
        *lines, self._partial = data.split(b"\n")
        names: list[str] = []
        for raw in lines:
            try:
                token, name = json.loads(raw)
            except (ValueError, TypeError):
                log.warning("catalog file %s: unreadable line %r; invalidating everything", self.path, raw[:100])
                token, name = None, ""
            if token != self.token:
                names.append(str(name))
        for name in names:
            self._notify(name)
        return names

    def _notify(self, model_name: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(model_name)
            except Exception:
                log.exception("catalog change callback failed for %r", model_name)
