"""Background tasks: build every registered kind of variant of a model, and re-profile them.

Each variant is built, profiled and recorded on its own: a generator that fails records its error on
its own row (``failed``) and one that does not apply records why (``skipped``), and neither stops the
others. Re-running the task rebuilds and overwrites (variant rows are upserted by name, artifacts
written to the same key), so a redone job — a resumed one after a crash included — leaves no duplicate
row or file. If the model is deleted meanwhile (gone, or ``deleting``), the task stops quietly and
removes what it had just written. When the build failed for good (``infaas.jobs.durable`` gave up),
``build_given_up`` says so on the model: it never stays ``building``.

Every step that runs the tenant's model -- generating a variant, profiling it, the original's reference
outputs -- runs in a child process within ``build_limits`` (``infaas.sandbox``): the registration check
only ran one sample of zeros, while a build runs batches up to ``max_batch`` of the owner's validation
values, so a model whose cost depends on its input (a shape computed from a value) must not take the
serving process with it. Past a limit the child is killed and the variant fails with the reason.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from infaas.catalog import ModelInfo, ProfileInfo, VariantInfo
from infaas.config import Settings
from infaas.db.models import ModelStatus, VariantStatus, WorkState
from infaas.errors import NotFound
from infaas.model_store import ObjectNotFound
from infaas.runtime import Skip, require_cuda
from infaas.sandbox import Limits, run_limited
from infaas.scratch import scratch_dir
from infaas.services import Services
from variant_generator import registry
from variant_generator.accuracy import ValidationSet, load_validation, synthetic_set
from variant_generator.base import BuildContext, VariantGenerator
from variant_generator.profiler import build_and_profile, profile_variant, reference_outputs

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 2000


class ModelGone(Exception):
    """The model was deleted while its variants were being built."""


def variant_key(model_name: str, generator: VariantGenerator) -> str:
    """Store key of a generator's artifact: under ``models/{name}/`` so deleting the model removes it."""
    return f"models/{model_name}/variants/{generator.name}{generator.suffix}"


def build_limits(settings: Settings) -> Limits:
    """The limits of each step of a build (``INFAAS_BUILD_TIMEOUT_S``, ``INFAAS_BUILD_MEMORY_MB``)."""
    return Limits(
        wall_s=settings.build_timeout_s,
        memory_mb=settings.build_memory_mb,
        time_setting="INFAAS_BUILD_TIMEOUT_S",
        memory_setting="INFAAS_BUILD_MEMORY_MB",
        scratch=scratch_dir(settings),
    )


class Measurement:
    """The data every variant of one model is measured on, and the original's outputs on it.

    A validation set is split once (``ValidationSet.split``): ``calibration`` rows go to the generators that
    calibrate (INT8-static, TensorRT INT8), every variant is scored on the other rows (``data``).
    """

    def __init__(self, services: Services, model: ModelInfo, source: Path) -> None:
        self.model, self.source, self.settings = model, source, services.settings
        self.limits = build_limits(services.settings)
        self.validation = _validation(services, model)
        self.calibration, scoring = self.validation.split() if self.validation else (None, None)
        self.data: ValidationSet = scoring or synthetic_set(model)

    @functools.cached_property
    def _reference(self) -> tuple[np.ndarray | None, Exception | None]:
        try:
            outputs = run_limited(
                reference_outputs,
                self.source,
                self.model,
                self.data,
                limits=self.limits,
                what=f"running the original model on {'the validation set' if self.validation else 'synthetic inputs'}",
            )
        except Exception as exc:  # remembered: every variant fails with it, none runs it again
            return None, exc
        return outputs, None

    @property
    def reference(self) -> np.ndarray | None:
        """Computed on first use, so skipped GPU variants never pay for it; a failure is raised each time."""
        outputs, failure = self._reference
        if failure is not None:
            raise failure
        return outputs

    def build_and_profile(
        self, generator: VariantGenerator, ctx: BuildContext, built: Path | None, threads: int
    ) -> tuple[Path, list[ProfileInfo]]:
        """The generator's artifact and its profiles, made in one child within the build limits."""
        return run_limited(
            build_and_profile,
            generator,
            ctx,
            built,
            threads=threads,
            settings=self.settings,
            data=self.data,
            reference=self.reference,
            limits=self.limits_on(generator.hardware),
            what=f"building and profiling {generator.variant_name}",
        )

    def limits_on(self, hardware: str) -> Limits:
        """The build limits for a step on ``hardware``: a GPU step is bounded in time only (see ``Limits``)."""
        return self.limits if hardware == "cpu" else replace(self.limits, memory_mb=None)

    def profile(
        self, artifact: Path, name: str, hardware: str, providers: Sequence[str], threads: int
    ) -> list[ProfileInfo]:
        """``profile_variant`` of one artifact on this measurement's data, within the build limits."""
        return run_limited(
            profile_variant,
            artifact,
            self.model,
            providers=providers,
            threads=threads,
            settings=self.settings,
            data=self.data,
            reference=self.reference,
            limits=self.limits_on(hardware),
            what=f"profiling {name}",
        )


