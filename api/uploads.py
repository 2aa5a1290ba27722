"""Receiving uploaded files within a size limit, without trusting the client's file name."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import UploadFile

from infaas.errors import PayloadTooLarge

CHUNK = 1 << 20


async def save_upload(upload: UploadFile, directory: Path, limit_bytes: int, label: str) -> Path:
    """Stream an upload to a fresh temp file in ``directory``; 413 past ``limit_bytes``.

    The client's file name is never used for the path: only a random name is.
    """
    fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".bin")
    path = Path(name)
    written = 0
    with open(fd, "wb") as handle:
        while chunk := await upload.read(CHUNK):
            written += len(chunk)
            if written > limit_bytes:
                handle.close()
                path.unlink(missing_ok=True)
                raise PayloadTooLarge(
                    f"{label} is larger than the limit of {limit_bytes / 1e6:.1f} MB (INFAAS_MAX_UPLOAD_MB)"
                )
            handle.write(chunk)
    return path
