"""Real benchmark data (MNIST, Fashion-MNIST, CIFAR-10) as in-memory uint8 tensors, checksum-verified.

Layout of the data folder::

    <data_dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz          gzipped IDX
    <data_dir>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz  gzipped IDX
    <data_dir>/cifar-10/cifar10-uint8.npz       x_train, y_train, x_test, y_test (HWC uint8)

The folder is the ``data_dir`` argument, else ``$BAYESCOMP_DATA``, else ``shared/data`` beside the repository.
Every file is checked against the MD5 of its unpacked bytes (IDX) or of its arrays (CIFAR-10); the verdict is
cached in ``$BAYESCOMP_CACHE/checksums.json`` (default ``~/.cache/bayescomp``), keyed by absolute path, size
and mtime, so an unchanged file is hashed only once. Problems raise :class:`DataError` naming the file.

The validation split is carved from the official training set with a seeded permutation; the official test set
is only ever ``test``. Images stay uint8 (N x C x H x W); :meth:`TensorData.batches` yields float32 in [0, 1].
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


class DataError(Exception):
    """A data folder or file is missing, corrupt or unreadable; the message names it and says what to do."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set lives under the data folder, its checksums and its model-facing metadata."""

    name: str
    folder: str
    files: dict[str, str]  # file name -> MD5 (IDX: of the unpacked file; npz: unused, see ``arrays``)
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    arrays: dict[str, str] | None = None  # npz only: array name -> MD5 of array.tobytes()


_IDX_MNIST = {"train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637"}
_IDX_FASHION = {"train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
                "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
                "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965"}
_CIFAR_ARRAYS = {"x_train": "17e2cb5a4119d89a4a13e02b91701bff", "y_train": "69c5f3349be54915edfca558b72ad888",
                 "x_test": "6d2714505047e13831cd876923568712", "y_test": "251f18ce75337ae9ca5d0dbd7ea62cf4"}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "mnist", _IDX_MNIST, 10, (1, 28, 28), (0.1307,), (0.3081,),
                         tuple(str(d) for d in range(10))),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "fashion-mnist", _IDX_FASHION, 10, (1, 28, 28), (0.2860,), (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "cifar10": DatasetSpec(
        "cifar10", "cifar-10", {"cifar10-uint8.npz": ""}, 10, (3, 32, 32), (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        arrays=_CIFAR_ARRAYS),
}


def download_cache_dir() -> Path:
    """Where ``bayescomp data download`` puts data sets: ``$BAYESCOMP_CACHE/data`` (``~/.cache/bayescomp/data``)."""
    return Path(os.environ.get("BAYESCOMP_CACHE") or Path.home() / ".cache" / "bayescomp") / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None, folder: str | None = None) -> Path:
    """The data folder: ``data_dir``, else ``$BAYESCOMP_DATA``, else ``shared/data`` beside the repository, else
    the download cache (:func:`download_cache_dir`) when ``bayescomp data download`` has filled it (also when
    ``shared/data`` exists but lacks the data set's ``folder`` and the cache has it)."""
    cache = download_cache_dir()
    if data_dir is not None:
        path, source = Path(data_dir).expanduser(), "the data_dir argument / --data-dir"
    elif os.environ.get("BAYESCOMP_DATA"):
        path, source = Path(os.environ["BAYESCOMP_DATA"]).expanduser(), "$BAYESCOMP_DATA"
    elif cache.is_dir() and (not DEFAULT_DATA_DIR.is_dir() or (
            folder is not None and not (DEFAULT_DATA_DIR / folder).is_dir() and (cache / folder).is_dir())):
        path, source = cache, "the download cache"
    else:
        path, source = DEFAULT_DATA_DIR, "the default beside the repository"
    if not path.is_dir():
        raise DataError(
            f"data directory not found: tried {path.absolute()} (from {source}). Point --data-dir or "
            f"BAYESCOMP_DATA at a folder holding mnist/, fashion-mnist/ and cifar-10/ (default: {DEFAULT_DATA_DIR}), "
            f"or fetch a data set with `bayescomp data download NAME` (into {download_cache_dir()})")
    return path


