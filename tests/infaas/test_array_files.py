"""The bounded .npy/.npz reader: bombs, forged sizes and odd archives are refused from their headers, before
anything is inflated; honest files read back exactly."""

from __future__ import annotations

import io
import resource
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from infaas.array_files import ArrayFileError, ArrayFileTooLarge, read_arrays, read_headers

MB = 2**20
LIMIT = 64 * MB


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def zeros_member(
    archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], *, header_shape: tuple[int, ...] = ()
) -> None:
    """Write ``name`` as float32 zeros of ``shape``, streamed (never held in memory); ``header_shape`` lies."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        npy_format.write_array_header_1_0(
            member, {"descr": "<f4", "fortran_order": False, "shape": header_shape or shape}
        )
        left = int(np.prod(shape)) * 4
        chunk = bytes(16 * MB)
        while left:
            member.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gigabyte_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The attack as reported: 1 GB of float32 zeros, DEFLATE-compressed to a few MB."""
    path = tmp_path_factory.mktemp("bombs") / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        zeros_member(archive, "x", (262144, 1024))
    return path


def test_gigabyte_bomb_refused_from_its_header(gigabyte_bomb: Path) -> None:
    assert gigabyte_bomb.stat().st_size < 8 * MB
    before = _peak_rss_mb()
    for read in (read_arrays, read_headers):
        with pytest.raises(ArrayFileTooLarge) as refused:
            read(gigabyte_bomb, LIMIT)
        assert refused.value.status == 413
        message = str(refused.value)
        assert "'x'" in message and "1,024.0 MB" in message and "64.0 MB" in message, message
        assert "INFAAS_MAX_ARRAY_MB" in message
    assert _peak_rss_mb() - before < 50  # nothing was inflated


def test_bomb_in_another_array_counts_toward_the_total(tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy(np.ones((4, 8), np.float32)))
        zeros_member(archive, "labels", (20 * MB,))  # 80 MB of float32 named like a harmless array
    with pytest.raises(ArrayFileTooLarge, match=r"array 'labels' is 80\.0 MB"):
        read_arrays(path, LIMIT)
    # Two halves under the limit each, over it together.
    path = tmp_path / "halves.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        zeros_member(archive, "a", (10 * MB,))
        zeros_member(archive, "b", (10 * MB,))
    with pytest.raises(ArrayFileTooLarge, match=r"array 'b' .* takes the file to 80\.0 MB"):
        read_headers(path, LIMIT)


def test_header_smaller_than_the_member_is_refused(tmp_path: Path) -> None:
    """A .npy header that declares 10 floats in a member the zip says is 100 MB: one of them lies."""
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        zeros_member(archive, "x", (25 * MB,), header_shape=(10,))
    with pytest.raises(ArrayFileError, match=r"array 'x' declares float32\[10\] .* archive says .* 104,857,728 bytes"):
        read_arrays(path, LIMIT)


def _forge_file_size(path: Path, size: int) -> None:
    """Rewrite the declared uncompressed size of the archive's only member (stored without zip64 extras)."""
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<L", data, local + 22, size)
    struct.pack_into("<L", data, central + 24, size)
    path.write_bytes(bytes(data))


def test_member_that_inflates_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    """The header and the zip's ``file_size`` agree on 10 floats, but the stream holds 100 MB: zipfile stops at
    the declared size and the CRC check fails, so the extra never reaches memory."""
    path = tmp_path / "hidden.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w") as member:  # no zip64 extra: the sizes sit in the fixed headers
            npy_format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (10,)})
            for _ in range(100):
                member.write(bytes(MB))
    _forge_file_size(path, 128 + 40)
    before = _peak_rss_mb()
    for read in (read_arrays, read_headers):
        with pytest.raises(ArrayFileError, match="array 'x' .*Bad CRC-32"):
            read(path, LIMIT)
    assert _peak_rss_mb() - before < 50