def _validation(services: Services, model: ModelInfo) -> ValidationSet | None:
    """The registration's validation set; an unusable one is logged and treated as absent."""
    if not model.validation_key:
        return None
    try:
        return load_validation(services.store.local_path(model.validation_key), model)
    except Exception as exc:  # a bad upload must not fail the build: variants needing it skip with why
        log.warning("ignoring validation set of %s: %s", model.name, exc)
        return None


def _gone(services: Services, model_name: str) -> bool:
    """Whether the model was deleted, or is being deleted, since the build started."""
    model = services.metadata.get_model(model_name)
    return model is None or model.status == ModelStatus.DELETING


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]


def _build_one(
    services: Services,
    ctx: BuildContext,
    measurement: Measurement,
    generator: VariantGenerator,
    built: dict[str, Path],
) -> str:
    """Build, profile, store and record one variant; returns its final status."""
    metadata, model_name = services.metadata, ctx.model.name
    name, threads = generator.variant_name, generator.threads_for(ctx.cores)
    metadata.upsert_variant(
        model_name,
        name,
        kind=generator.kind,
        precision=generator.precision,
        hardware=generator.hardware,
        threads=threads,
        providers=generator.providers,
        status=VariantStatus.BUILDING,
    )
    try:
        if generator.threads and generator.threads >= ctx.cores:
            raise Skip(f"this worker has {ctx.cores} core(s), so it is the same as {generator.name}")
        if generator.hardware == "gpu":
            require_cuda()  # decided here: no child is started for a variant this host cannot run
        if generator.name not in built:
            generator.precheck(ctx)  # e.g. not a transformer: skipped without starting a child
        # A model that cannot run on its own data within the limits fails here, before a generator spends them.
        _ = measurement.reference
        artifact, profiles = measurement.build_and_profile(generator, ctx, built.get(generator.name), threads)
        built[generator.name] = artifact
        key = variant_key(model_name, generator)
        if _gone(services, model_name):
            raise ModelGone(model_name)
        services.store.put_file(key, artifact)
        if _gone(services, model_name):  # deleted during the upload: take ours back out
            services.store.delete_prefix(key)
            raise ModelGone(model_name)
        metadata.replace_profiles(model_name, name, profiles)
        notes = generator.notes(artifact, ctx)
        metadata.set_variant_status(model_name, name, VariantStatus.READY, reason=notes, artifact_key=key)
        return VariantStatus.READY
    except (ModelGone, NotFound):
        raise
    except Skip as exc:
        status, reason = VariantStatus.SKIPPED, str(exc)
    except Exception as exc:
        log.exception("variant %s/%s failed", model_name, name)
        status, reason = VariantStatus.FAILED, _reason(exc)
    metadata.replace_profiles(model_name, name, [])
    metadata.set_variant_status(model_name, name, status, reason=reason)
    return status


def build_model_variants(services: Services, model_name: str) -> None:
    """Build and profile every registered variant of ``model_name``, then mark the model ready/failed."""
    metadata = services.metadata
    model = metadata.get_model(model_name)
    if model is None:
        log.info("model %s no longer exists; nothing to build", model_name)
        return
    try:
        metadata.set_model_status(model_name, ModelStatus.BUILDING)
        source = services.store.local_path(model.artifact_key)
        measurement = Measurement(services, model, source)
        with tempfile.TemporaryDirectory(dir=scratch_dir(services.settings), prefix="build-") as tmp:
            ctx = BuildContext(model, source, measurement.calibration, Path(tmp), services.settings.worker_cores)
            built: dict[str, Path] = {}
            statuses = {g.variant_name: _build_one(services, ctx, measurement, g, built) for g in registry.generators()}
        log.info(
            "model %s built: %s",
            model_name,
            ", ".join(f"{name} {status}" for name, status in statuses.items()),
            extra={"event": "build", "model": model_name, "variants": statuses},
        )
        if VariantStatus.READY in statuses.values():
            metadata.set_model_status(model_name, ModelStatus.READY)
            if services.jobs is not None:  # the task's cascades, decided again with this model (docs/cascades.md)
                _submit_cascades_once(services, model)
            return
        failures = [
            f"{v.name}: {v.reason}" for v in (metadata.get_model(model_name) or model).variants if v.name in statuses
        ]
        metadata.set_model_status(model_name, ModelStatus.FAILED, "no variant could be built; " + "; ".join(failures))
    except (ModelGone, NotFound, ObjectNotFound):
        if not _gone(services, model_name):
            raise
        log.info("model %s was deleted while building; stopped", model_name)


