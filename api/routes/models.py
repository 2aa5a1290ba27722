"""Model registration and catalog routes (``/v1/models``)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from api.deps import PrincipalDep, ServicesDep, can_use, visible_model
from api.schemas import DeletedOut, ErrorOut, ModelOut, VariantOut
from api.uploads import save_upload
from infaas.auth import model_namespace
from infaas.errors import Forbidden
from infaas.input_shapes import parse_input_shapes
from infaas.registration import RegistrationRequest, delete_model, register_model
from infaas.scratch import make_scratch

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    responses={
        400: {"model": ErrorOut, "description": "invalid model, validation set or field"},
        404: {"model": ErrorOut, "description": "no such model (or not visible to this key)"},
        409: {"model": ErrorOut, "description": "a model of that name already exists"},
    },
)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelOut)
async def register(
    services: ServicesDep,
    principal: PrincipalDep,
    model: UploadFile = File(..., description="the .onnx model file"),
    name: str = Form(...),
    task: str = Form(...),
    accuracy: float | None = Form(None, description="declared accuracy in [0, 1]"),
    max_batch: int = Form(16),
    public: bool = Form(False),
    validation: UploadFile | None = File(None, description="optional .npz validation set"),
    input_shape: str | None = Form(
        None,
        description="shapes for inputs with dynamic dimensions, 'NAME=D0,D1,...' separated by ';' "
        "(e.g. 'images=1,3,320,320'); without it registration tries the model's metadata, then common sizes",
    ),
) -> ModelOut:
    """Register a model: every check runs before anything is stored; the variant build is queued."""
    limit = int(services.settings.max_upload_mb * 1e6)
    workdir = make_scratch(services.settings, "register-")
    try:
        model_path = await save_upload(model, workdir, limit, "the model file")
        validation_path = None
        if validation is not None and validation.filename:
            validation_path = await save_upload(validation, workdir, limit, "the validation file")
        request = RegistrationRequest(
            name=name,
            namespace=model_namespace(principal),
            task=task,
            model_path=model_path,
            validation_path=validation_path,
            declared_accuracy=accuracy,
            max_batch=max_batch,
            owner=principal.tenant,
            public=public,
            input_shapes=parse_input_shapes(input_shape),
        )
        info = await run_in_threadpool(register_model, services, request)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ModelOut.of(info)


@router.get("", response_model=list[ModelOut])
def list_models(services: ServicesDep, principal: PrincipalDep) -> list[ModelOut]:
    """Models the caller may use, without variant details."""
    return [ModelOut.of(m, with_variants=False) for m in services.metadata.list_models() if can_use(principal, m)]


@router.get("/{name}", response_model=ModelOut)
def describe(name: str, services: ServicesDep, principal: PrincipalDep) -> ModelOut:
    """One model with every variant, its status, reason and profile."""
    return ModelOut.of(visible_model(services, principal, name))


@router.get("/{name}/variants", response_model=list[VariantOut])
def variants(name: str, services: ServicesDep, principal: PrincipalDep) -> list[VariantOut]:
    """The model's variants with status, reason, accuracy (value, metric, measured or estimated), fidelity, profiles."""
    model = visible_model(services, principal, name)
    return [VariantOut.of(v, model) for v in model.variants]


@router.post("/{name}/profile", status_code=status.HTTP_202_ACCEPTED, response_model=ModelOut)
def reprofile(name: str, services: ServicesDep, principal: PrincipalDep) -> ModelOut:
    """Queue a re-profile of every ready variant (e.g. after moving to new hardware).

    Owner or admin only, within the per-model hourly quota: profiling runs every variant on the serving
    host, and 40 re-profiles of alice's public model by bob made alice's next registration take 43 s to
    become ready instead of 1.3 s (issue 14).
    """
    model = visible_model(services, principal, name)
    if not (principal.is_admin or model.owner == principal.tenant):
        raise Forbidden(f"model {name!r} belongs to another tenant: only its owner or an admin may re-profile it")
    services.quotas.admit_reprofile(principal, name)
    if services.jobs is not None:
        services.jobs.submit("profile_variants", model_name=name)
    return ModelOut.of(model)


@router.delete("/{name}", response_model=DeletedOut)
def delete(name: str, services: ServicesDep, principal: PrincipalDep) -> DeletedOut:
    """Delete a model, its variants, profiles and every stored file (owner or admin only)."""
    model = visible_model(services, principal, name)
    if not (principal.is_admin or model.owner == principal.tenant):
        raise Forbidden(f"model {name!r} is public but belongs to another tenant")
    delete_model(services, name)
    return DeletedOut(deleted=name)
