"""The variants every registered model gets, in build order (the FP32 CPU baseline first).

CPU kinds are registered twice: with every core of the worker and with one intra-op thread, so the
selector can trade one core per replica (cheap, more replicas) against lower latency.
"""

from __future__ import annotations

from variant_generator.base import VariantGenerator
from variant_generator.cpu_fp32 import CpuFp32
from variant_generator.cuda import CudaFp32
from variant_generator.fp16 import CudaFp16
from variant_generator.int8_dynamic import Int8Dynamic
from variant_generator.int8_static import Int8Static, Int8StaticFast
from variant_generator.tensorrt import TensorrtEngine, TensorrtEp
from variant_generator.transformer_fp32 import CpuFp32Transformer

_GENERATORS: dict[str, VariantGenerator] = {}


def register(generator: VariantGenerator) -> None:
    """Add (or replace) a generator under its variant name."""
    _GENERATORS[generator.variant_name] = generator


def generators() -> list[VariantGenerator]:
    """Every registered generator, in build order."""
    return list(_GENERATORS.values())


def get(variant_name: str) -> VariantGenerator | None:
    """The generator behind a variant name, if it is still registered."""
    return _GENERATORS.get(variant_name)


for _cpu_kind in (CpuFp32, CpuFp32Transformer, Int8Dynamic, Int8Static, Int8StaticFast):
    register(_cpu_kind())
    register(_cpu_kind(threads=1))
for _gpu in (CudaFp32(), CudaFp16(), TensorrtEp(), TensorrtEngine("fp16"), TensorrtEngine("int8")):
    register(_gpu)
