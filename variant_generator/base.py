"""The one small interface every kind of variant implements, and how a built artifact is loaded.

A generator turns the registered ONNX file into one artifact (an ONNX file, or a native TensorRT
engine). Everything else -- storing, profiling, recording status -- is done uniformly by ``build``, so
adding a kind of variant means adding one module and one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from infaas.catalog import ModelInfo
from infaas.runtime import create_session, warm_up

if TYPE_CHECKING:
    from variant_generator.accuracy import ValidationSet

CPU_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)


class Skip(Exception):
    """The variant does not apply here (no GPU, nothing to quantize...); the message is the reason."""


@dataclass(frozen=True)
class BuildContext:
    """What a generator may read: the model, its original file, validation data, a scratch folder."""

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

    @abstractmethod
    def build(self, ctx: BuildContext) -> Path:
        """Write the artifact under ``ctx.workdir`` and return its path; raise ``Skip`` if not applicable."""


class Runner(Protocol):
    """A loaded variant: what the profiler (and a worker) calls."""

    providers: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the model's declared order."""
        ...


class OrtRunner:
    """An ONNX Runtime session, created exactly as a worker creates it (``infaas.runtime``)."""

    def __init__(self, path: Path, providers: Sequence[str], threads: int) -> None:
        self.session = create_session(path, providers=list(providers), threads=threads)
        self.providers = list(self.session.get_providers())
        wanted = providers[0] if providers else CPU_PROVIDERS[0]
        if wanted not in self.providers:
            # onnxruntime falls back to the CPU silently; a "GPU" variant running on the CPU is a lie.
            raise Skip(f"{wanted} is not active in this onnxruntime build (active: {', '.join(self.providers)})")
        # A worker warms every session it loads, so the profiled load time includes that first run too.
        warm_up(self.session)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def open_runner(path: Path, providers: Sequence[str], threads: int) -> Runner:
    """Load an artifact: native TensorRT engines by suffix, everything else through ONNX Runtime."""
    if path.suffix == ".engine":
        from variant_generator.tensorrt import EngineRunner

        return EngineRunner(path)
    return OrtRunner(path, providers, threads)
