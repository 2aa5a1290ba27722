"""The EC2 provider against moto's server mode: real HTTP requests from boto3, no patched calls."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from autoscaler.providers import ProviderError
from autoscaler.providers.ec2 import CLUSTER_TAG, Ec2Provider, Ec2Settings
from infaas.config import Settings
from tests.s3server import moto_server

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def ec2(endpoint: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint)


IMAGE = "ami-0123456789abcdef0"  # moto runs any image id; listing its stock AMIs takes ~10 s


def provider(endpoint: str, ec2, tmp_path: Path, cluster: str) -> Ec2Provider:  # type: ignore[no-untyped-def]
    image = IMAGE
    settings = Settings(
        home=tmp_path,
        database_url="postgresql+psycopg://infaas:pw@db.internal/infaas",
        redis_url="redis://cache.internal:6379/0",
        model_store="s3://models/zoo",
    )
    return Ec2Provider(
        settings,
        Ec2Settings(
            endpoint_url=endpoint, image_id=image, cluster=cluster, instance_type="t3.small", cores=2, poll_s=0.1
        ),
    )


def test_start_list_and_stop_tagged_workers(endpoint: str, ec2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = provider(endpoint, ec2, tmp_path, "test-a")
    handle = p.start_worker()
    assert handle.id.startswith("i-") and handle.address.endswith(":8100") and handle.cores == 2

    described = ec2.describe_instances(InstanceIds=[handle.id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags[CLUSTER_TAG] == "test-a" and tags["infaas:role"] == "worker"
    assert described["InstanceType"] == "t3.small"

    raw = ec2.describe_instance_attribute(InstanceId=handle.id, Attribute="userData")["UserData"]["Value"]
    script = base64.b64decode(raw).decode()
    assert "export INFAAS_REDIS_URL=redis://cache.internal:6379/0" in script
    assert "INFAAS_DATABASE_URL=postgresql+psycopg://infaas:pw@db.internal/infaas" in script
    assert "INFAAS_MODEL_STORE=s3://models/zoo" in script
    assert script.rstrip().endswith("exec infaas worker --port 8100")

    second = p.start_worker()
    assert {h.id for h in p.workers()} == {handle.id, second.id}
    assert p.owns(handle.id)

    p.stop_worker(handle.id)
    assert [h.id for h in p.workers()] == [second.id]
    state = ec2.describe_instances(InstanceIds=[handle.id])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in {"shutting-down", "terminated"}
    p.close()
    assert p.workers() == []


def test_only_its_own_cluster_is_seen_or_stopped(endpoint: str, ec2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = IMAGE
    stranger = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    mine = provider(endpoint, ec2, tmp_path, "test-b")
    other = provider(endpoint, ec2, tmp_path, "test-c")
    handle = mine.start_worker()
    assert [h.id for h in mine.workers()] == [handle.id]
    assert other.workers() == []
    with pytest.raises(ProviderError):
        mine.stop_worker(stranger)
    with pytest.raises(ProviderError):
        other.stop_worker(handle.id)
    state = ec2.describe_instances(InstanceIds=[stranger])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "running"
    mine.close()


def test_missing_image_is_a_clear_error(endpoint: str, ec2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = Ec2Provider(Settings(home=tmp_path), Ec2Settings(endpoint_url=endpoint, image_id=""))
    with pytest.raises(ProviderError, match="INFAAS_EC2_IMAGE_ID"):
        p.start_worker()
