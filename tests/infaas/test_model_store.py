"""Both model stores behave the same; S3 runs against a real S3-compatible server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from infaas.model_store import LocalModelStore, ModelStore, ObjectNotFound, open_model_store
from infaas.model_store.local import TEMP_PREFIX
from infaas.model_store.s3 import S3ModelStore
from tests.s3server import moto_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    if request.param == "local":
        return open_model_store(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"infaas-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return open_model_store(f"s3://{bucket}/prefix", cache_dir=str(tmp_path / "cache"))


def test_round_trip(store: ModelStore, tmp_path: Path) -> None:
    source = tmp_path / "file.bin"
    source.write_bytes(b"model-bytes" * 100)
    store.put_file("models/a/model.onnx", source)
    store.put_bytes("models/a/variants/v1.onnx", b"v1")
    store.put_bytes("models/b/model.onnx", b"b")
    assert store.exists("models/a/model.onnx")
    assert store.get_bytes("models/a/model.onnx") == source.read_bytes()
    assert store.local_path("models/a/variants/v1.onnx").read_bytes() == b"v1"
    assert store.list("models/a/") == ["models/a/model.onnx", "models/a/variants/v1.onnx"]
    assert store.delete_prefix("models/a/") == 2
    assert not store.exists("models/a/model.onnx")
    assert store.list("models/") == ["models/b/model.onnx"]


def test_missing_object(store: ModelStore) -> None:
    assert not store.exists("models/none/model.onnx")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("models/none/model.onnx")
    with pytest.raises(ObjectNotFound):
        store.local_path("models/none/model.onnx")


def test_overwrite_refreshes_cached_copy(store: ModelStore) -> None:
    store.put_bytes("models/c/model.onnx", b"one")
    assert store.local_path("models/c/model.onnx").read_bytes() == b"one"
    store.put_bytes("models/c/model.onnx", b"two")
    assert store.local_path("models/c/model.onnx").read_bytes() == b"two"


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "models/../../x", "models//x", ""])
def test_keys_cannot_escape(store: ModelStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_local_store_is_atomic_folder(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "s")
    store.put_bytes("models/a/model.onnx", b"x")
    assert (tmp_path / "s" / "models" / "a" / "model.onnx").read_bytes() == b"x"
    assert not list((tmp_path / "s" / "models" / "a").glob(".tmp-*"))


def test_when_each_object_was_written_and_cut_short_writes(store: ModelStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)  # S3 servers stamp to the second; clocks differ a little
    store.put_bytes("models/a/model.onnx", b"x")
    store.put_bytes("models/a/variants/v.onnx", b"v")
    modified = store.list_modified("models/a/")
    assert list(modified) == ["models/a/model.onnx", "models/a/variants/v.onnx"]
    assert all(before < when < datetime.now(UTC) + timedelta(minutes=5) for when in modified.values())

    # A write killed half-way: a temporary file (local) or an incomplete multipart upload (S3).
    if isinstance(store, S3ModelStore):
        store.client.create_multipart_upload(Bucket=store.bucket, Key=store._object_key("models/a/big.onnx"))
        partial = "models/a/big.onnx"
    else:
        assert isinstance(store, LocalModelStore)
        (store.root / "models" / "a" / f"{TEMP_PREFIX}cut").write_bytes(b"half")
        partial = f"models/a/{TEMP_PREFIX}cut"
    assert store.list("models/a/") == list(modified)  # never shown
    if isinstance(store, LocalModelStore):  # moto reports every multipart upload as initiated in 2010
        assert store.remove_partial_writes(before) == []  # younger than the cut-off: maybe still being written
    assert store.remove_partial_writes(datetime.now(UTC) + timedelta(minutes=10)) == [partial]
    assert store.remove_partial_writes(datetime.now(UTC) + timedelta(minutes=10)) == []
    assert store.list("models/a/") == list(modified)
