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
- ``cpus``, the CPU time its cgroup's quota allows (``cgroup_cpu_limit``: ``docker run --cpus``, a Kubernetes
  CPU limit, a systemd ``CPUQuota``), capped by the CPUs it may run on; ``None`` without a quota. A worker's
  ``cores`` is a whole number of thread slots, so a container limited to 0.5 CPU advertised 1 core and the
  autoscaler judged its load against a whole core: in the docker trace (session 7) its containers ran at 7-41%
  of their quota while the engine refused queries, and the VM level never added one.

The other side of the match, what a variant needs, is ``infaas.hardware_kinds.required_hardware``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

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
    cpus: float | None = None  # CPU time the cgroup quota allows, in CPUs (``cgroup_cpu_limit``); None: no quota


@dataclass(frozen=True)
class Hardware:
    """What a worker advertises: the kinds it runs, the GPU its GPU variants run on (``None``: no GPU), and the
    CPUs its quota allows (``None``: no quota, its cores are whole cores)."""

    kinds: tuple[str, ...]
    device: CudaDevice | None = None
    cpus: float | None = None

    @property
    def device_id(self) -> int | None:
        """The CUDA device sessions pin (``device_id`` provider option), ``None`` without a GPU."""
        return self.device.id if self.device is not None else None

    @property
    def device_memory_mb(self) -> float:
        """Memory of that device (0 when there is none or the driver did not say)."""
        return (self.device.memory_mb or 0.0) if self.device is not None else 0.0

    def describe(self) -> str:
        """``gpu, tensorrt on cuda:0 NVIDIA H200 (143771 MB)``, ``cpu``, or ``cpu (quota 0.5 CPU)``: a worker's
        start-up line."""
        kinds = ", ".join(self.kinds)
        line = f"{kinds} on {self.device.describe()}" if self.device is not None else kinds
        return f"{line} (quota {self.cpus:g} CPU)" if self.cpus is not None else line


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
        return replace(CPU_ONLY, cpus=report.cpus)
    kinds = [CPU]
    if cuda_usable:
        kinds.append(GPU)
    if report.tensorrt:
        kinds.append(TENSORRT)
    return Hardware(tuple(kinds), device, report.cpus)


def probe(pinned: int | None = None) -> HardwareReport:
    """Ask this host. ``tensorrt`` is imported only when the driver shows a device (it takes seconds)."""
    devices = cuda.cuda_devices()
    quota = cgroup_cpu_limit()
    return HardwareReport(
        providers=tuple(runtime.available_providers()),
        devices=devices,
        tensorrt=bool(devices) and _tensorrt_imports(),
        pinned=pinned,
        cpus=None if quota is None else min(quota, float(len(os.sched_getaffinity(0)))),
    )


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """The CPUs this process's cgroup CPU quota allows (quota / period), or ``None`` when no quota applies.

    ``membership`` is ``/proc/self/cgroup`` (read when ``None``): ``N:cpu,cpuacct:/path`` lines for cgroup v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, -1: none), ``0::/path`` for v2 (``cpu.max``: ``max 100000``
    or ``50000 100000``). The group's directory and each of its ancestors that exists under the controller's
    mount count, and the smallest quota wins (a parent's limit binds its children). Inside a container the path
    names the host's hierarchy while the mount *is* the container's own group, so only the mount's top matches
    there; on a host, the top is the root group (no quota) and the process's own group is found by its path.
    """
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits: list[float] = []
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        if controllers == "":  # cgroup v2 (or the unified half of a hybrid host, where cpu.max is absent)
            limits += _along(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            mount = root / controllers
            limits += _along(mount if mount.is_dir() else root / "cpu", path, _v1_quota)
    return min(limits) if limits else None


def _along(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas ``read`` finds in the group at ``path`` under ``mount`` and every ancestor of it there."""
    names = [name for name in path.split("/") if name]
    found = (read(mount.joinpath(*names[:depth])) for depth in range(len(names), -1, -1))
    return [quota for quota in found if quota is not None]


def _v1_quota(group: Path) -> float | None:
    try:
        quota = int((group / "cpu.cfs_quota_us").read_text())
        period = int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_quota(group: Path) -> float | None:
    try:
        quota, period = (group / "cpu.max").read_text().split()
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _tensorrt_imports() -> bool:
    try:
        runtime.import_tensorrt()
    except runtime.Skip:
        return False
    return True


def detect(pinned: int | None = None) -> Hardware:
    """What this host's worker advertises: ``advertise(probe(pinned))``."""
    return advertise(probe(pinned))
