"""The CUDA driver, asked directly: which devices this host really has, and moving arrays to them.

``onnxruntime-gpu`` lists the CUDA and TensorRT execution providers even on a host without a GPU and
then silently runs on the CPU, so a variant must never be called "GPU" on that evidence. We ask the
driver itself (``cuInit`` + ``cuDeviceGetCount``, names and memory, through ``libcuda``), falling back to
``nvidia-smi``;
once a session exists, ``runtime.open_session`` also checks that the wanted provider is really active.
Lives in the core because serving a TensorRT engine (``tensorrt_engine``) needs the driver as much as
building one does.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

_LIBCUDA_NAMES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib")


def _load_libcuda() -> ctypes.CDLL | None:
    for name in _LIBCUDA_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device as the driver numbers it (``CUDA_VISIBLE_DEVICES`` applied): the id a session pins."""

    id: int
    name: str
    memory_mb: float | None  # total device memory; ``None`` when the driver did not say

    def describe(self) -> str:
        """``cuda:0 NVIDIA H200 (143771 MB)``: how a worker reports it and how errors name it."""
        memory = f" ({self.memory_mb:.0f} MB)" if self.memory_mb is not None else ""
        return f"cuda:{self.id} {self.name}{memory}"


def _driver_devices() -> tuple[CudaDevice, ...] | None:
    """Devices the CUDA driver reports, or ``None`` when the driver library is absent."""
    lib = _load_libcuda()
    if lib is None:
        return None
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return ()
    devices = []
    for ordinal in range(count.value):
        name = ctypes.create_string_buffer(256)
        total = ctypes.c_size_t(0)
        named = lib.cuDeviceGetName(name, len(name), ordinal) == 0
        sized = lib.cuDeviceTotalMem_v2(ctypes.byref(total), ordinal) == 0
        devices.append(
            CudaDevice(
                ordinal,
                name.value.decode(errors="replace") if named else "CUDA device",
                total.value / 2**20 if sized else None,
            )
        )
    return tuple(devices)


def _nvidia_smi_devices() -> tuple[CudaDevice, ...]:
    """GPUs listed by ``nvidia-smi`` (none when the tool is missing or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    query = [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
    try:
        listing = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    devices = []
    for line in listing.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3 and fields[0].isdigit():
            memory = float(fields[2]) if fields[2].replace(".", "", 1).isdigit() else None
            devices.append(CudaDevice(int(fields[0]), fields[1], memory))
    return tuple(devices)


@functools.lru_cache(maxsize=1)
def cuda_devices() -> tuple[CudaDevice, ...]:
    """The CUDA devices this host really has (cached: hardware does not change under a process)."""
    devices = _driver_devices()
    return devices if devices is not None else _nvidia_smi_devices()


def cuda_device_count() -> int:
    """How many CUDA devices this host really has."""
    return len(cuda_devices())


def has_cuda_device() -> bool:
    """Whether at least one CUDA device is present."""
    return cuda_device_count() > 0


class CudaDriver:
    """Just enough of the CUDA driver API (through ``libcuda``) to move arrays for TensorRT.

    Using the driver library that detection already relies on avoids depending on ``cuda-python``,
    PyCUDA or a CUDA build of torch. Works in the device's primary context, as the CUDA runtime does.
    """

    def __init__(self, device: int = 0) -> None:
        lib = _load_libcuda()
        if lib is None:
            raise RuntimeError("libcuda is not available")
        self._lib = lib
        dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
        self._check(lib.cuInit(0), "cuInit")
        self._check(lib.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
        self._check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self._ctx = ctx
        self.make_current()

    def make_current(self) -> None:
        """Make this device's context the calling thread's: a context is current per thread, and a thread with
        none runs on device 0, so a session pinned to another device sets it before every call."""
        self._check(self._lib.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    @staticmethod
    def _check(code: int, call: str) -> None:
        if code != 0:
            raise RuntimeError(f"{call} failed with CUDA error {code}")

    def alloc(self, nbytes: int) -> int:
        """Device memory of ``nbytes`` (at least 1); returns the device pointer."""
        ptr = ctypes.c_uint64(0)
        self._check(self._lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(1, nbytes))), "cuMemAlloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        """Release memory from ``alloc``."""
        self._check(self._lib.cuMemFree_v2(ctypes.c_uint64(ptr)), "cuMemFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        """Copy a C-contiguous host array to the device."""
        host = ctypes.c_void_p(array.ctypes.data)
        self._check(self._lib.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr), host, ctypes.c_size_t(array.nbytes)), "HtoD")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        """Copy device memory into a C-contiguous host array of the right size."""
        host = ctypes.c_void_p(array.ctypes.data)
        self._check(self._lib.cuMemcpyDtoH_v2(host, ctypes.c_uint64(ptr), ctypes.c_size_t(array.nbytes)), "DtoH")

    def synchronize(self) -> None:
        """Wait for queued work (TensorRT enqueues asynchronously)."""
        self._check(self._lib.cuCtxSynchronize(), "cuCtxSynchronize")
