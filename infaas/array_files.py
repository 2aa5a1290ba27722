"""Reads a client's ``.npy`` / ``.npz`` file with a bound on what it expands to, checked before reading.

``np.load`` on an ``.npz`` inflates every member in full, whatever ``mmap_mode`` says: a 972 KB upload
holding 1 GB of DEFLATE-compressed zeros took the server from 210 to 1,128 MB, and within the 200 MB
upload limit that is about 200 GB. So the size is decided from headers alone: the zip's central
directory (member count, names, compression, declared ``file_size``) and each member's ``.npy`` header
(dtype and shape, read with ``numpy.lib.format``, which parses it without ``eval``). A member whose
declared ``file_size`` is not exactly its header plus ``dtype.itemsize * prod(shape)`` is lying about one
of them and is refused; otherwise ``zipfile`` stops inflating at ``file_size`` and checks the CRC, so what
is read is what the headers promised. Only then is anything loaded.

The bound covers all arrays of a file together (``Settings.max_array_mb``); the error names the array,
its size and the limit. Everything else a reader can get wrong (not an archive, a pickle, an unknown
compression, a member that is not an array) is an ``ArrayFileError`` saying what to fix.
"""

from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from infaas.config import Settings
from infaas.errors import BadRequest, PayloadTooLarge

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
# np.savez writes one member per array; a model has at most a few dozen inputs. The count is checked from
# the end-of-central-directory record before ``zipfile`` parses the directory, which costs about 0.5 KB of
# memory per member: 2.6 million empty members fit in a 200 MB upload.
MAX_MEMBERS = 1024
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, counts, size, offset, comment
_EOCD_SIGNATURE = b"PK\x05\x06"
_MAX_COMMENT = 0xFFFF
_CHUNK = 1 << 20
_ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


class ArrayFileError(BadRequest):
    """The file is not a plain ``.npy`` or ``.npz`` of numeric arrays; the message says what is wrong."""

    code = "invalid_array_file"


class ArrayFileTooLarge(PayloadTooLarge):
    """The arrays would expand past the configured bound (``INFAAS_MAX_ARRAY_MB``)."""

    code = "array_file_too_large"


@dataclass(frozen=True)
class ArrayHeader:
    """What a ``.npy`` header declares: enough to check a file against a model without reading its data."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of data the header promises (Python ints: a lying shape cannot overflow the product)."""
        return self.dtype.itemsize * math.prod(self.shape)


def array_bound(settings: Settings) -> int:
    """The configured bound in bytes (``INFAAS_MAX_ARRAY_MB``)."""
    return int(settings.max_array_mb * 2**20)


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def _read_header(handle: IO[bytes], name: str) -> tuple[ArrayHeader, int]:
    """The array header at the start of ``handle`` and the offset where its data starts."""
    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(handle)
        else:
            raise ArrayFileError(f"array {name!r} uses .npy format {version}; save it with numpy.save or numpy.savez")
    except ArrayFileError:
        raise
    except Exception as exc:  # ValueError, TypeError, EOFError, BadZipFile, zlib.error: all a bad upload
        raise ArrayFileError(f"array {name!r} has no valid .npy header: {exc}") from exc
    if any(d < 0 for d in shape):
        raise ArrayFileError(f"array {name!r} declares a negative dimension {list(shape)}")
    if dtype.hasobject:
        raise ArrayFileError(f"array {name!r} holds Python objects (pickles are refused); send numeric arrays")
    return ArrayHeader(name=name, dtype=dtype, shape=tuple(int(d) for d in shape)), handle.tell()


def _add_to_total(total: int, header: ArrayHeader, max_bytes: int) -> int:
    """``total`` plus this array's bytes; ``ArrayFileTooLarge`` naming the array once past ``max_bytes``."""
    total += header.nbytes
    if total > max_bytes:
        raise ArrayFileTooLarge(
            f"array {header.name!r} is {_mb(header.nbytes)} uncompressed ({header.dtype}{list(header.shape)}), "
            f"which takes the file to {_mb(total)}, past the limit of {_mb(max_bytes)} (INFAAS_MAX_ARRAY_MB); "
            "send fewer samples per file"
        )
    return total


def _member_count(handle: IO[bytes], size: int) -> int:
    """Members listed in the zip's end-of-central-directory record (which ends the file, before a comment)."""
    tail_size = min(size, _EOCD.size + _MAX_COMMENT)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or at + _EOCD.size > len(tail):
        raise ArrayFileError("the .npz archive has no end-of-central-directory record (truncated upload?)")
    fields = _EOCD.unpack_from(tail, at)
    entries = fields[4]
    if entries == 0xFFFF:  # ZIP64: more than 65,534 members, far past MAX_MEMBERS
        raise ArrayFileError(f"the .npz archive declares more than {MAX_MEMBERS} arrays")
    return int(entries)


