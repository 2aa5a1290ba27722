"""Response bodies of the offline job routes (``/v1/jobs``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from infaas.catalog import JobInfo
from infaas.offline import JobStatus


class JobAccepted(BaseModel):
    id: str
    status: str


class JobOut(BaseModel):
    id: str
    status: str
    progress: float
    model: str | None
    task: str | None
    min_accuracy: float
    deadline_s: float | None
    variant: str | None
    result_key: str | None
    result_url: str | None
    error: str | None
    note: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, job: JobInfo) -> JobOut:
        """The job row as the caller sees it.

        The row has one text column for both failures and warnings: it is ``error`` once the job failed
        and a ``note`` (e.g. a deadline that will probably be missed) otherwise.
        """
        failed = job.status == JobStatus.FAILED
        return cls(
            id=job.id,
            status=job.status,
            progress=job.progress,
            model=job.model_name,
            task=job.task,
            min_accuracy=job.min_accuracy,
            deadline_s=job.deadline_s,
            variant=job.variant,
            result_key=job.result_key,
            result_url=f"/v1/jobs/{job.id}/result" if job.status == JobStatus.DONE else None,
            error=job.error if failed else None,
            note=None if failed else job.error,
            created_at=job.created_at,
            updated_at=job.updated_at,
        )
