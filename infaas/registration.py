"""Model registration: validate everything, then store, then record, then queue the variant build.

Nothing is written before every check has passed, and a failure while writing removes what was written,
so a rejected registration leaves neither a file in the store nor a row in the database.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from infaas.array_files import array_bound
from infaas.catalog import ModelInfo
from infaas.errors import BadRequest
from infaas.metadata import DuplicateModel, NewModel
from infaas.onnx_check import check_limits, check_model_isolated, check_validation_file
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

    @property
    def full_name(self) -> str:
        """The name the model is stored and addressed under."""
        if self.namespace is None or self.name.startswith(f"{self.namespace}."):
            return self.name
        return f"{self.namespace}.{self.name}"


def model_prefix(name: str) -> str:
    """Store prefix holding everything of one model (original, validation set, variants)."""
    return f"models/{name}/"


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
    data = request.model_path.read_bytes()
    checked = check_model_isolated(request.model_path, check_limits(services.settings))
    if request.validation_path is not None:
        check_validation_file(request.validation_path, checked.inputs, array_bound(services.settings))

    prefix = model_prefix(request.name)
    artifact_key = f"{prefix}model.onnx"
    validation_key = f"{prefix}validation.npz" if request.validation_path else None
    # The row goes first: a concurrent registration of the same name fails here (``DuplicateModel``),
    # before it could overwrite the winner's files.
    model = services.metadata.add_model(
        NewModel(
            name=request.name,
            task=request.task,
            inputs=checked.inputs,
            outputs=checked.outputs,
            opset=checked.opset,
            declared_accuracy=request.declared_accuracy,
            max_batch=request.max_batch,
            owner=request.owner,
            public=request.public,
            artifact_key=artifact_key,
            validation_key=validation_key,
            size_bytes=len(data),
        )
    )
    try:
        services.store.put_bytes(artifact_key, data)
        if request.validation_path and validation_key:
            services.store.put_file(validation_key, request.validation_path)
    except BaseException:
        services.metadata.delete_model(request.name)
        services.store.delete_prefix(prefix)
        raise
    queue_build(services, request.name)
    return model


def queue_build(services: Services, name: str) -> None:
    """Queue the variant build of a registered model (no-op when builds are switched off)."""
    if services.settings.build_variants and services.jobs is not None:
        services.jobs.submit("build_variants", model_name=name)


def delete_model(services: Services, name: str) -> bool:
    """Delete a model's rows and every file under its store prefix."""
    existed = services.metadata.delete_model(name)
    services.store.delete_prefix(model_prefix(name))
    return existed
