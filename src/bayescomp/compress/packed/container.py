"""The container: preamble, JSON header, data section and CRC-32, written atomically and checked on read.

Layout (little-endian; docs/file-format.md)::

    b"BCPK" | version u16 | header_len u32 | data_len u64 | header (UTF-8 JSON) | data | crc32 u32

Every check here (magic, version, declared lengths, trailing bytes, checksum, JSON) runs before any module is
rebuilt, so a damaged file is refused as a whole with a message naming it. Files are written with the one
atomic writer shared with checkpoints (:func:`bayescomp.checkpoint.atomic_write_bytes`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from bayescomp.checkpoint import atomic_write_bytes
from bayescomp.compress.packed.format import CRC, MAGIC, PREAMBLE, READABLE_VERSIONS, PackedFormatError


def write_container(path: Path, version: int, content: dict[str, Any], blobs: list[bytes],
                    data_len: int) -> int:
    """Frame ``content`` (the header dict) and the data blobs, append the CRC and write atomically.

    Returns the file size in bytes. Raises ValueError if the header is not JSON-serialisable.
    """
    try:
        header = json.dumps(content, allow_nan=True, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata is not JSON-serialisable: {error}") from error
    body = PREAMBLE.pack(MAGIC, version, len(header), data_len) + header
    crc = zlib.crc32(body)
    for part in blobs:
        crc = zlib.crc32(part, crc)
    parts = [body, *blobs, CRC.pack(crc & 0xFFFFFFFF)]
    atomic_write_bytes(b"".join(parts), path)
    return sum(len(p) for p in parts)


def _check_lengths(path: Path, raw: bytes) -> tuple[int, int, int]:
    """Magic, version and declared lengths against the bytes on disk; returns (version, header_len, end)."""
    if len(raw) >= 4 and raw[:4] != MAGIC:
        raise PackedFormatError(f"{path}: not a bayescomp packed file (bad magic {raw[:4]!r}, "
                                f"expected {MAGIC!r})")
    if len(raw) < PREAMBLE.size + CRC.size:
        raise PackedFormatError(f"{path}: truncated packed file ({len(raw)} bytes, shorter than the "
                                f"{PREAMBLE.size + CRC.size}-byte minimum)")
    _, version, header_len, data_len = PREAMBLE.unpack_from(raw)
    if version not in READABLE_VERSIONS:
        raise PackedFormatError(f"{path}: unsupported packed format version {version} (this bayescomp reads "
                                f"versions {', '.join(map(str, READABLE_VERSIONS))})")
    expected = PREAMBLE.size + header_len + data_len + CRC.size
    if len(raw) < expected:
        raise PackedFormatError(f"{path}: truncated or corrupted packed file (header declares {expected} "
                                f"bytes, file has {len(raw)})")
    if len(raw) > expected:
        raise PackedFormatError(f"{path}: corrupted packed file ({len(raw) - expected} unexpected "
                                f"trailing bytes after the declared {expected})")
    return version, header_len, expected


def read_checked(path: Path) -> tuple[dict[str, Any], memoryview, int]:
    """Validate magic, version, lengths and CRC; return the parsed header, data section and version."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PackedFormatError(f"{path}: cannot read packed file ({error})") from error
    version, header_len, expected = _check_lengths(path, raw)
    (stored_crc,) = CRC.unpack_from(raw, expected - CRC.size)
    actual_crc = zlib.crc32(memoryview(raw)[:expected - CRC.size]) & 0xFFFFFFFF
    if stored_crc != actual_crc:
        raise PackedFormatError(f"{path}: checksum mismatch (stored CRC32 {stored_crc:#010x}, computed "
                                f"{actual_crc:#010x}); the file is corrupted")
    try:
        header = json.loads(raw[PREAMBLE.size:PREAMBLE.size + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackedFormatError(f"{path}: malformed header ({error})") from error
    if not isinstance(header, dict) or not isinstance(header.get("modules"), list):
        raise PackedFormatError(f"{path}: malformed header (no module list)")
    start = PREAMBLE.size + header_len
    return header, memoryview(raw)[start:expected - CRC.size], version