def _fail(path: Path, problem: str) -> DataError:
    """A DataError naming ``path``, what is wrong with it and how to fix it."""
    return DataError(f"{path}: {problem}. Restore it from {DEFAULT_DATA_DIR} (checksums in its README.md) or "
                     f"point --data-dir / BAYESCOMP_DATA at a folder holding {path.parent.name}/{path.name}.")


def _checksum_cache_path() -> Path:
    return Path(os.environ.get("BAYESCOMP_CACHE") or Path.home() / ".cache" / "bayescomp") / "checksums.json"


def _read_cache() -> dict:
    try:
        data = json.loads(_checksum_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or unreadable: ignored, rewritten on the next verdict


def _write_cache(entries: dict) -> None:
    path = _checksum_cache_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache only costs re-hashing next time


def _md5(data: bytes | memoryview) -> str:
    """MD5 hex digest (one function, so tests can count hashing)."""
    return hashlib.md5(data).hexdigest()


def _verify(path: Path, size: int, mtime_ns: int, expected: dict[str, str],
            payload: Callable[[str], bytes | memoryview]) -> None:
    """Check ``md5(payload(part)) == expected[part]`` for every part, unless a cached "ok" verdict applies."""
    key = os.path.abspath(path)
    record = {"size": size, "mtime_ns": mtime_ns, "expected": expected, "verdict": "ok"}
    if _read_cache().get(key) == record:
        return
    for part, want in expected.items():
        got = _md5(payload(part))
        if got != want:
            what = "" if part == "" else f" of array {part!r}"
            raise _fail(path, f"wrong MD5{what}: expected {want}, got {got} (the file is corrupt or not the "
                              "original)")
    entries = _read_cache()
    entries[key] = record
    _write_cache(entries)


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise _fail(path, "file is missing") from None
    except OSError as error:
        raise _fail(path, f"cannot be read ({error})") from None


def _load_idx(path: Path, expected_md5: str, ndim: int, verify: bool) -> np.ndarray:
    """A gzipped IDX file as a uint8 array (cached in memory per path, size and mtime)."""
    stat = _stat(path)
    return _load_idx_cached(path, stat.st_size, stat.st_mtime_ns, expected_md5, ndim, verify)


@functools.lru_cache(maxsize=16)
def _load_idx_cached(path: Path, size: int, mtime_ns: int, expected_md5: str, ndim: int,
                     verify: bool) -> np.ndarray:
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise _fail(path, f"unreadable gzip file ({type(error).__name__}: {error}); it is truncated or not "
                          "gzip") from None
    magic = 2048 + ndim
    got_magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got_magic != magic:
        raise _fail(path, f"bad IDX magic number {got_magic} (expected {magic}: uint8, {ndim}-d)")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) < header or len(data) - header != int(np.prod(dims)):
        raise _fail(path, f"bad IDX shape: header says {dims} but the file holds {max(len(data) - header, 0)} "
                          "bytes of data")
    if verify:
        _verify(path, size, mtime_ns, {"": expected_md5}, lambda _: data)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_npz(path: Path, expected: dict[str, str], verify: bool) -> dict[str, np.ndarray]:
    """The CIFAR-10 arrays, images as N x C x H x W (cached in memory per path, size and mtime)."""
    stat = _stat(path)
    return _load_npz_cached(path, stat.st_size, stat.st_mtime_ns, tuple(expected.items()), verify)


@functools.lru_cache(maxsize=2)
def _load_npz_cached(path: Path, size: int, mtime_ns: int, expected: tuple[tuple[str, str], ...],
                     verify: bool) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name, _ in expected}
    except KeyError as error:
        raise _fail(path, f"npz file lacks array {error}") from None
    except Exception as error:  # noqa: BLE001 - zipfile/zlib/ValueError/OSError: all mean "unreadable"
        raise _fail(path, f"unreadable npz file ({type(error).__name__}: {error}); it is truncated or not "
                          "an npz archive") from None
    for name in ("x_train", "x_test"):
        if arrays[name].dtype != np.uint8 or arrays[name].ndim != 4 or arrays[name].shape[1:] != (32, 32, 3):
            raise _fail(path, f"array {name!r} has shape {arrays[name].shape} {arrays[name].dtype}, expected "
                              "(N, 32, 32, 3) uint8")
    if verify:
        _verify(path, size, mtime_ns, dict(expected), lambda name: np.ascontiguousarray(arrays[name]).data)
    for name in ("x_train", "x_test"):
        arrays[name] = np.ascontiguousarray(arrays[name].transpose(0, 3, 1, 2))
    return arrays