def _zip_headers(archive: zipfile.ZipFile, max_bytes: int) -> list[tuple[zipfile.ZipInfo, ArrayHeader]]:
    members: list[tuple[zipfile.ZipInfo, ArrayHeader]] = []
    seen: set[str] = set()
    total = 0
    for info in archive.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise ArrayFileError(f"the .npz archive holds {info.filename!r}, which is not a .npy array")
        name = info.filename[: -len(".npy")]
        if name in seen:
            raise ArrayFileError(f"the .npz archive holds array {name!r} twice")
        seen.add(name)
        if info.compress_type not in _ALLOWED_COMPRESSION:
            raise ArrayFileError(
                f"array {name!r} uses zip compression method {info.compress_type}; use numpy.savez or "
                "numpy.savez_compressed (stored or deflated)"
            )
        if info.flag_bits & 0x1:
            raise ArrayFileError(f"array {name!r} is encrypted")
        try:
            with archive.open(info) as handle:
                header, offset = _read_header(handle, name)
        except (zipfile.BadZipFile, NotImplementedError, OSError, ValueError) as exc:  # its local header
            raise ArrayFileError(f"array {name!r} cannot be opened: {exc}") from exc
        if info.file_size != offset + header.nbytes:
            raise ArrayFileError(
                f"array {name!r} declares {header.dtype}{list(header.shape)} ({header.nbytes:,} bytes of data after "
                f"a {offset}-byte header) but the archive says the member is {info.file_size:,} bytes; "
                "the file is corrupt or forged"
            )
        total = _add_to_total(total, header, max_bytes)
        members.append((info, header))
    return members


def _open_zip(path: Path) -> zipfile.ZipFile:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if _member_count(handle, size) > MAX_MEMBERS:
            raise ArrayFileError(f"the .npz archive holds more than {MAX_MEMBERS} arrays")
    try:
        return zipfile.ZipFile(path)
    except Exception as exc:  # BadZipFile, struct.error, NotImplementedError, ...: all a bad upload
        raise ArrayFileError(f"the file is not a readable .npz archive: {exc}") from exc


def file_kind(path: Path) -> str:
    """``npy`` or ``npz`` from the first bytes (a client's file name is not trusted)."""
    with open(path, "rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    raise ArrayFileError("the file is neither a .npy array nor a .npz archive")


def _npy_header(path: Path, max_bytes: int) -> tuple[ArrayHeader, int]:
    with open(path, "rb") as handle:
        header, offset = _read_header(handle, "inputs")
    actual = path.stat().st_size
    if actual != offset + header.nbytes:
        raise ArrayFileError(
            f"the .npy header declares {header.dtype}{list(header.shape)} ({header.nbytes:,} bytes of data) but the "
            f"file holds {actual - offset:,} bytes after its header; the file is corrupt or truncated"
        )
    _add_to_total(0, header, max_bytes)
    return header, offset


def read_headers(path: Path, max_bytes: int, *, verify_data: bool = False) -> dict[str, ArrayHeader]:
    """The arrays' headers (``.npy``: one array named ``inputs``), checked against ``max_bytes``.

    ``verify_data`` also streams every member through ``zipfile`` (1 MB at a time, nothing kept), so a
    corrupt stream or a wrong CRC is found now rather than by whoever reads the file later.
    """
    if file_kind(path) == "npy":
        header, _ = _npy_header(path, max_bytes)
        return {header.name: header}
    with _open_zip(path) as archive:
        members = _zip_headers(archive, max_bytes)
        if verify_data:
            for info, header in members:
                _drain(archive, info, header.name)
    return {header.name: header for _, header in members}


def _drain(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    try:
        with archive.open(info) as handle:
            while handle.read(_CHUNK):
                pass
    except Exception as exc:  # zlib.error, BadZipFile (CRC), EOFError: all a bad upload
        raise ArrayFileError(f"array {name!r} cannot be decompressed: {exc}") from exc


def read_arrays(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """Every array of a ``.npy`` (named ``inputs``, memory-mapped) or ``.npz`` file, at most ``max_bytes`` in all.

    Raises ``ArrayFileTooLarge`` (413) past the bound and ``ArrayFileError`` (400) for anything malformed,
    in both cases before any array data is read.
    """
    if file_kind(path) == "npy":
        header, offset = _npy_header(path, max_bytes)
        try:
            return {header.name: np.load(path, allow_pickle=False, mmap_mode="r")}
        except (ValueError, OSError) as exc:
            raise ArrayFileError(f"the .npy file cannot be read: {exc}") from exc
    with _open_zip(path) as archive:
        return dict(_load_members(archive, _zip_headers(archive, max_bytes)))


def _load_members(
    archive: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, ArrayHeader]]
) -> Iterator[tuple[str, np.ndarray]]:
    for info, header in members:
        try:
            with archive.open(info) as handle:
                yield header.name, npy_format.read_array(handle, allow_pickle=False)
        except Exception as exc:  # zlib.error, BadZipFile (CRC), ValueError (short read): all a bad upload
            raise ArrayFileError(f"array {header.name!r} cannot be read: {exc}") from exc


__all__ = [
    "ArrayFileError",
    "ArrayFileTooLarge",
    "ArrayHeader",
    "array_bound",
    "file_kind",
    "read_arrays",
    "read_headers",
]
