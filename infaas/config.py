"""Configuration, read once from the environment.

One pydantic-settings class holds every knob so that the embedded default and the scaled-out
deployment differ only in environment variables, never in code paths.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PRICES: dict[str, float] = {
    # $ per hour of one unit of the hardware kind; a CPU variant holds `threads` cores, a GPU variant (CUDA,
    # TensorRT: hardware "gpu") one whole GPU. cpu-core: one vCPU of a general-purpose cloud VM (AWS m6i,
    # $0.192/h for 4 vCPUs). gpu: one data-centre GPU with its share of host, between an A10G ($1.01/h,
    # g5.xlarge) and an A100 ($4.10/h, 1/8 of p4d.24xlarge): about 52 cores, so a GPU variant is chosen on
    # cost only when it is that many times faster than a one-core CPU variant, and on latency otherwise.
    "cpu-core": 0.048,
    "gpu": 2.50,
}


class Settings(BaseSettings):
    """All infaas settings; every field maps to ``INFAAS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="INFAAS_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.infaas")))
    database_url: str | None = None
    model_store: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "infaas"  # every live-state key starts with '<prefix>:' (one Redis, many clusters)
    broker_url: str | None = None
    url: str = "http://127.0.0.1:8000"
    admin_key: str | None = None
    api_key: str | None = None  # what the CLI sends; falls back to admin_key

    host: str = "127.0.0.1"
    port: int = 8000
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn ``forwarded_allow_ips``:
    # comma-separated addresses or networks, or "*"). Empty (default): forwarded headers are ignored and
    # the client is the socket peer, so no request can pick its own address.
    trusted_proxies: str = ""

    # Limits (safe defaults; a serving system exposed to a network must bound everything it accepts).
    max_upload_mb: float = 200.0
    # What a client's .npy/.npz (validation set, job input) may expand to, all arrays together, decided from
    # its headers before anything is read: an uncompressed upload could carry 200 MB, and compression must
    # not buy more (a 972 KB .npz held 1 GB of zeros). See infaas/array_files.py.
    max_array_mb: float = 256.0
    # The registration check's ONNX Runtime load and test inference run in a child process
    # (infaas/sandbox.py) that is killed past either limit: a 291-byte Loop with trip count 2^62 never
    # ends, and a shape computed at run time made a 1.6 GB ConstantOfShape. Memory is address space
    # beyond the child's own at start (about 220 MB of imports); the largest declared tensor the static
    # check allows is 512 MB.
    check_timeout_s: float = 30.0
    check_memory_mb: float = 1024.0
    max_body_mb: float = 16.0
    max_batch_per_query: int = 256
    max_inputs_per_request: int = 16
    max_concurrent_per_key: int = 64
    # Requests without a valid key (refused with 401/403, their body drained) share this many slots.
    max_concurrent_unauthenticated: int = 8
    # Per-tenant quotas on background work (admins are exempt); past them: 429 with Retry-After.
    max_jobs_per_tenant: int = 4  # offline jobs queued or running at once
    max_registrations_per_hour: int = 20  # registration attempts per tenant in any hour
    max_reprofiles_per_model_per_hour: int = 2  # re-profiles of one model in any hour
    # Connections (``infaas serve``): a request's headers must arrive within header_timeout_s, an idle
    # keep-alive connection is closed after keep_alive_s, and past max_connections new requests get 503.
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 1024
    console_signin_failures: int = 5  # failed console sign-ins per client address within the window ...
    console_signin_window_s: float = 60.0  # ... after which the next attempt gets 429 until the oldest ages out
    # Serve the inference routes past FastAPI's router (api/fast_routes.py); off only to measure what it gains.
    inference_fast_path: bool = True
    # GET /metrics and the engine's per-query counters (infaas.metrics); off only to measure what they cost.
    metrics: bool = True
    # How long a thread may hold the GIL while another waits (infaas.switch_interval: why 0.5, not Python's 5 ms).
    switch_interval_ms: float = Field(default=0.5, gt=0)
    # Processes ``infaas serve`` runs on its port, each a whole front-end (infaas/process_group.py); --workers.
    serve_workers: int = Field(default=1, ge=1)

    # Workers.
    worker_id: str | None = None
    worker_memory_mb: float = 2048.0
    worker_cores: int = Field(default_factory=lambda: os.cpu_count() or 1)
    in_process_worker: bool = True
    # The CUDA device (driver numbering) the in-process worker, and ``infaas worker`` without ``--gpu``, pins:
    # its GPU sessions run there and it reports that device. None: device 0 when a GPU is usable, else CPU only.
    worker_gpu: int | None = None
    heartbeat_s: float = 1.0
    heartbeat_ttl_s: float = 3.0

    # Variant generation / profiling.
    build_variants: bool = True
    profile_runs: int = 30
    profile_max_seconds: float = 4.0
    # Each step of a variant build that runs the model (generating one variant, profiling it, the original's
    # reference outputs) runs in a child process killed past these (infaas/sandbox.py); the variant then
    # fails with the reason. Profiles go up to max_batch on the owner's validation values, so a build needs
    # more than the batch-1 registration check: the model took 1.6 GB checked and 3.3 GB built.
    # GPU steps are bounded in time only (CUDA reserves more address space than such a limit allows).
    build_timeout_s: float = 600.0
    build_memory_mb: float = 4096.0

    # Cascades (variant_generator.cascades, docs/cascades.md): a threshold is accepted when at least 95 of 100
    # bootstrap resamples keep the cascade's top-1 within this of its expensive member's (0.005 = 0.5 points).
    cascade_tolerance: float = 0.005
    # Whether builds queue a task's cascade decision. It runs every eligible variant of every compatible model of
    # the task on the validation rows, so its cost grows with the task's models squared (a 30-model crash-test
    # task kept one running for over 45 s): an operator with many models per task may turn it off.
    cascades: bool = True
    # Drift: a cascade whose live escalation share stays outside its bootstrap interval for this long (and over
    # at least cascade_drift_min_rows rows) is marked stale and recalibrated on the stored validation set.
    cascade_drift_window_s: float = 30.0
    cascade_drift_min_rows: int = 200

    # Crash safety (infaas.jobs.durable, infaas.orphans). A running item's process renews its lease every third
    # of work_lease_s; one that died is resumed after at most work_lease_s + recovery_period_s.
    work_lease_s: float = 15.0
    work_max_attempts: int = 3  # runs of one item (a crash counts) before it is failed with the reason
    recovery_period_s: float = 5.0  # how often expired work is resumed and orphans are looked for
    orphan_grace_s: float = 600.0  # stored files without a row, and unfinished registrations, older than this go

    # Cost: $/hour per hardware unit.
    prices: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    # Autoscaler: "off", "dry-run" or "on".
    autoscaler: str = "on"
    autoscaler_period_s: float = 1.0
    vm_autoscaler_period_s: float = 10.0
    idle_unload_s: float = 120.0
    min_workers: int = 1
    max_workers: int = 4
    provider: str | None = None  # "local", "ec2", "docker" or "inprocess"; default: see resolved_provider
    # One autoscaler acts across all front-ends: the holder of a leader lease in Redis (infaas/leadership.py),
    # renewed every autoscaler_lease_renew_s. A killed leader is replaced within autoscaler_lease_s plus one
    # renewal; the TTL spans a few periods so that one slow period (a worker status call) does not lose it.
    autoscaler_lease_s: float = 3.0
    autoscaler_lease_renew_s: float = 1.0

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL; defaults to a SQLite file in the home folder."""
        return self.database_url or f"sqlite:///{self.home / 'infaas.db'}"

    @property
    def resolved_model_store(self) -> str:
        """Model store location: ``s3://bucket/prefix`` or a local folder."""
        return self.model_store or str(self.home / "models")

    @property
    def resolved_provider(self) -> str:
        """Where new workers come from: local ``infaas worker`` processes need Redis to be found, so the
        embedded default (no Redis) adds in-process workers instead."""
        return self.provider or ("local" if self.redis_url else "inprocess")

    @property
    def auth_enabled(self) -> bool:
        """Auth is on whenever an admin key is configured."""
        return bool(self.admin_key)

    @property
    def scratch_dir(self) -> Path:
        """Temporary folders of every process on this home (``infaas.scratch``): swept at start-up."""
        return self.home / "scratch"

    def ensure_home(self) -> None:
        """Create the home and its scratch folder; the embedded default keeps its SQLite file and models there."""
        self.scratch_dir.mkdir(parents=True, exist_ok=True)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests build their own ``Settings`` and pass it explicitly."""
    return Settings()