def test_header_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        zeros_member(archive, "x", (10,), header_shape=(1000,))
    with pytest.raises(ArrayFileError, match="declares float32\\[1000\\]"):
        read_arrays(path, LIMIT)
    huge = tmp_path / "huge.npy"  # 40 GB declared in a 26-byte file
    huge.write_bytes(npy(np.zeros(4, np.float32)).replace(b"(4,)", b"(10000000000,)"))
    with pytest.raises(ArrayFileError, match=r"declares float32\[10000000000\] .* file holds 26 bytes"):
        read_arrays(huge, LIMIT)


def test_too_many_members_refused_before_the_directory_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(1100):
            archive.writestr(f"a{i}.npy", b"")
    with pytest.raises(ArrayFileError, match="more than 1024 arrays"):
        read_headers(path, LIMIT)


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"notes.txt": b"hello"}, "'notes.txt', which is not a .npy array"),
        ({"x.npy": b"\x93NUMPY\x01\x00garbage"}, "array 'x' has no valid .npy header"),
        ({"x.npy": npy(np.array([{"a": 1}], dtype=object))}, "array 'x' holds Python objects"),
    ],
)
def test_odd_members_refused(tmp_path: Path, members: dict[str, bytes], match: str) -> None:
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ArrayFileError, match=match):
        read_arrays(path, LIMIT)


def test_other_compression_methods_refused(tmp_path: Path) -> None:
    path = tmp_path / "lzma.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("x.npy", npy(np.ones(3, np.float32)))
    with pytest.raises(ArrayFileError, match="compression method 14"):
        read_arrays(path, LIMIT)


def test_not_an_array_file(tmp_path: Path) -> None:
    for content in (b"", b"hello", b"PK\x03\x04 truncated"):
        path = tmp_path / "x.npz"
        path.write_bytes(content)
        with pytest.raises(ArrayFileError):
            read_arrays(path, LIMIT)


def test_honest_files_read_back_exactly(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    labels = np.arange(6)
    np.savez_compressed(tmp_path / "a.npz", x=x, labels=labels)
    np.savez(tmp_path / "b.npz", x=x, labels=labels)
    np.save(tmp_path / "c.npy", x)
    for name in ("a.npz", "b.npz"):
        arrays = read_arrays(tmp_path / name, LIMIT)
        np.testing.assert_array_equal(arrays["x"], x)
        np.testing.assert_array_equal(arrays["labels"], labels)
        headers = read_headers(tmp_path / name, LIMIT, verify_data=True)
        assert {n: (h.dtype, h.shape) for n, h in headers.items()} == {
            "x": (np.dtype(np.float32), (6, 4)),
            "labels": (labels.dtype, (6,)),
        }
    np.testing.assert_array_equal(read_arrays(tmp_path / "c.npy", LIMIT)["inputs"], x)
    # The bound is inclusive: exactly the limit is fine, one byte less is not.
    assert read_arrays(tmp_path / "c.npy", x.nbytes)["inputs"].shape == (6, 4)
    with pytest.raises(ArrayFileTooLarge):
        read_arrays(tmp_path / "c.npy", x.nbytes - 1)


def test_mutated_files_are_read_or_refused_never_crash(tmp_path: Path) -> None:
    """Random byte flips, cuts and insertions in honest files: each read either succeeds or is a 400/413."""
    rng = np.random.default_rng(14)
    originals = []
    for save in (np.savez, np.savez_compressed):
        buffer = io.BytesIO()
        save(buffer, x=np.arange(40, dtype=np.float32).reshape(5, 8), labels=np.arange(5))
        originals.append(buffer.getvalue())
    originals.append(npy(np.ones((3, 4))))
    path = tmp_path / "mutated"
    for _ in range(600):
        data = bytearray(originals[rng.integers(len(originals))])
        for _ in range(rng.integers(1, 6)):
            at = int(rng.integers(len(data)))
            kind = rng.random()
            if kind < 0.6:
                data[at] = int(rng.integers(256))
            elif kind < 0.8:
                del data[at : at + int(rng.integers(1, 50))]
            else:
                data[at:at] = rng.bytes(int(rng.integers(1, 20)))
        path.write_bytes(bytes(data))
        for read in (read_arrays, read_headers):
            try:
                read(path, LIMIT)
            except (ArrayFileError, ArrayFileTooLarge):
                pass