def build_given_up(services: Services, reason: str, model_name: str) -> None:
    """The build of ``model_name`` failed for good: end what it left ``building`` and say why on the model.

    Variants it had finished stay; one it was building is ``failed`` with the reason. The model is
    ``ready`` if a variant is (the reason tells the owner the build is incomplete), else ``failed``.
    """
    model = services.metadata.get_model(model_name)
    if model is None or model.status == ModelStatus.DELETING:
        return
    for variant in model.variants:
        if variant.status in (VariantStatus.BUILDING, VariantStatus.PENDING):
            services.metadata.set_variant_status(model_name, variant.name, VariantStatus.FAILED, reason=reason)
    ready = any(v.status == VariantStatus.READY for v in model.variants)
    status = ModelStatus.READY if ready else ModelStatus.FAILED
    services.metadata.set_model_status(model_name, status, f"variant build stopped: {reason}")


def _reprofile_one(
    services: Services, model: ModelInfo, variant: VariantInfo, artifact_key: str, measurement: Measurement
) -> None:
    """Re-measure one ready variant; one that no longer runs here is marked skipped/failed with why."""
    metadata, generator = services.metadata, registry.get(variant.name)
    threads = generator.threads_for(services.settings.worker_cores) if generator else variant.threads
    try:
        profiles = measurement.profile(
            services.store.local_path(artifact_key), variant.name, variant.hardware, variant.providers, threads
        )
    except NotFound:
        raise
    except Exception as exc:  # Skip included: e.g. the GPU this variant needs is not on this host
        skipped = isinstance(exc, Skip)
        if not skipped:
            log.exception("re-profiling %s failed", variant.key)
        metadata.replace_profiles(model.name, variant.name, [])
        status = VariantStatus.SKIPPED if skipped else VariantStatus.FAILED
        metadata.set_variant_status(model.name, variant.name, status, reason=str(exc) if skipped else _reason(exc))
        return
    if threads != variant.threads:  # "every core" is a different count on new hardware
        metadata.upsert_variant(
            model.name,
            variant.name,
            kind=variant.kind,
            precision=variant.precision,
            hardware=variant.hardware,
            threads=threads,
            providers=variant.providers,
            status=VariantStatus.READY,
            reason=variant.reason,  # a ready variant's notes (e.g. its INT8 share) stay
            artifact_key=artifact_key,
        )
    metadata.replace_profiles(model.name, variant.name, profiles)


def reprofile_model(services: Services, model_name: str) -> None:
    """Re-measure every ready variant on this host (e.g. after moving to new hardware)."""
    model = services.metadata.get_model(model_name)
    if model is None:
        return
    try:
        measurement = Measurement(services, model, services.store.local_path(model.artifact_key))
        for variant in model.variants:
            if variant.status == VariantStatus.READY and variant.artifact_key:
                _reprofile_one(services, model, variant, variant.artifact_key, measurement)
    except (NotFound, ObjectNotFound):
        if not _gone(services, model_name):
            raise
        log.info("model %s was deleted while re-profiling; stopped", model_name)


def reprofile_given_up(services: Services, reason: str, model_name: str) -> None:
    """The re-profile failed for good: the variants keep their last profiles, and the model says why."""
    model = services.metadata.get_model(model_name)
    if model is None or model.status == ModelStatus.DELETING:
        return
    services.metadata.set_model_status(model_name, model.status, f"re-profiling stopped: {reason}")


def _submit_cascades_once(services: Services, model: ModelInfo) -> None:
    """Queue the task's ``build_cascades`` unless one for the same task and owner is still waiting to start
    (or cascades are turned off: ``INFAAS_CASCADES=0``).

    A waiting one reads the catalog when it runs, so it already covers this model. Without coalescing, a task
    that gains many models queues one full cascade decision per model: a crash test registering ~30 models of
    one task left six such jobs queued 45 s after its last kill, and a new model waiting behind them.
    """
    if not services.settings.cascades:
        return
    wanted = {"task": model.task, "owner": model.owner}
    waiting = services.metadata.list_work_items(WorkState.PENDING, task="build_cascades")
    if any(item.kwargs == wanted for item in waiting):
        return
    assert services.jobs is not None
    services.jobs.submit("build_cascades", **wanted)
