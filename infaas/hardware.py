"""What a worker advertises it can run: the hardware kinds the selector matches ``VariantInfo.hardware`` against.

Two halves, so that tests can give any host's answer without the host: ``probe`` asks this machine (ONNX
Runtime's execution providers, the CUDA driver's devices, whether ``tensorrt`` imports) and fills a
``HardwareReport``; ``advertise`` is a pure function from that report to the ``Hardware`` a worker
registers. The rules, and why:

- ``cpu`` always: every worker runs ONNX Runtime's CPU provider.
- ``gpu`` (the kind every CUDA and TensorRT variant generator records, ``variant_generator/cuda.py``,
  ``fp16.py``, ``tensorrt.py``) only when ONNX Runtime offers ``CUDAExecutionProvider`` *and* the driver
  shows a device: ``onnxruntime-gpu`` lists the provider on hosts without a GPU and then runs on the CPU
  (``infaas.cuda``), and a GPU device without a GPU build of ONNX Runtime cannot run a CUDA variant.
- ``tensorrt`` in addition when ``tensorrt`` imports and a device is visible: what native ``.engine``
  variants need (``infaas.tensorrt_engine``).
- A pinned device (``infaas worker --gpu N``, ``INFAAS_WORKER_GPU``) must be one the driver shows and must
  be usable by one of the two; anything else is refused, naming the visible devices, rather than a worker
  that was asked for a GPU quietly serving on the CPU.

The other side of the match, what a variant needs, is ``infaas.hardware_kinds.required_hardware``.
"""

from __future__ import annotations

from dataclasses import dataclass

from infaas import cuda, runtime
from infaas.cuda import CudaDevice
from infaas.errors import BadRequest
from infaas.hardware_kinds import CPU, CUDA_PROVIDER, GPU, TENSORRT


class GpuNotUsable(BadRequest):
    """A pinned GPU that this host does not show, or that nothing installed here can run on."""

    code = "gpu_not_usable"


@dataclass(frozen=True)
class HardwareReport:
    """What a probe found: ONNX Runtime's providers, the driver's devices, ``tensorrt``, and the pinned device."""

    providers: tuple[str, ...]
    devices: tuple[CudaDevice, ...]
    tensorrt: bool
    pinned: int | None = None


@dataclass(frozen=True)
class Hardware:
    """What a worker advertises: the kinds it runs, and the GPU its GPU variants run on (``None``: no GPU)."""

    kinds: tuple[str, ...]
    device: CudaDevice | None = None

    @property
    def device_id(self) -> int | None:
        """The CUDA device sessions pin (``device_id`` provider option), ``None`` without a GPU."""
        return self.device.id if self.device is not None else None

    @property
    def device_memory_mb(self) -> float:
        """Memory of that device (0 when there is none or the driver did not say)."""
        return (self.device.memory_mb or 0.0) if self.device is not None else 0.0

    def describe(self) -> str:
        """``gpu, tensorrt on cuda:0 NVIDIA H200 (143771 MB)``, or ``cpu``: a worker's start-up line."""
        kinds = ", ".join(self.kinds)
        return f"{kinds} on {self.device.describe()}" if self.device is not None else kinds


CPU_ONLY = Hardware((CPU,))


def _listing(devices: tuple[CudaDevice, ...]) -> str:
    return "; ".join(d.describe() for d in devices) if devices else "none"


def advertise(report: HardwareReport) -> Hardware:
    """The kinds and device a worker with ``report`` advertises (the rules are the module's); pure.

    Raises ``GpuNotUsable`` for a pinned device that is negative, not visible, or that neither ONNX Runtime's
    CUDA provider nor TensorRT can use here; the message names the visible devices.
    """
    cuda_usable = CUDA_PROVIDER in report.providers
    if report.pinned is not None:
        by_id = {d.id: d for d in report.devices}
        device = by_id.get(report.pinned)
        if device is None:
            raise GpuNotUsable(f"GPU {report.pinned} is not visible; visible CUDA devices: {_listing(report.devices)}")
        if not cuda_usable and not report.tensorrt:
            raise GpuNotUsable(
                f"GPU {report.pinned} ({device.name}) is visible but nothing here runs on it: onnxruntime has no "
                f"{CUDA_PROVIDER} (install onnxruntime-gpu) and tensorrt is not installed"
            )
    elif report.devices and (cuda_usable or report.tensorrt):
        device = report.devices[0]  # what ONNX Runtime and the CUDA runtime use when no device is named
    else:
        return CPU_ONLY
    kinds = [CPU]
    if cuda_usable:
        kinds.append(GPU)
    if report.tensorrt:
        kinds.append(TENSORRT)
    return Hardware(tuple(kinds), device)


def probe(pinned: int | None = None) -> HardwareReport:
    """Ask this host. ``tensorrt`` is imported only when the driver shows a device (it takes seconds)."""
    devices = cuda.cuda_devices()
    return HardwareReport(
        providers=tuple(runtime.available_providers()),
        devices=devices,
        tensorrt=bool(devices) and _tensorrt_imports(),
        pinned=pinned,
    )


def _tensorrt_imports() -> bool:
    try:
        runtime.import_tensorrt()
    except runtime.Skip:
        return False
    return True


def detect(pinned: int | None = None) -> Hardware:
    """What this host's worker advertises: ``advertise(probe(pinned))``."""
    return advertise(probe(pinned))
