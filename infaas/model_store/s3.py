"""Model store on S3 (or any S3-compatible server) through boto3.

An S3 PUT is atomic: an object appears whole or not at all, so writes need no temporary key. What a
crash can leave is an incomplete multipart upload (``upload_file`` splits large files), invisible to
readers but billed; ``remove_partial_writes`` aborts those older than the grace period. Callers write
the object first and record it in the catalog after (write-then-record), so a row never points at an
object that is not there; an object whose row was never written is found by the orphan sweep.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

from infaas.model_store.base import ModelStore, ObjectNotFound, check_key


class S3ModelStore(ModelStore):
    """Objects under ``s3://bucket/prefix``; reads are cached on local disk for ONNX Runtime to load.

    The endpoint comes from the standard ``AWS_ENDPOINT_URL`` (boto3 honours it), which is how tests
    point it at a loopback S3 server.
    """

    def __init__(self, bucket: str, prefix: str = "", cache_dir: str | None = None, client=None) -> None:  # type: ignore[no-untyped-def]
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()) / "infaas-s3-cache" / bucket
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str, cache_dir: str | None = None) -> S3ModelStore:
        """Build from ``s3://bucket/prefix``."""
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"S3 model store URL needs a bucket: {url!r}")
        return cls(parsed.netloc, parsed.path, cache_dir=cache_dir)

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._object_key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise ObjectNotFound(key) from exc
            raise
        return response["Body"].read()

    def local_path(self, key: str) -> Path:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            raise ObjectNotFound(key) from exc
        tag = hashlib.sha256(f"{key}:{head.get('ETag', '')}".encode()).hexdigest()[:16]
        cached = self.cache_dir / tag / Path(key).name
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(cached.suffix + ".part")
            self.client.download_file(self.bucket, self._object_key(key), str(tmp))
            os.replace(tmp, cached)
        return cached

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError:
            return False
        return True

    def _full_prefix(self, prefix: str) -> str:
        return self._object_key(prefix.rstrip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")

    def _store_key(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1 :] if self.prefix else object_key

    def list(self, prefix: str) -> list[str]:
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str) -> dict[str, datetime]:
        modified: dict[str, datetime] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._full_prefix(prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                modified[self._store_key(item["Key"])] = item["LastModified"]
        return dict(sorted(modified.items()))

    def remove_partial_writes(self, older_than: datetime) -> list[str]:
        removed: list[str] = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._full_prefix("")
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed.append(self._store_key(upload["Key"]))
        return sorted(removed)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        if not keys and self.exists(prefix.rstrip("/")):
            keys = [prefix.rstrip("/")]
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._object_key(k)} for k in chunk]}
            )
        return len(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"
