"""What a registration or deletion cut short by a crash leaves behind, and the sweep that clears it.

Every file of a model lives under ``models/<name>/`` (``model_prefix``), so a model's files and its
rows are paired by name. Registration and deletion move a model through states that say which half
may be incomplete (the sequences are in ``infaas.registration``):

- ``registering``: the row exists, its files may be partly written and nothing was acknowledged.
  Older than the grace period, it is an abandoned registration: its files and row are removed.
- ``deleting``: the deletion was decided; files may be partly removed. The sweep finishes it at once
  (removing files and rows again is harmless).
- files under ``models/<name>/`` or ``jobs/<id>/`` with no row of that name or id, all older than the
  grace period: written by a registration or job submission that died before recording them, or left by
  a variant build racing a deletion. Removed.
- a temporary file or incomplete upload of an interrupted write, older than the grace period: removed.
- a registered model (pending, building, ready or failed) whose own file is missing — which the
  sequences never produce, but a store can lose — is marked ``failed`` with the missing key as reason,
  so its owner sees why instead of a query failing later.
- an offline job still ``queued`` with no work item recorded for it, older than the grace period: its
  front-end died between recording the job and queueing it (``api/routes/jobs.py``), so nothing will
  ever run it. It is ``failed`` with that reason (the client got no answer, and submits it again).

The grace period is there because a live registration or job submission is between writing its files
and recording them (or the reverse) for a moment, and a sweep in another process must not take that
moment for a crash. Everything removed is logged at WARNING, with the reason.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from infaas.db.models import ModelStatus
from infaas.errors import NotFound
from infaas.metadata import MetadataStore
from infaas.model_store import ModelStore

log = logging.getLogger(__name__)

MODELS_PREFIX = "models/"
JOBS_PREFIX = "jobs/"


def model_prefix(name: str) -> str:
    """Store prefix holding everything of one model (original, validation set, variants)."""
    return f"{MODELS_PREFIX}{name}/"


def remove_model(metadata: MetadataStore, store: ModelStore, name: str) -> None:
    """The second half of a deletion (the row is already ``deleting``): files first, then the rows.

    Files go first so that a crash in between leaves a ``deleting`` row, which the sweep finishes; the
    other order would leave files that only the grace period could tell from a live registration's.
    """
    store.delete_prefix(model_prefix(name))
    metadata.delete_model(name)


@dataclass
class SweepReport:
    """What one sweep removed or marked, for the log and for tests."""

    finished_deletions: list[str] = field(default_factory=list)
    abandoned_registrations: list[str] = field(default_factory=list)
    orphan_prefixes: list[str] = field(default_factory=list)
    partial_writes: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    unqueued_jobs: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether the sweep found nothing to do."""
        return not any(vars(self).values())


def sweep(metadata: MetadataStore, store: ModelStore, grace_s: float, now: datetime | None = None) -> SweepReport:
    """Finish cut-short deletions, remove abandoned registrations and orphans, flag models missing their file."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=grace_s)
    report = SweepReport()
    for model in metadata.models_with_status(ModelStatus.DELETING):
        remove_model(metadata, store, model.name)
        report.finished_deletions.append(model.name)
        log.warning("finished deleting model %s (its deletion had stopped half-way)", model.name)
    for model in metadata.models_with_status(ModelStatus.REGISTERING):
        if _aware(model.created_at) < cutoff and metadata.mark_model_deleting(
            model.name, status=ModelStatus.REGISTERING
        ):
            remove_model(metadata, store, model.name)
            report.abandoned_registrations.append(model.name)
            log.warning("removed model %s: its registration stopped before it was committed", model.name)
    # List the store before reading the rows: a registration inserts its row before writing files, so a
    # file seen here whose row is missing below really has no row.
    models_listed = _by_first_part(store.list_modified(MODELS_PREFIX), MODELS_PREFIX)
    jobs_listed = _by_first_part(store.list_modified(JOBS_PREFIX), JOBS_PREFIX)
    names = metadata.model_names()
    for name, files in models_listed.items():
        if name not in names and max(files.values()) < cutoff:
            _remove_orphans(store, model_prefix(name), files, "no model row", report)
    for job_id, files in jobs_listed.items():
        if max(files.values()) < cutoff and metadata.get_job(job_id) is None:
            _remove_orphans(store, f"{JOBS_PREFIX}{job_id}/", files, "no job row", report)
    report.partial_writes = store.remove_partial_writes(cutoff)
    for key in report.partial_writes:
        log.warning("removed %s: a write cut short by a crash", key)
    _flag_missing_files(metadata, store, models_listed, cutoff, report)
    _fail_unqueued_jobs(metadata, cutoff, report)
    return report


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _by_first_part(modified: dict[str, datetime], prefix: str) -> dict[str, dict[str, datetime]]:
    grouped: dict[str, dict[str, datetime]] = defaultdict(dict)
    for key, when in modified.items():
        first = key[len(prefix) :].split("/", 1)[0]
        if first:
            grouped[first][key] = _aware(when)
    return grouped


def _remove_orphans(store: ModelStore, prefix: str, files: dict[str, datetime], why: str, report: SweepReport) -> None:
    store.delete_prefix(prefix)
    report.orphan_prefixes.append(prefix)
    log.warning("removed %d orphan file(s) under %s (%s, older than the grace period)", len(files), prefix, why)


def _flag_missing_files(
    metadata: MetadataStore,
    store: ModelStore,
    listed: dict[str, dict[str, datetime]],
    cutoff: datetime,
    report: SweepReport,
) -> None:
    registered = (ModelStatus.PENDING, ModelStatus.BUILDING, ModelStatus.READY, ModelStatus.FAILED)
    for model in metadata.models_with_status(*registered):
        if model.artifact_key in listed.get(model.name, {}) or _aware(model.created_at) >= cutoff:
            continue
        if store.exists(model.artifact_key):  # written after the listing (a registration slower than the grace)
            continue
        reason = f"its stored model file {model.artifact_key} is missing; delete the model and register it again"
        if model.status == ModelStatus.FAILED and model.status_reason == reason:
            continue
        try:
            metadata.set_model_status(model.name, ModelStatus.FAILED, reason)
        except NotFound:  # deleted meanwhile
            continue
        report.missing_files.append(model.name)
        log.warning("model %s marked failed: %s", model.name, reason)


# ``infaas.offline.JobStatus`` (not imported: the offline module depends on the composition root, which
# depends on this module).
JOB_QUEUED, JOB_FAILED = "queued", "failed"
UNQUEUED_REASON = "the server stopped before the job was queued; submit it again"


def _fail_unqueued_jobs(metadata: MetadataStore, cutoff: datetime, report: SweepReport) -> None:
    queued = metadata.jobs_with_status(JOB_QUEUED, cutoff)
    if not queued:
        return
    since = _aware(queued[0].created_at)
    recorded = {item.kwargs.get("job_id") for item in metadata.list_work_items(task="offline_job", created_since=since)}
    for job in queued:
        if job.id in recorded:
            continue
        metadata.update_job(job.id, status=JOB_FAILED, error=UNQUEUED_REASON)
        report.unqueued_jobs.append(job.id)
        log.warning("offline job %s failed: %s", job.id, UNQUEUED_REASON)
