"""Fetch the built-in data sets on a machine without a local copy: ``bayescomp data download NAME``.

The local copy always wins: when the data folder (``--data-dir``, ``$BAYESCOMP_DATA`` or ``shared/data`` beside
the repository) already holds a data set's files, nothing is downloaded. Otherwise the files come from the data
set's canonical public mirror (or ``--mirror URL`` / ``$BAYESCOMP_MIRROR``, laid out as ``URL/<folder>/<file>``)
into the data folder, default ``$BAYESCOMP_CACHE/data`` (``~/.cache/bayescomp/data``), which
:func:`bayescomp.data.resolve_data_dir` falls back to.

Every file is checked against the same MD5s as :mod:`bayescomp.data` (of the unpacked IDX bytes; for CIFAR-10
of each member of the binary archive, then of the converted arrays) *before* it is renamed into place, so the
folder only ever holds verified files. A partial download is kept as ``<file>.part`` and resumed with an HTTP
``Range`` request; a server that ignores ranges, a dropped connection or a corrupt resumed file restarts cleanly.

CIFAR-10 is distributed as pickled Python batches or as a binary archive; pickles are never loaded here, so the
binary archive (one label byte then the R, G, B planes per image; Krizhevsky 2009) is converted to the
``cifar10-uint8.npz`` the loader reads.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bayescomp import data as data_module
from bayescomp.data import DATASETS, DataError, download_cache_dir

MIRROR_ENV = "BAYESCOMP_MIRROR"
CHUNK = 1 << 16


class DownloadError(DataError):
    """A download failed or its content does not match the published checksums; the message says what to do."""


@dataclass(frozen=True)
class Source:
    """Where a data set is published: base URL and the files to fetch from it."""

    base_url: str
    files: tuple[str, ...]


# Canonical public mirrors (file names as published). MNIST: torchvision's mirror of LeCun's files;
# Fashion-MNIST: Zalando's; CIFAR-10: the University of Toronto page, binary version.
SOURCES: dict[str, Source] = {
    "mnist": Source("https://ossci-datasets.s3.amazonaws.com/mnist", tuple(DATASETS["mnist"].files)),
    "fashion-mnist": Source("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                            tuple(DATASETS["fashion-mnist"].files)),
    "cifar10": Source("https://www.cs.toronto.edu/~kriz", ("cifar-10-binary.tar.gz",)),
}

# MD5 of each member of cifar-10-binary.tar.gz. Computed from the verified arrays of shared/data (whose README
# shows these files equal the originals byte for byte); the converted arrays are checked again afterwards.
CIFAR_MEMBERS = {"data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
                 "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
                 "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
                 "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
                 "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
                 "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d"}
CIFAR_RECORD = 1 + 3 * 32 * 32


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "bayescomp-data-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _receive(url: str, part: Path, timeout: float) -> None:
    """One attempt: append to ``part`` from where it ends (HTTP Range), or rewrite it if the server sends all."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # range past the end: the part is complete (or wrong; checked next)
            return
        raise
    with response:
        status = getattr(response, "status", None) or 200
        resumed = offset > 0 and status == 206 and \
            (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        written = 0
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                written += len(chunk)
        if expected is not None and written < expected:
            raise http.client.IncompleteRead(b"", expected - written)


def fetch(url: str, dest: Path, check: Callable[[Path], None], retries: int = 4, timeout: float = 60.0,
          backoff_s: float = 1.0) -> None:
    """Download ``url`` to ``dest`` atomically: resume ``dest.part`` across attempts, run ``check`` on the
    complete part (it raises :class:`DownloadError` on a checksum mismatch) and only then rename it to ``dest``.

    A part that fails ``check`` after a resumed transfer is discarded and fetched once more from the start.

    Raises:
        DownloadError: the server refused the file (HTTP 4xx), the network stayed unreachable for ``retries``
            further attempts, or a fresh download fails ``check``.
    """
    part = _part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    restarted = False
    attempt = 0
    while True:
        resumed_from = part.stat().st_size if part.exists() else 0
        try:
            _receive(url, part, timeout)
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500 and error.code != 408:
                raise DownloadError(f"{url}: the server answered HTTP {error.code} {error.reason}; check the "
                                    f"mirror URL (--mirror / ${MIRROR_ENV})") from None
            last: Exception = error
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            last = error
        else:
            try:
                check(part)
            except DownloadError:
                part.unlink(missing_ok=True)
                if resumed_from == 0 or restarted:
                    raise
                restarted = True  # a resumed file may mix two versions: fetch it whole once
                continue
            os.replace(part, dest)
            return
        attempt += 1
        if attempt > retries:
            raise _unreachable(url, dest, last)
        time.sleep(backoff_s * 2 ** (attempt - 1))


def _unreachable(url: str, dest: Path, error: Exception) -> DownloadError:
    reason = getattr(error, "reason", None) or error
    return DownloadError(f"could not download {url} ({type(error).__name__}: {reason}). Without network, place "
                         f"that file at {dest} by hand and run the same command again (it is then verified and "
                         "used), or point --data-dir / BAYESCOMP_DATA at a folder that already holds the data set")


def _md5(data: bytes | memoryview) -> str:
    return hashlib.md5(data).hexdigest()


def _check_idx(expected_md5: str) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error) as error:
            raise DownloadError(f"{path}: not a complete gzip file ({error})") from None
        got = _md5(data)
        if got != expected_md5:
            raise DownloadError(f"{path}: MD5 of the unpacked file is {got}, expected {expected_md5}")
    return check