def _raw_arrays(spec: DatasetSpec, root: Path, verify: bool) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) of the official splits, images N x C x H x W."""
    folder = root / spec.folder
    if spec.arrays is not None:
        (file,) = spec.files
        a = _load_npz(folder / file, spec.arrays, verify)
        out = [(a["x_train"], a["y_train"], folder / file), (a["x_test"], a["y_test"], folder / file)]
    else:
        out = []
        for split in ("train", "t10k"):
            images_file = folder / f"{split}-images-idx3-ubyte.gz"
            labels_file = folder / f"{split}-labels-idx1-ubyte.gz"
            images = _load_idx(images_file, spec.files[images_file.name], 3, verify)
            labels = _load_idx(labels_file, spec.files[labels_file.name], 1, verify)
            if len(images) != len(labels):
                raise _fail(labels_file, f"holds {len(labels)} labels but {images_file.name} holds "
                                         f"{len(images)} images")
            out.append((images[:, None], labels, labels_file))
    for images, labels, file in out:
        if labels.ndim != 1 or len(labels) != len(images) or (len(labels) and labels.max() >= spec.num_classes):
            raise _fail(file, f"labels do not fit the images ({labels.shape} for {images.shape}, "
                              f"{spec.num_classes} classes)")
    return out[0][0], out[0][1], out[1][0], out[1][1]


@dataclass
class TensorData:
    """Images (uint8, N x C x H x W) and labels (int64, N) held in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError(f"labels must be 1-d with {len(self.images)} entries, got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (float32 images in [0, 1], int64 labels) batches; the last partial batch is included."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                images, labels = self.images[start:start + batch_size], self.labels[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                images, labels = self.images[idx], self.labels[idx]
            if device is not None:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            yield images.float().div_(255), labels

    def example(self, n: int = 2) -> torch.Tensor:
        """The first ``n`` images as the model sees them (float32 in [0, 1]); used to trace and export models."""
        return self.images[:n].float().div_(255)

    def subset(self, n: int, seed: int = 0) -> TensorData:
        """``n`` random rows (kept in their original order), the same for the same ``seed``."""
        idx = self._subset_mask(n, seed).nonzero().flatten()
        return TensorData(self.images[idx], self.labels[idx])

    def subset_complement(self, n: int, seed: int = 0) -> TensorData:
        """The rows :meth:`subset` with the same ``n`` and ``seed`` leaves out (in their original order)."""
        idx = (~self._subset_mask(n, seed)).nonzero().flatten()
        return TensorData(self.images[idx], self.labels[idx])

    def _subset_mask(self, n: int, seed: int) -> torch.Tensor:
        if not 1 <= n <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)}, got {n}")
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]] = True
        return mask


@dataclass
class DataBundle:
    """Train / validation / test splits of one data set, with what a model needs to know about it."""

    name: str
    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, val_size: int = 5000, seed: int = 0,
                 train_subset: int | None = None, test_subset: int | None = None,
                 verify: bool = True) -> DataBundle:
    """Load ``name`` ("mnist", "fashion-mnist", "cifar10") with a seeded validation split of the training set.

    ``train_subset`` / ``test_subset`` keep that many random rows of train / test (after the split), seeded.
    Raises :class:`DataError` for unknown names and missing or corrupt files; ``verify=False`` skips MD5s.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    x_train, y_train, x_test, y_test = _raw_arrays(spec, resolve_data_dir(data_dir, spec.folder), verify)
    n = len(y_train)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be between 0 and {n - 1} for {name}, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    train = TensorData(images[train_idx], labels[train_idx])
    val = TensorData(images[val_idx], labels[val_idx])
    test = TensorData(torch.from_numpy(x_test).clone(), torch.from_numpy(y_test).long())
    if train_subset is not None:
        train = train.subset(train_subset, seed)
    if test_subset is not None:
        test = test.subset(test_subset, seed)
    return DataBundle(spec.name, train, val, test, spec.num_classes, spec.input_shape, spec.mean, spec.std,
                      spec.class_names)
