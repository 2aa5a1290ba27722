"""Hardware kinds, and which a variant needs: the one rule the selector and the autoscaler match workers by.

A worker advertises kinds (``infaas.hardware.advertise``: ``cpu``; ``gpu`` with ONNX Runtime's CUDA provider and
a device; ``tensorrt`` when TensorRT imports too). A variant records one kind (``VariantInfo.hardware``: every CUDA
and TensorRT generator records ``gpu``), which is not all it needs: TensorRT variants also need ``tensorrt``,
and matching the recorded kind alone offered them to GPU workers without it, where the load failed
(``infaas.runtime.NO_TENSORRT``). Pure and free of ONNX Runtime, so the selector can import it.
"""

from __future__ import annotations

from infaas.catalog import VariantInfo

CPU = "cpu"
GPU = "gpu"  # VariantInfo.hardware of CUDA and TensorRT variants
TENSORRT = "tensorrt"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
TENSORRT_ENGINE = "TensorRT"  # the "provider" of a native engine: no ONNX Runtime involved (``infaas.runtime``)


def required_hardware(variant: VariantInfo) -> tuple[str, ...]:
    """Every kind a worker must advertise to run ``variant``: its recorded kind first, then ``tensorrt`` when
    TensorRT runs it (ONNX Runtime's TensorRT provider, or a native engine).

    The selector computes it once per candidate (``Candidate.of``), the autoscaler reads the candidate's.
    """
    if TENSORRT_PROVIDER in variant.providers or TENSORRT_ENGINE in variant.providers:
        return (variant.hardware, TENSORRT)
    return (variant.hardware,)


def runs_on(needed: tuple[str, ...], kinds: tuple[str, ...]) -> bool:
    """Whether a worker advertising ``kinds`` runs a variant needing ``needed`` (``required_hardware``)."""
    return all(kind in kinds for kind in needed)
