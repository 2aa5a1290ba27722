"""Offline (batch) job routes (``/v1/jobs``): submit an input file, poll, fetch the outputs.

Everything a caller can get wrong is checked here, before a job exists: the model or task, the accuracy
floor, and (when a model is named) the input's fit to its signature. A worker then only fails on
problems nobody could see in advance.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from api.deps import PrincipalDep, ServicesDep, visible_model
from api.job_schemas import JobAccepted, JobOut
from api.schemas import ErrorOut
from api.uploads import save_upload
from infaas.array_files import array_bound
from infaas.auth import Principal
from infaas.catalog import JobInfo, ModelInfo
from infaas.db.models import Job
from infaas.errors import BadRequest, Conflict, NotFound, TooManyRequests, Unavailable, UnknownModel
from infaas.model_store.base import check_key
from infaas.offline import (
    JobInputError,
    JobStatus,
    NoVariant,
    choose_plan,
    input_layout,
    job_models,
    match_inputs,
    plan_variant,
    ready_variants,
)
from infaas.scratch import make_scratch
from infaas.services import Services

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses={
        400: {"model": ErrorOut, "description": "invalid input file, input key or field"},
        404: {"model": ErrorOut, "description": "no such job, model or task (or not visible to this key)"},
    },
)

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def _job_for(services: Services, principal: Principal, job_id: str) -> JobInfo:
    """The job if the caller owns it (or is an admin); 404 otherwise, never revealing that it exists."""
    job = services.metadata.get_job(job_id)
    if job is None or not (principal.is_admin or job.owner == principal.tenant):
        raise NotFound(f"job {job_id!r} not found")
    return job


def _input_suffix(path: Path) -> str:
    """``.npy`` or ``.npz`` from the file's content (the client's file name is not trusted)."""
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head.startswith(NPY_MAGIC):
        return ".npy"
    if head.startswith(ZIP_MAGIC):
        return ".npz"
    raise JobInputError("the input must be a .npy or .npz file")


def _check_input_key(services: Services, principal: Principal, key: str) -> str:
    """Allow only the caller's own uploads (``uploads/{tenant}/``) and files of the caller's jobs.

    Any other key could read another tenant's data (or a model's weights) through a job's outputs.
    """
    refusal = BadRequest(
        f"input_key must name an existing .npy/.npz object under uploads/{principal.tenant}/ "
        "or under jobs/<id>/ of one of your jobs"
    )
    try:
        check_key(key)
    except ValueError as exc:
        raise refusal from exc
    parts = key.split("/")
    if key.startswith(f"uploads/{principal.tenant}/"):
        allowed = True
    elif parts[0] == "jobs" and len(parts) >= 3:
        job = services.metadata.get_job(parts[1])
        allowed = job is not None and (principal.is_admin or job.owner == principal.tenant)
    else:
        allowed = False
    if not allowed or not key.endswith((".npy", ".npz")) or not services.store.exists(key):
        raise refusal
    return key


def _check_accuracy(models: list[ModelInfo], min_accuracy: float, what: str) -> None:
    """``NoVariant`` when no ready variant reaches the floor, naming the best one available."""
    variants = ready_variants(models)
    if not variants:
        raise NoVariant(f"{what} has no ready, profiled variant yet")
    choose_plan([plan_variant(m, v, 1, 1, {}) for m, v in variants], min_accuracy, None)


def _check_input(path: Path, models: list[ModelInfo], max_bytes: int) -> None:
    """``JobInputError`` unless the input fits the named model (or, for a task, at least one of its models).

    Only the arrays' headers are read (``input_layout``): a compressed input past ``max_bytes`` gets its
    413 before anything is inflated.
    """
    arrays = input_layout(path, max_bytes)
    reasons: list[str] = []
    for model in models:
        try:
            match_inputs(arrays, model.inputs)
            return
        except JobInputError as exc:
            reasons.append(str(exc) if len(models) == 1 else f"{model.name}: {exc}")
    raise JobInputError("; ".join(reasons))


def _accept(
    services: Services,
    principal: Principal,
    model: str | None,
    task: str | None,
    min_accuracy: float,
    deadline_s: float | None,
    upload: Path | None,
    input_key: str | None,
) -> JobInfo:
    """Check a job request, store its input, record the job and queue it (blocking: runs in a thread)."""
    if bool(model) == bool(task):
        raise BadRequest("give exactly one of 'model' or 'task'")
    if not 0.0 <= min_accuracy <= 1.0:
        raise BadRequest("min_accuracy must be between 0 and 1")
    if deadline_s is not None and deadline_s <= 0:
        raise BadRequest("deadline_s must be positive")
    if (upload is None) == (input_key is None):
        raise BadRequest("give exactly one of an uploaded 'input' file or an 'input_key'")
    if services.jobs is None:
        raise Unavailable("this server has no job runner")
    if model:
        models = [visible_model(services, principal, model)]
        what = f"model {model!r}"
    else:
        models = job_models(services, None, task, principal.tenant)
        what = f"task {task!r}"
        if not models:
            raise UnknownModel(f"no model you may use serves task {task!r}")
    _check_accuracy(models, min_accuracy, what)
    services.quotas.check_jobs(principal)  # again: admission checked before the upload, others may have run since

    job_id = str(uuid.uuid4())
    if upload is not None:
        key = f"jobs/{job_id}/input{_input_suffix(upload)}"
        _check_input(upload, models, array_bound(services.settings))
        services.store.put_file(key, upload)
    else:
        key = _check_input_key(services, principal, input_key or "")
        _check_input(services.store.local_path(key), models, array_bound(services.settings))

    job = services.metadata.add_job(
        Job(
            id=job_id,
            owner=principal.tenant,
            model_name=model or None,
            task=None if model else task,
            input_key=key,
            min_accuracy=min_accuracy,
            deadline_s=deadline_s,
            status=JobStatus.QUEUED,
            progress=0.0,
        )
    )
    try:
        services.quotas.confirm_job(principal, job_id)
    except TooManyRequests:  # lost a race with the tenant's concurrent submissions
        services.metadata.update_job(job_id, status=JobStatus.FAILED, error="refused: over the tenant's job quota")
        services.store.delete_prefix(f"jobs/{job_id}/")
        raise
    try:
        services.jobs.submit("offline_job", job_id=job_id)
    except Exception as exc:
        services.metadata.update_job(job_id, status=JobStatus.FAILED, error=f"could not queue the job: {exc}")
        raise Unavailable(f"could not queue the job: {exc}") from exc
    return job


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
async def submit(
    services: ServicesDep,
    principal: PrincipalDep,
    model: str | None = Form(None, description="run on this model (or give 'task')"),
    task: str | None = Form(None, description="run on any model of this task you may use"),
    min_accuracy: float = Form(0.0, description="accuracy floor in [0, 1]"),
    deadline_s: float | None = Form(None, description="prefer variants that finish within this many seconds"),
    input: UploadFile | None = File(None, description=".npy (single-input models) or .npz named after inputs"),
    input_key: str | None = Form(None, description="an object already stored under uploads/<tenant>/ or jobs/"),
) -> JobAccepted:
    """Queue an offline job over a whole input file; poll ``GET /v1/jobs/{id}`` for its progress."""
    workdir = make_scratch(services.settings, "job-")
    try:
        upload = None
        if input is not None and input.filename:
            limit = int(services.settings.max_upload_mb * 1e6)
            upload = await save_upload(input, workdir, limit, "the input file")
        job = await run_in_threadpool(
            _accept, services, principal, model, task, min_accuracy, deadline_s, upload, input_key or None
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return JobAccepted(id=job.id, status=job.status)


@router.get("", response_model=list[JobOut])
def list_jobs(
    services: ServicesDep,
    principal: PrincipalDep,
    limit: int = 100,
) -> list[JobOut]:
    """The caller's jobs, newest first."""
    return [JobOut.of(j) for j in services.metadata.list_jobs(owner=principal.tenant, limit=max(1, min(limit, 1000)))]


@router.get("/{job_id}", response_model=JobOut)
def describe(job_id: str, services: ServicesDep, principal: PrincipalDep) -> JobOut:
    """Status, progress, chosen variant, result location and error of one job."""
    return JobOut.of(_job_for(services, principal, job_id))


@router.get("/{job_id}/result", response_class=FileResponse)
def result(job_id: str, services: ServicesDep, principal: PrincipalDep) -> FileResponse:
    """The job's outputs as one ``.npz`` (arrays named after the model's outputs)."""
    job = _job_for(services, principal, job_id)
    if job.status != JobStatus.DONE or not job.result_key:
        raise Conflict(f"job {job_id} is {job.status}, it has no result yet")
    return FileResponse(
        services.store.local_path(job.result_key),
        media_type="application/octet-stream",
        filename=f"{job_id}.npz",
    )
