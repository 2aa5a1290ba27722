"""The one small interface every kind of variant implements.

A generator turns the registered ONNX file into one artifact (an ONNX file, or a native TensorRT
engine). Everything else -- storing, profiling, recording status -- is done uniformly by ``build``, so
adding a kind of variant means adding one module and one registry line. Artifacts are opened by the
core's loader (``infaas.runtime.open_session``), exactly as a worker opens them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from infaas.catalog import ModelInfo
from infaas.runtime import CPU_PROVIDERS
from variant_generator.accuracy import ValidationSet


@dataclass(frozen=True)
class BuildContext:
    """What a generator may read: the model, its original file, calibration rows, a scratch folder.

    ``validation`` holds only the rows set aside for calibration (``ValidationSet.split``), never those that
    variants are scored on; ``None`` without a validation set (or one too small to split).
    """

    model: ModelInfo
    source: Path
    validation: ValidationSet | None
    workdir: Path
    cores: int


class VariantGenerator(ABC):
    """Builds one kind of variant; ``threads=0`` means "every core of the worker"."""

    name: str
    kind: str
    precision: str
    hardware: str = "cpu"
    providers: tuple[str, ...] = CPU_PROVIDERS
    suffix: str = ".onnx"

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    @property
    def variant_name(self) -> str:
        """Name of the variant row; thread-limited variants share the artifact but not the name."""
        return f"{self.name}-t{self.threads}" if self.threads else self.name

    def threads_for(self, cores: int) -> int:
        """The concrete intra-op thread count the variant is profiled and served with."""
        return self.threads or max(1, cores)

    def output_path(self, ctx: BuildContext) -> Path:
        """Where the artifact goes in the scratch folder (one file per generator name)."""
        return ctx.workdir / f"{self.name}{self.suffix}"

    def precheck(self, ctx: BuildContext) -> None:
        """Raise ``Skip`` if the variant does not apply, from the graph alone, without running the model: the build
        decides it in its own process, so a variant that does not apply costs no child process (a fresh interpreter
        and its imports: an MLP's build went from 96 to 157 s with four more variants skipping in children, on a
        2-core host at load average 28). Nothing by default."""
        return None

    @abstractmethod
    def build(self, ctx: BuildContext) -> Path:
        """Write the artifact under ``ctx.workdir`` and return its path; raise ``Skip`` if not applicable."""

    def notes(self, artifact: Path, ctx: BuildContext) -> str | None:
        """What a ready variant's listing should say about it (its ``reason``), e.g. how much an INT8 variant
        really quantized; ``None``: nothing beyond its kind and precision."""
        return None
