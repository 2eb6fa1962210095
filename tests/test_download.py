"""`bayescomp data download`: against a loopback HTTP server serving the real files of shared/data (whole,
truncated, corrupted, dropped mid-file, ignoring ranges); no test touches the internet."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bayescomp import data as data_module
from bayescomp import download
from bayescomp.cli import main
from bayescomp.data import DATASETS, load_dataset
from bayescomp.download import DownloadError, fetch

SHARED = data_module.DEFAULT_DATA_DIR
SMALL = "t10k-images-idx3-ubyte.gz"  # 1.6 MB: the mechanics tests fetch this one file


class Mirror:
    """A loopback HTTP server: ``files`` maps URL paths to bytes; honours ``Range`` unless ``ranges`` is off;
    ``drop_once`` paths send the full Content-Length but only half the body, once; ``requests`` logs
    (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                header = self.headers.get("Range")
                mirror.requests.append((self.path, header))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if header and mirror.ranges:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if self.path in mirror.drop_once:
                    mirror.drop_once.discard(self.path)
                    self.wfile.write(payload[:len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve_folder(self, name: str) -> None:
        """Serve the real files of data set ``name`` from shared/data as ``/<folder>/<file>``."""
        folder = DATASETS[name].folder
        for file in DATASETS[name].files:
            self.files[f"/{folder}/{file}"] = (SHARED / folder / file).read_bytes()


@pytest.fixture
def mirror():
    server = Mirror()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _unpacked_md5(path: Path) -> str:
    return hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()


def _check_small() -> object:
    return download._check_idx(DATASETS["mnist"].files[SMALL])


def test_mnist_download_verifies_and_loads(mirror, tmp_path):
    mirror.serve_folder("mnist")
    root = download.download_dataset("mnist", tmp_path, mirror.url, backoff_s=0, log=lambda _: None)
    assert root == tmp_path
    for file, md5 in DATASETS["mnist"].files.items():
        assert _unpacked_md5(tmp_path / "mnist" / file) == md5  # independent of the download's own check
    assert not list(tmp_path.rglob("*.part"))
    bundle = load_dataset("mnist", tmp_path, val_size=100, train_subset=50)
    reference = load_dataset("mnist", SHARED, val_size=100, train_subset=50)
    assert np.array_equal(bundle.train.images.numpy(), reference.train.images.numpy())
    # a second call finds the files and fetches nothing
    count = len(mirror.requests)
    download.download_dataset("mnist", tmp_path, mirror.url, log=lambda _: None)
    assert len(mirror.requests) == count


def test_local_copy_first_nothing_downloads(mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("BAYESCOMP_DATA", raising=False)
    mirror.serve_folder("mnist")
    root = download.download_dataset("mnist", None, mirror.url, log=lambda _: None)
    assert root == SHARED and mirror.requests == []
    monkeypatch.setenv("BAYESCOMP_DATA", str(tmp_path))  # a configured folder holding the files: used as is
    shutil.copytree(SHARED / "mnist", tmp_path / "mnist")
    assert download.download_dataset("mnist", None, mirror.url, log=lambda _: None) == tmp_path
    assert mirror.requests == []


def test_fresh_clone_downloads_into_cache_and_loader_finds_it(mirror, tmp_path, monkeypatch):
    """No shared/data, no configured folder: download goes to $BAYESCOMP_CACHE/data and the loader falls back
    to it (what `make demo` does on a fresh clone, with the mirror from $BAYESCOMP_MIRROR)."""
    monkeypatch.setattr(data_module, "DEFAULT_DATA_DIR", tmp_path / "no-shared-data")
    monkeypatch.delenv("BAYESCOMP_DATA", raising=False)
    monkeypatch.setenv("BAYESCOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url)
    with pytest.raises(data_module.DataError, match="bayescomp data download"):
        load_dataset("mnist")
    mirror.serve_folder("mnist")
    assert main(["data", "download", "mnist"]) == 0
    assert (tmp_path / "cache" / "data" / "mnist" / SMALL).is_file()
    assert len(load_dataset("mnist", val_size=100).test) == 10000


def test_truncated_file_is_rejected_and_not_kept(mirror, tmp_path):
    body = (SHARED / "mnist" / SMALL).read_bytes()
    mirror.files["/f.gz"] = body[: len(body) // 3]
    with pytest.raises(DownloadError, match="not a complete gzip"):
        fetch(mirror.url + "/f.gz", tmp_path / SMALL, _check_small(), backoff_s=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["flipped byte", "other content"])
def test_corrupted_file_is_rejected_and_not_kept(mirror, tmp_path, kind):
    body = bytearray((SHARED / "mnist" / SMALL).read_bytes())
    if kind == "flipped byte":
        body[len(body) // 2] ^= 0xFF
    else:  # a valid gzip of a file with one changed pixel: only the MD5 can tell
        raw = bytearray(gzip.decompress(bytes(body)))
        raw[-1] ^= 0x01
        body = bytearray(gzip.compress(bytes(raw)))
    mirror.files["/f.gz"] = bytes(body)
    with pytest.raises(DownloadError, match="gzip|MD5"):
        fetch(mirror.url + "/f.gz", tmp_path / SMALL, _check_small(), backoff_s=0)
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_resumes_with_range(mirror, tmp_path):
    body = (SHARED / "mnist" / SMALL).read_bytes()
    mirror.files["/f.gz"] = body
    mirror.drop_once.add("/f.gz")
    fetch(mirror.url + "/f.gz", tmp_path / SMALL, _check_small(), backoff_s=0)
    assert (tmp_path / SMALL).read_bytes() == body
    assert len(mirror.requests) == 2
    assert mirror.requests[0][1] is None
    resumed_at = int(mirror.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(body)


def test_server_without_ranges_restarts_cleanly(mirror, tmp_path):
    body = (SHARED / "mnist" / SMALL).read_bytes()
    mirror.files["/f.gz"] = body
    mirror.ranges = False
    (tmp_path / (SMALL + ".part")).write_bytes(body[:1000])
    fetch(mirror.url + "/f.gz", tmp_path / SMALL, _check_small(), backoff_s=0)
    assert (tmp_path / SMALL).read_bytes() == body


def test_stale_part_from_another_version_is_refetched_whole(mirror, tmp_path):
    body = (SHARED / "mnist" / SMALL).read_bytes()
    mirror.files["/f.gz"] = body
    (tmp_path / (SMALL + ".part")).write_bytes(b"\x00" * 5000)  # resumable, but wrong bytes
    fetch(mirror.url + "/f.gz", tmp_path / SMALL, _check_small(), backoff_s=0)
    assert (tmp_path / SMALL).read_bytes() == body
    assert [r[1] for r in mirror.requests] == ["bytes=5000-", None]


def test_complete_part_answered_416_is_used(mirror, tmp_path):
    body = (SHARED / "mnist" / SMALL).read_bytes()
    mirror.files["/f.gz"] = body
    (tmp_path / (SMALL + ".part")).write_bytes(body)
    fetch(mirror.url + "/f.gz", tmp_path / SMALL, _check_small(), backoff_s=0)
    assert (tmp_path / SMALL).read_bytes() == body


def test_missing_file_on_mirror_is_a_clear_error(mirror, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404.*--mirror"):
        fetch(mirror.url + "/nothing.gz", tmp_path / SMALL, _check_small(), backoff_s=0)


def test_no_network_says_which_file_goes_where(tmp_path, capsys):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["data", "download", "fashion-mnist", "--data-dir", str(tmp_path),
                 "--mirror", f"http://127.0.0.1:{port}", "--retries", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "could not download" in err and str(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz") in err
    assert "by hand" in err


def test_cifar_binary_conversion_matches_an_independent_decoding():
    rng = np.random.default_rng(0)
    n = 5
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    raw = io.BytesIO()
    for image, label in zip(images, labels):  # the published layout, written pixel by pixel
        raw.write(bytes([int(label)]))
        for channel in range(3):
            raw.write(bytes(int(image[row, col, channel]) for row in range(32) for col in range(32)))
    got_images, got_labels = download.cifar_arrays_from_binary([raw.getvalue()[:3073 * 2], raw.getvalue()[3073 * 2:]])
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    with pytest.raises(DownloadError, match="multiple of 3073"):
        download.cifar_arrays_from_binary([raw.getvalue()[:-1]])


def _cifar_binary_archive(path: Path, corrupt: bool = False) -> None:
    """The CIFAR-10 binary archive written from shared/data's verified arrays (byte-equal to the original
    members, see shared/data/README.md)."""
    with np.load(SHARED / "cifar-10" / "cifar10-uint8.npz") as npz:
        arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    splits = [(f"data_batch_{i + 1}.bin", slice(10000 * i, 10000 * (i + 1)), "train") for i in range(5)]
    splits.append(("test_batch.bin", slice(None), "test"))
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, rows, split in splits:
            x, y = arrays[f"x_{split}"][rows], arrays[f"y_{split}"][rows]
            records = np.concatenate([y[:, None], x.transpose(0, 3, 1, 2).reshape(len(y), -1)], axis=1)
            payload = bytearray(records.astype(np.uint8).tobytes())
            if corrupt and name == "test_batch.bin":
                payload[12345] ^= 1
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(bytes(payload)))


@pytest.mark.slow
def test_cifar10_download_converts_to_the_verified_arrays(mirror, tmp_path):
    archive = tmp_path / "served.tar.gz"
    _cifar_binary_archive(archive)
    mirror.files["/cifar-10/cifar-10-binary.tar.gz"] = archive.read_bytes()
    mirror.drop_once.add("/cifar-10/cifar-10-binary.tar.gz")
    out = tmp_path / "data"
    download.download_dataset("cifar10", out, mirror.url, backoff_s=0, log=lambda _: None)
    assert sorted(p.name for p in (out / "cifar-10").iterdir()) == ["cifar10-uint8.npz"]
    with np.load(out / "cifar-10" / "cifar10-uint8.npz") as got, \
            np.load(SHARED / "cifar-10" / "cifar10-uint8.npz") as want:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(got[name], want[name]), name
    corrupt = tmp_path / "corrupt.tar.gz"
    _cifar_binary_archive(corrupt, corrupt=True)
    mirror.files["/cifar-10/cifar-10-binary.tar.gz"] = corrupt.read_bytes()
    with pytest.raises(DownloadError, match="test_batch.bin has MD5"):
        download.download_dataset("cifar10", tmp_path / "other", mirror.url, backoff_s=0, log=lambda _: None)
    assert not (tmp_path / "other" / "cifar-10" / "cifar10-uint8.npz").exists()


def test_cache_serves_a_data_set_the_local_copy_lacks(mirror, tmp_path, monkeypatch):
    """shared/data without fashion-mnist/: that data set is downloaded into the cache and read from there,
    while mnist is still read from the local copy."""
    local = tmp_path / "shared-data"
    shutil.copytree(SHARED / "mnist", local / "mnist")
    monkeypatch.setattr(data_module, "DEFAULT_DATA_DIR", local)
    monkeypatch.delenv("BAYESCOMP_DATA", raising=False)
    monkeypatch.setenv("BAYESCOMP_CACHE", str(tmp_path / "cache"))
    mirror.serve_folder("fashion-mnist")
    mirror.serve_folder("mnist")
    assert download.download_dataset("mnist", mirror=mirror.url, log=lambda _: None) == local
    assert mirror.requests == []
    download.download_dataset("fashion-mnist", mirror=mirror.url, log=lambda _: None)
    assert data_module.resolve_data_dir(None, "fashion-mnist") == tmp_path / "cache" / "data"
    assert data_module.resolve_data_dir(None, "mnist") == local
    assert load_dataset("fashion-mnist", val_size=100).class_names[0] == "T-shirt/top"
