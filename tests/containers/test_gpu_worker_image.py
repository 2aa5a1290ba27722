"""The gpu-worker image, on a host without a GPU (this one): it starts, and its worker advertises what it has.

The image carries ONNX Runtime's GPU build with NVIDIA's CUDA and cuDNN wheels and no CPU ``onnxruntime``. Here
there is no driver, so ONNX Runtime lists its CUDA provider while the driver shows no device: the worker must
register as ``cpu`` only (never ``gpu``), and a pinned GPU must be refused, naming the devices that are visible
(none). The CUDA provider's own library must resolve every library it links, the CUDA runtime, cuBLAS, cuDNN and
cuFFT from the wheels (the driver's ``libcuda``, which the NVIDIA container toolkit mounts on a GPU host, is opened
at run time): that is what "the CUDA libraries are in the image" means short of running on a GPU, which has not
been done with this image.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import httpx
import pytest

from infaas.live_state.redis import RedisLiveState
from tests.containers.engine import docker, ensure_images, unique_name
from tests.redis_server import REDIS_URL, delete_keys, redis_up
from tests.s3server import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(not redis_up(), reason="needs the Redis server of this machine"),
]

IMAGE = "infaas-gpu-worker:local"

PROBE = """
import glob, importlib.metadata as md, json, subprocess
import onnxruntime
from infaas import hardware
provider = glob.glob("/opt/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so")[0]
ldd = subprocess.run(["ldd", provider], capture_output=True, text=True).stdout
installed = {d.metadata["Name"].lower() for d in md.distributions()}
print(json.dumps({
    "providers": onnxruntime.get_available_providers(),
    "cpu_build_installed": "onnxruntime" in installed,
    "gpu_build": md.version("onnxruntime-gpu"),
    "nvidia_wheels": sorted(n for n in installed if n.startswith("nvidia-")),
    "unresolved": sorted({line.split()[0] for line in ldd.splitlines() if "not found" in line}),
    "from_wheels": sorted({line.split()[0].split(".so")[0] for line in ldd.splitlines() if "/nvidia/" in line}),
    "devices": [d.describe() for d in hardware.probe().devices],
    "advertised": list(hardware.detect().kinds),
}))
"""


def test_gpu_worker_image_starts_and_advertises_cpu_only_without_a_gpu() -> None:
    ensure_images("gpu-worker")
    probed = json.loads(docker("run", "--rm", "--entrypoint", "python", IMAGE, "-c", PROBE, timeout=120))
    assert "CUDAExecutionProvider" in probed["providers"], probed
    assert not probed["cpu_build_installed"], probed
    for library in ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn"):
        assert any(n.startswith(library) for n in probed["nvidia_wheels"]), (library, probed)
    # Every library the CUDA provider links resolves, cuBLAS and cuDNN from the wheels (libcuda, the driver's, is
    # opened by the CUDA runtime when a session starts, not linked).
    assert probed["unresolved"] == [], f"the CUDA provider's libraries are not all there: {probed}"
    assert {"libcudart", "libcublas", "libcublasLt", "libcudnn", "libcufft"} <= set(probed["from_wheels"]), probed
    assert probed["devices"] == [] and probed["advertised"] == ["cpu"], probed

    # A pinned GPU that is not there: refused at start, in one line naming the visible devices.
    refused = subprocess.run(
        ["docker", "run", "--rm", "-e", "INFAAS_WORKER_GPU=0", "-e", f"INFAAS_REDIS_URL={REDIS_URL}", IMAGE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, (refused.returncode, refused.stdout[-2000:], refused.stderr[-2000:])
    assert "GPU 0 is not visible; visible CUDA devices: none" in refused.stdout + refused.stderr

    # The image's own start command, as compose runs it: the worker registers with the hardware it really has.
    prefix = unique_name("infaas-gpuimg-")
    port = free_port()
    name = f"{prefix}-{uuid.uuid4().hex[:4]}"
    env = {
        "INFAAS_REDIS_URL": REDIS_URL,
        "INFAAS_REDIS_PREFIX": prefix,
        "INFAAS_WORKER_PORT": str(port),
        "INFAAS_WORKER_ADVERTISE": f"http://127.0.0.1:{port}",
        "INFAAS_WORKER_ID": name,
    }
    args = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
    docker("run", "-d", "--name", name, "--network", "host", *args, IMAGE)
    live = RedisLiveState(REDIS_URL, prefix)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers = [w for w in live.workers() if w.id == name]
            if workers:
                break
            running = docker("inspect", "-f", "{{.State.Running}}", name).strip()
            assert running == "true", docker("logs", "--tail", "30", name)
            time.sleep(0.5)
        else:
            raise AssertionError(f"the worker did not register: {docker('logs', '--tail', '30', name)}")
        (worker,) = workers
        assert worker.hardware == ("cpu",) and worker.device == "", worker
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        docker("rm", "-f", name, check=False)
        live.close()
        delete_keys(f"{prefix}:")