def _read_cifar_members(archive: Path) -> dict[str, bytes]:
    """The six binary batches of the CIFAR-10 archive, each checked against :data:`CIFAR_MEMBERS`."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                name = info.name.rsplit("/", 1)[-1]
                if name in CIFAR_MEMBERS and info.isfile():
                    members[name] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DownloadError(f"{archive}: not a complete tar archive ({error})") from None
    for name, want in CIFAR_MEMBERS.items():
        if name not in members:
            raise DownloadError(f"{archive}: lacks cifar-10-batches-bin/{name}")
        got = _md5(members[name])
        if got != want:
            raise DownloadError(f"{archive}: member {name} has MD5 {got}, expected {want}")
    return members


def cifar_arrays_from_binary(batches: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) HWC uint8 and labels (N,) uint8 from binary batches (label byte, then R, G, B
    planes of 32 x 32 per image, as in the CIFAR-10 binary version)."""
    records = np.frombuffer(b"".join(batches), dtype=np.uint8)
    if records.size % CIFAR_RECORD:
        raise DownloadError(f"binary batches hold {records.size} bytes, not a multiple of {CIFAR_RECORD}")
    records = records.reshape(-1, CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].copy()


def _check_cifar_archive(archive: Path) -> None:
    _read_cifar_members(archive)


def convert_cifar(archive: Path, out: Path) -> None:
    """Verify the binary archive, convert it to the loader's npz and check the arrays' MD5s; write atomically."""
    members = _read_cifar_members(archive)
    x_train, y_train = cifar_arrays_from_binary([members[f"data_batch_{i}.bin"] for i in range(1, 6)])
    x_test, y_test = cifar_arrays_from_binary([members["test_batch.bin"]])
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for name, want in DATASETS["cifar10"].arrays.items():
        got = _md5(arrays[name].data)
        if got != want:
            raise DownloadError(f"{archive}: converted array {name!r} has MD5 {got}, expected {want}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **arrays, class_names=np.array(DATASETS["cifar10"].class_names))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _has_files(folder: Path, name: str) -> bool:
    return all((folder / DATASETS[name].folder / file).is_file() for file in DATASETS[name].files)


def target_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads go: ``data_dir``, else ``$BAYESCOMP_DATA``, else the download cache folder."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("BAYESCOMP_DATA"):
        return Path(os.environ["BAYESCOMP_DATA"]).expanduser()
    return download_cache_dir()


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, mirror: str | None = None,
                     retries: int = 4, timeout: float = 60.0, backoff_s: float = 1.0,
                     log: Callable[[str], None] = print) -> Path:
    """Make data set ``name`` available and return the data folder that holds it (verified by the loader).

    Nothing is fetched when the folder (or, with no folder configured, ``shared/data``) already holds the files.
    Returns the data folder to pass as ``data_dir`` (the cache folder is also found without it).
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    configured = data_dir is not None or bool(os.environ.get("BAYESCOMP_DATA"))
    default = data_module.DEFAULT_DATA_DIR
    if not configured and _has_files(default, name):
        log(f"{name}: local copy found in {default}; nothing to download")
        return default
    root = target_dir(data_dir)
    folder = root / DATASETS[name].folder
    if _has_files(root, name):
        data_module.load_dataset(name, root)  # verifies the MD5s; a corrupt file raises DataError naming it
        log(f"{name}: found in {folder}; nothing to download")
        return root
    source = SOURCES[name]
    base = (mirror or os.environ.get(MIRROR_ENV) or "").rstrip("/")
    for file in source.files:
        url = f"{base}/{DATASETS[name].folder}/{file}" if base else f"{source.base_url}/{file}"
        dest = folder / file
        check = _check_cifar_archive if name == "cifar10" else _check_idx(DATASETS[name].files[file])
        if dest.is_file():
            try:
                check(dest)  # placed by hand or left by an interrupted conversion
            except DownloadError as error:
                raise DownloadError(f"{error}; remove it to download it again") from None
            log(f"{name}: using {dest}")
        else:
            log(f"{name}: downloading {url} -> {dest}")
            fetch(url, dest, check, retries=retries, timeout=timeout, backoff_s=backoff_s)
    if name == "cifar10":
        archive = folder / source.files[0]
        convert_cifar(archive, folder / next(iter(DATASETS[name].files)))
        archive.unlink()
    data_module.load_dataset(name, root)
    log(f"{name}: verified in {folder}")
    return root


__all__ = [
    "CIFAR_MEMBERS",
    "SOURCES",
    "DownloadError",
    "cifar_arrays_from_binary",
    "convert_cifar",
    "download_dataset",
    "fetch",
    "target_dir",
]
