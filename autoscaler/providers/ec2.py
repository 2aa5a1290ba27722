"""EC2 provider: each worker is an instance whose user-data starts ``infaas worker``.

The user-data exports the cluster's shared settings (PostgreSQL, Redis, model store), names the worker
after its instance id and runs ``infaas worker --port P``, so the worker registers itself in the
shared live state. Instances carry tags (``infaas:cluster``, ``infaas:role=worker``) so the provider
finds its own workers after a restart and never touches anything else in the account.
"""

from __future__ import annotations

import shlex
import threading
import time
from typing import Any

import boto3
from pydantic_settings import BaseSettings, SettingsConfigDict

from autoscaler.providers.base import Provider, ProviderError, WorkerHandle
from autoscaler.providers.local import remote_client
from infaas.config import Settings
from infaas.worker import WorkerClient

CLUSTER_TAG = "infaas:cluster"
ROLE_TAG = "infaas:role"
LIVE_STATES = ["pending", "running"]


class Ec2Settings(BaseSettings):
    """``INFAAS_EC2_*``: where and what to launch."""

    model_config = SettingsConfigDict(env_prefix="INFAAS_EC2_", extra="ignore")

    region: str = "us-east-1"
    endpoint_url: str | None = None  # e.g. a moto server in tests
    image_id: str = ""
    instance_type: str = "c6i.large"
    subnet_id: str | None = None
    security_group_ids: list[str] = []
    key_name: str | None = None
    cluster: str = "infaas"
    worker_port: int = 8100
    cores: int = 2
    start_timeout_s: float = 300.0
    poll_s: float = 2.0


def user_data(settings: Settings, ec2: Ec2Settings) -> str:
    """The boot script: shared settings, worker id from the instance metadata, then the worker."""
    shared = {
        "INFAAS_DATABASE_URL": settings.resolved_database_url,
        "INFAAS_MODEL_STORE": settings.resolved_model_store,
        "INFAAS_WORKER_CORES": str(ec2.cores),
        "INFAAS_WORKER_MEMORY_MB": str(settings.worker_memory_mb),
    }
    if settings.redis_url:
        shared["INFAAS_REDIS_URL"] = settings.redis_url
    if settings.admin_key:
        shared["INFAAS_ADMIN_KEY"] = settings.admin_key
    lines = ["#!/bin/bash", "set -euo pipefail"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(shared.items())]
    lines += [
        'TOKEN=$(curl -sX PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60")',
        'export INFAAS_WORKER_ID=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" '
        "http://169.254.169.254/latest/meta-data/instance-id)",
        f"exec infaas worker --port {ec2.worker_port}",
    ]
    return "\n".join(lines) + "\n"


class Ec2Provider(Provider):
    """Runs and terminates tagged EC2 instances with boto3."""

    name = "ec2"

    def __init__(self, settings: Settings, ec2: Ec2Settings | None = None, client: Any = None) -> None:
        self._settings = settings
        self._ec2 = ec2 or Ec2Settings()
        self._client = client or boto3.client("ec2", region_name=self._ec2.region, endpoint_url=self._ec2.endpoint_url)
        self._lock = threading.Lock()

    def _filters(self) -> list[dict[str, Any]]:
        return [
            {"Name": f"tag:{CLUSTER_TAG}", "Values": [self._ec2.cluster]},
            {"Name": f"tag:{ROLE_TAG}", "Values": ["worker"]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]

    def _handle(self, instance: dict[str, Any]) -> WorkerHandle:
        ip = instance.get("PrivateIpAddress") or ""
        return WorkerHandle(
            id=instance["InstanceId"],
            address=f"http://{ip}:{self._ec2.worker_port}" if ip else "",
            cores=self._ec2.cores,
            meta={"state": instance["State"]["Name"], "type": instance.get("InstanceType", "")},
        )

    def start_worker(self) -> WorkerHandle:
        if not self._ec2.image_id:
            raise ProviderError("INFAAS_EC2_IMAGE_ID is not set: no image to start workers from")
        request: dict[str, Any] = {
            "ImageId": self._ec2.image_id,
            "InstanceType": self._ec2.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data(self._settings, self._ec2),
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": CLUSTER_TAG, "Value": self._ec2.cluster},
                        {"Key": ROLE_TAG, "Value": "worker"},
                        {"Key": "Name", "Value": f"{self._ec2.cluster}-worker"},
                    ],
                }
            ],
        }
        if self._ec2.subnet_id:
            request["SubnetId"] = self._ec2.subnet_id
        if self._ec2.security_group_ids:
            request["SecurityGroupIds"] = self._ec2.security_group_ids
        if self._ec2.key_name:
            request["KeyName"] = self._ec2.key_name
        try:
            with self._lock:
                instance = self._client.run_instances(**request)["Instances"][0]
        except Exception as exc:  # botocore raises many types; the caller records one failure
            raise ProviderError(f"run_instances failed: {exc}") from exc
        return self._wait_running(instance["InstanceId"])

    def _wait_running(self, instance_id: str) -> WorkerHandle:
        """Poll until the instance runs (its worker then registers itself in live state)."""
        deadline = time.monotonic() + self._ec2.start_timeout_s
        while True:
            found = self._describe([instance_id])
            if found and found[0]["State"]["Name"] == "running":
                return self._handle(found[0])
            if time.monotonic() > deadline:
                self.stop_worker(instance_id)
                raise ProviderError(f"instance {instance_id} did not reach running in time")
            time.sleep(self._ec2.poll_s)

    def _describe(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Filters": self._filters()}
        if ids:
            kwargs["InstanceIds"] = ids
        pages = self._client.get_paginator("describe_instances").paginate(**kwargs)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def connect(self, handle: WorkerHandle) -> WorkerClient:
        return remote_client(handle.id, handle.address)

    def stop_worker(self, worker_id: str) -> None:
        if not self.owns(worker_id):
            raise ProviderError(f"{worker_id} is not a worker of cluster {self._ec2.cluster!r}")
        try:
            self._client.terminate_instances(InstanceIds=[worker_id])
        except Exception as exc:
            raise ProviderError(f"terminate_instances failed: {exc}") from exc

    def workers(self) -> list[WorkerHandle]:
        return [self._handle(i) for i in self._describe()]
