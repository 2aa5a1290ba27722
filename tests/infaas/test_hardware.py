"""What a worker advertises: the pure rules from a hardware report, the probe that fills it, and pinning a GPU
(device options on sessions, the registration, the CLI's error). No GPU here: reports are injected."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infaas import cuda, hardware, runtime
from infaas.config import Settings, get_settings
from infaas.cuda import CudaDevice
from infaas.hardware import Hardware, HardwareReport, advertise
from infaas.live_state import MemoryLiveState
from infaas.model_store import LocalModelStore
from infaas.services import build_services
from infaas.worker import LocalWorker
from infaas.worker.server import WorkerService
from tests.redis_server import REDIS_URL, redis_up

CPU_BUILD = ("AzureExecutionProvider", "CPUExecutionProvider")  # the pip "onnxruntime" wheel
GPU_BUILD = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")  # onnxruntime-gpu
H200 = (CudaDevice(0, "NVIDIA H200", 143771.0), CudaDevice(1, "NVIDIA H200", 143771.0))


@pytest.mark.parametrize(
    ("providers", "devices", "tensorrt", "kinds", "device"),
    [
        (CPU_BUILD, (), False, ("cpu",), None),
        # onnxruntime-gpu lists CUDA on a host without a GPU and would run on the CPU: not a GPU worker.
        (GPU_BUILD, (), True, ("cpu",), None),
        # A GPU, but no GPU build of ONNX Runtime and no TensorRT: nothing here runs on it.
        (CPU_BUILD, H200, False, ("cpu",), None),
        (GPU_BUILD, H200, False, ("cpu", "gpu"), H200[0]),
        (GPU_BUILD, H200, True, ("cpu", "gpu", "tensorrt"), H200[0]),
        (CPU_BUILD, H200, True, ("cpu", "tensorrt"), H200[0]),
    ],
)
def test_advertised_kinds_follow_what_is_really_usable(
    providers: tuple[str, ...],
    devices: tuple[CudaDevice, ...],
    tensorrt: bool,
    kinds: tuple[str, ...],
    device: CudaDevice | None,
) -> None:
    advertised = advertise(HardwareReport(providers, devices, tensorrt))
    assert advertised.kinds == kinds and advertised.device == device
    assert advertised.device_memory_mb == (device.memory_mb if device else 0.0)


def test_a_pinned_gpu_is_the_device_reported_and_opened() -> None:
    advertised = advertise(HardwareReport(GPU_BUILD, H200, False, pinned=1))
    assert advertised.kinds == ("cpu", "gpu") and advertised.device_id == 1
    assert advertised.describe() == "cpu, gpu on cuda:1 NVIDIA H200 (143771 MB)"


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (
            HardwareReport(GPU_BUILD, H200, False, pinned=2),
            "GPU 2 is not visible; visible CUDA devices: cuda:0 NVIDIA H200 (143771 MB); cuda:1 NVIDIA H200 (1437",
        ),
        (HardwareReport(GPU_BUILD, H200, False, pinned=-1), "GPU -1 is not visible; visible CUDA devices: cuda:0 "),
        (HardwareReport(CPU_BUILD, (), False, pinned=0), "GPU 0 is not visible; visible CUDA devices: none"),
        (HardwareReport(CPU_BUILD, H200, False, pinned=0), "install onnxruntime-gpu) and tensorrt is not installed"),
    ],
)
def test_a_pinned_gpu_that_cannot_be_used_is_refused_naming_what_is_there(report: HardwareReport, message: str) -> None:
    with pytest.raises(hardware.GpuNotUsable) as excinfo:
        advertise(report)
    assert message in str(excinfo.value) and excinfo.value.status == 400


def test_the_probe_reads_the_host_and_imports_tensorrt_only_with_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_import() -> None:
        raise AssertionError("tensorrt imported on a host without a CUDA device")

    monkeypatch.setattr(cuda, "cuda_devices", lambda: ())
    monkeypatch.setattr(runtime, "import_tensorrt", no_import)
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: None)  # a host without a CPU quota
    report = hardware.probe(pinned=None)
    assert report == HardwareReport(tuple(runtime.available_providers()), (), False, None)

    monkeypatch.setattr(cuda, "cuda_devices", lambda: H200)
    monkeypatch.setattr(runtime, "available_providers", lambda: list(GPU_BUILD))
    monkeypatch.setattr(runtime, "import_tensorrt", lambda: os)  # any module: "it imports"
    assert hardware.detect(pinned=1) == Hardware(("cpu", "gpu", "tensorrt"), H200[1])


def test_devices_are_listed_by_nvidia_smi_without_libcuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\nprintf "0, NVIDIA H200, 143771\\n1, Tesla T4, [N/A]\\n"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cuda, "_load_libcuda", lambda: None)
    cuda.cuda_devices.cache_clear()
    try:
        assert cuda.cuda_devices() == (CudaDevice(0, "NVIDIA H200", 143771.0), CudaDevice(1, "Tesla T4", None))
        assert cuda.cuda_device_count() == 2
    finally:
        cuda.cuda_devices.cache_clear()


def test_provider_options_pin_only_the_gpu_providers() -> None:
    assert runtime.provider_options(GPU_BUILD, None) == list(GPU_BUILD)
    assert runtime.provider_options(GPU_BUILD, 1) == [
        ("TensorrtExecutionProvider", {"device_id": "1"}),
        ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider",
    ]
    assert runtime.provider_options(runtime.CPU_PROVIDERS, 1) == ["CPUExecutionProvider"]


def test_the_registration_carries_the_hardware_in_process_and_for_a_remote_worker(tmp_path: Path) -> None:
    live = MemoryLiveState()
    store = LocalModelStore(tmp_path / "store")
    gpu = Hardware(("cpu", "gpu"), H200[1])
    worker = LocalWorker("g", store, live, memory_budget_mb=100, cores=2, hardware=gpu)
    worker.start()
    try:
        (state,) = live.workers()
        assert state.hardware == ("cpu", "gpu") and state.address == "local"
        assert state.device == "cuda:1 NVIDIA H200 (143771 MB)" and state.device_memory_mb == 143771.0
    finally:
        worker.stop()
    WorkerService(worker, live, "http://10.0.0.7:9000", 1.0)._register()  # what `infaas worker` registers
    (remote,) = live.workers()
    assert remote.address == "http://10.0.0.7:9000" and remote.hardware == ("cpu", "gpu")
    assert remote.device.startswith("cuda:1 ")
    assert LocalWorker("c", store, live, memory_budget_mb=1, cores=1).registration("local").device == ""


def test_the_in_process_worker_pins_the_configured_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "probe", lambda pinned: HardwareReport(GPU_BUILD, H200, False, pinned))
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="off", worker_gpu=1)
    services = build_services(settings)
    try:
        local = services.engine.workers.local
        assert isinstance(local, LocalWorker) and local.hardware == Hardware(("cpu", "gpu"), H200[1])
        services.start_serving()
        (state,) = services.live.workers()
        assert state.hardware == ("cpu", "gpu") and state.device.startswith("cuda:1 NVIDIA H200")
    finally:
        services.close()
    with pytest.raises(hardware.GpuNotUsable, match="GPU 5 is not visible"):
        build_services(Settings(home=tmp_path / "home2", build_variants=False, autoscaler="off", worker_gpu=5))
    assert not (tmp_path / "home2").exists()  # refused before anything was created


@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_infaas_worker_with_an_invalid_gpu_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infaas.cli.main import app

    monkeypatch.setattr(hardware, "probe", lambda pinned: HardwareReport(GPU_BUILD, H200, False, pinned))
    monkeypatch.setenv("INFAAS_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["worker", "--port", "1", "--gpu", "3"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error (--gpu / INFAAS_WORKER_GPU): GPU 3 is not visible; visible CUDA devices: "
        "cuda:0 NVIDIA H200 (143771 MB); cuda:1 NVIDIA H200 (143771 MB)"
    ]


def test_infaas_serve_with_an_unusable_worker_gpu_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infaas.cli.main import app

    monkeypatch.setattr(hardware, "probe", lambda pinned: HardwareReport(GPU_BUILD, H200, False, pinned))
    monkeypatch.setenv("INFAAS_WORKER_GPU", "7")
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["serve", "--port", "1"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error (INFAAS_WORKER_GPU): GPU 7 is not visible; visible CUDA devices: "
        "cuda:0 NVIDIA H200 (143771 MB); cuda:1 NVIDIA H200 (143771 MB)"
    ]
    assert not (tmp_path / "home").exists()  # refused before anything was created


def test_the_gpu_check_says_in_one_line_that_there_is_no_gpu_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import gpu_check

    out = tmp_path / "gpu_check.json"
    monkeypatch.setattr(hardware, "probe", lambda pinned: HardwareReport(GPU_BUILD, (), True, pinned))
    assert gpu_check.main(["--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU here, nothing to measure (CUDA devices: none;")
    assert not out.exists()
    # GPUs, but not the one asked for: an error naming them, not "no GPU".
    monkeypatch.setattr(hardware, "probe", lambda pinned: HardwareReport(GPU_BUILD, H200, False, pinned))
    assert gpu_check.main(["--gpu", "4", "--out", str(out)]) == 2
    assert "GPU 4 is not visible; visible CUDA devices: cuda:0 NVIDIA H200" in capsys.readouterr().out
