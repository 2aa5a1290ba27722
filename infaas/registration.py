"""Model registration and deletion, each safe against the process dying at any moment.

Nothing is written before every check has passed. Then a registration runs:

1. insert the row as ``registering`` (a concurrent registration of the same name fails here, with
   ``DuplicateModel``, before it could overwrite the winner's files);
2. write the files under ``models/<name>/`` (each atomically: a temporary name, fsync, rename; on S3 an
   atomic PUT);
3. in one transaction, move the row to ``pending`` and record its variant build as a work item: this
   commit is the registration;
4. hand the build to the job runner, and answer the caller.

Where it can stop, and what becomes of it:

- before 1, or a check failed: nothing was written.
- after 1, during or after 2 (a row ``registering``, some or all files): the caller got no answer. An
  error in this process takes its own row and files back at once; a killed process leaves them to the
  sweep (``infaas.orphans``), which removes the row and files once older than ``orphan_grace_s``.
- after 3, before 4: the build is recorded, leased to this (dead) process; when the lease expires, the
  work sweep hands it to a runner (``infaas.jobs.durable``). The model is ``pending`` until then.
- after 4: an ordinary registered model whose build is recorded and resumed until it ends.

Deletion runs: mark the row ``deleting`` (queries stop choosing it; the name stays taken), remove every
file under ``models/<name>/``, delete the rows. Stopped after the mark, the sweep finishes it (removing
files and rows is idempotent); the row never disappears while files of it remain, so no file is orphaned
by a deletion. A variant build that uploads while the model is being deleted removes its own upload, and
the orphan sweep removes any such file that was written as the row went.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from infaas.array_files import array_bound
from infaas.catalog import ModelInfo
from infaas.db.models import ModelStatus
from infaas.errors import BadRequest
from infaas.input_shapes import Shapes
from infaas.metadata import DuplicateModel, NewModel, NewWorkItem
from infaas.onnx_check import check_limits, check_model_isolated, check_validation_file
from infaas.orphans import model_prefix, remove_model
from infaas.pipelines.store import PipelineStore
from infaas.services import Services

log = logging.getLogger(__name__)

# Matched with ``fullmatch``: with ``match`` and ``$``, a name ending in a newline passed and failed later as a 500.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_BATCH_LIMIT = 4096


class RegistrationError(BadRequest):
    """A registration field was refused; the message says what to fix.

    A taken name is ``metadata.DuplicateModel`` and a bad file ``onnx_check.ModelCheckError``: each
    refusal keeps the class (and so the status) of the concern that found it.
    """

    code = "invalid_registration"


@dataclass(frozen=True)
class RegistrationRequest:
    """What a user supplies to register a model."""

    name: str
    task: str
    model_path: Path
    validation_path: Path | None = None
    declared_accuracy: float | None = None
    max_batch: int = 16
    owner: str = "local"
    public: bool = False
    namespace: str | None = None  # tenant registrations are stored as "<namespace>.<name>"
    # The owner's shapes for inputs with dynamic dimensions (``--input-shape``; ``infaas.input_shapes``).
    input_shapes: Shapes = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        """The name the model is stored and addressed under."""
        if self.namespace is None or self.name.startswith(f"{self.namespace}."):
            return self.name
        return f"{self.namespace}.{self.name}"


def _check_fields(request: RegistrationRequest) -> None:
    if not NAME_PATTERN.fullmatch(request.name):
        raise RegistrationError(
            "name must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if request.namespace is None and "." in request.name:
        raise RegistrationError(
            f"names with '.' are reserved for tenant namespaces ('<tenant>.<name>'); register {request.name!r} "
            "with a tenant's key to put it in that tenant's namespace, or pick a name without '.'"
        )
    if len(request.full_name) > 128:
        raise RegistrationError(f"the full model name {request.full_name!r} is longer than 128 characters")
    if not request.task or len(request.task) > 128:
        raise RegistrationError("task is required (at most 128 characters), e.g. 'image-classification'")
    if request.declared_accuracy is not None and not 0.0 <= request.declared_accuracy <= 1.0:
        raise RegistrationError("accuracy must be between 0 and 1")
    if not 1 <= request.max_batch <= MAX_BATCH_LIMIT:
        raise RegistrationError(f"max_batch must be between 1 and {MAX_BATCH_LIMIT}")


def register_model(services: Services, request: RegistrationRequest) -> ModelInfo:
    """Validate, store and record a model, then queue its variant build; returns the new model."""
    _check_fields(request)
    request = replace(request, name=request.full_name, namespace=None)
    if services.metadata.model_exists(request.name):
        raise DuplicateModel(request.name)
    checked = check_model_isolated(request.model_path, check_limits(services.settings), request.input_shapes)
    data = checked.artifact if checked.artifact is not None else request.model_path.read_bytes()
    if request.validation_path is not None:
        check_validation_file(request.validation_path, checked.inputs, array_bound(services.settings))

    prefix = model_prefix(request.name)
    artifact_key = f"{prefix}model.onnx"
    validation_key = f"{prefix}validation.npz" if request.validation_path else None
    # Step 1 (module docstring): the row, as "registering".
    model = services.metadata.add_model(
        NewModel(
            name=request.name,
            task=request.task,
            inputs=checked.inputs,
            outputs=checked.outputs,
            opset=checked.opset,
            rewrites=checked.rewrites,
            input_shapes=checked.input_shapes,
            declared_accuracy=request.declared_accuracy,
            max_batch=request.max_batch,
            owner=request.owner,
            public=request.public,
            artifact_key=artifact_key,
            validation_key=validation_key,
            size_bytes=len(data),
            status=ModelStatus.REGISTERING,
        )
    )
    try:
        services.store.put_bytes(artifact_key, data)  # step 2
        if request.validation_path and validation_key:
            services.store.put_file(validation_key, request.validation_path)
        build = _build_item(services, request.name)
        services.metadata.complete_registration(request.name, build)  # step 3: the commit
    except BaseException:
        _take_back(services, model)
        raise
    if build is not None and services.jobs is not None:
        services.jobs.dispatch(build.id)  # step 4
    log.info(
        "model %s registered (task %s, %d bytes)",
        request.name,
        request.task,
        len(data),
        extra={"event": "registration", "model": request.name, "task": request.task, "owner": request.owner},
    )
    return replace(model, status=ModelStatus.PENDING)


def _build_item(services: Services, name: str) -> NewWorkItem | None:
    """The variant build to record with the registration (none when builds are switched off)."""
    if services.settings.build_variants and services.jobs is not None:
        return services.jobs.new_item("build_variants", model_name=name)
    return None


def _take_back(services: Services, model: ModelInfo) -> None:
    """Undo a registration that failed before its commit: only its own row, and only while still ``registering``.

    If the row is gone (deleted meanwhile) or belongs to a newer registration of the name, nothing here is
    touched: files this registration wrote without a row are the orphan sweep's.
    """
    try:
        if services.metadata.mark_model_deleting(model.name, model_id=model.id, status=ModelStatus.REGISTERING):
            remove_model(services.metadata, services.store, model.name)
    except Exception:
        log.exception("could not take back the failed registration of %s; the orphan sweep will", model.name)


def delete_model(services: Services, name: str) -> bool:
    """Delete a model: mark it ``deleting``, remove its files, then its rows; ``False`` if there is none.

    A model that a pipeline's stage names is refused (409 naming the pipelines) before anything is touched.
    """
    PipelineStore(services.db).refuse_if_used(name)
    if not services.metadata.mark_model_deleting(name):
        return False
    remove_model(services.metadata, services.store, name)
    return True
