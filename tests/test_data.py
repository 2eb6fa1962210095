"""Data loaders on the real files: shapes, splits, batching, data-folder resolution, checksum cache, bad files."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bayescomp import data as D
from bayescomp.data import DATASETS, DataError, TensorData, load_dataset, resolve_data_dir

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")


def _row_keys(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A sorted per-example fingerprint (pixels and label), to compare sets of examples."""
    weights = torch.randint(1, 2**20, (images[0].numel(),), generator=torch.Generator().manual_seed(1))
    return ((images.reshape(len(images), -1).long() * weights).sum(1) * 16 + labels).sort().values


def _data_copy(tmp_path: Path, skip: str | None = None) -> Path:
    """tmp data folder: MNIST label files copied (small, writable), image files symlinked to the real ones."""
    source, target = resolve_data_dir(None) / "mnist", tmp_path / "data" / "mnist"
    target.mkdir(parents=True)
    for name in MNIST_FILES:
        if name == skip:
            continue
        if "labels" in name:
            shutil.copyfile(source / name, target / name)
        else:
            (target / name).symlink_to(source / name)
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def fresh_loaders():
    """Parsed files are cached in memory per path/size/mtime; tests that count hashing start from scratch."""
    yield
    D._load_idx_cached.cache_clear()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_shapes_and_split(name):
    bundle = load_dataset(name, val_size=5000, seed=0)
    assert bundle.name == name and bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)
    assert len(bundle.class_names) == 10 and len(bundle.mean) == len(bundle.std) == 1
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (55000, 5000, 10000)
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64 and split.labels.min() == 0 and split.labels.max() == 9
    # train and val together are exactly the official training set (val_size=0 gives it in file order)
    official = load_dataset(name, val_size=0).train
    assert len(official) == 60000
    together = _row_keys(torch.cat([bundle.train.images, bundle.val.images]),
                         torch.cat([bundle.train.labels, bundle.val.labels]))
    assert torch.equal(together, _row_keys(official.images, official.labels))
    mean = official.images.float().mean().item() / 255
    assert mean == pytest.approx(bundle.mean[0], abs=1e-3)


def test_mnist_split_is_seeded_and_subsets_are_deterministic():
    a = load_dataset("mnist", val_size=1000, seed=3, train_subset=500, test_subset=200)
    b = load_dataset("mnist", val_size=1000, seed=3, train_subset=500, test_subset=200)
    c = load_dataset("mnist", val_size=1000, seed=4, train_subset=500, test_subset=200)
    assert (len(a.train), len(a.val), len(a.test)) == (500, 1000, 200)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.train.subset(100, seed=7).labels, a.train.subset(100, seed=7).labels)
    with pytest.raises(ValueError):
        a.train.subset(501)


def test_a_subset_and_its_complement_partition_the_split():
    """What the threshold search reads (``subset``) and what it leaves out (``subset_complement``) are disjoint and
    together the whole split, each in the split's order; the subset is the one the search has always read."""
    val = load_dataset("mnist", val_size=1000, seed=3, train_subset=500, test_subset=200).val
    seen, unseen = val.subset(300, seed=0), val.subset_complement(300, seed=0)
    assert (len(seen), len(unseen)) == (300, 700)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:300].sort().values
    assert torch.equal(seen.images, val.images[order])
    rest = torch.tensor(sorted(set(range(1000)) - set(order.tolist())))
    assert torch.equal(unseen.images, val.images[rest]) and torch.equal(unseen.labels, val.labels[rest])


def test_cifar10_shapes_channels_and_labels():
    bundle = load_dataset("cifar10", val_size=5000, seed=0)
    assert bundle.input_shape == (3, 32, 32) and bundle.class_names[0] == "airplane"
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (45000, 5000, 10000)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.shape[1:] == (3, 32, 32)
    assert bundle.test.labels.dtype == torch.int64
    counts = torch.cat([bundle.train.labels, bundle.val.labels]).bincount()
    assert counts.tolist() == [5000] * 10 and bundle.test.labels.bincount().tolist() == [1000] * 10
    # CHW with RGB order: per-channel means of the training set (README: 125.307, 122.950, 113.865)
    images = torch.cat([bundle.train.images, bundle.val.images])
    means = images.float().mean((0, 2, 3))
    torch.testing.assert_close(means, torch.tensor([125.307, 122.950, 113.865]), atol=0.01, rtol=0)


def test_batches_cover_every_sample_once_in_unit_range():
    n = 1037
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 3).contiguous()
    data = TensorData(images, torch.arange(n))
    batches = list(data.batches(100, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 11 and len(batches[-1][1]) == 37
    seen = torch.cat([labels for _, labels in batches])
    assert torch.equal(seen.sort().values, torch.arange(n)) and not torch.equal(seen, torch.arange(n))
    for x, labels in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 2, 3) and 0.0 <= x.min() and x.max() <= 1.0
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), labels % 256)  # images travel with labels
    ordered = torch.cat([labels for _, labels in data.batches(100)])
    assert torch.equal(ordered, torch.arange(n))
    assert data.images.dtype == torch.uint8 and data.images[255, 0, 0, 0].item() == 255  # source left untouched


def test_shuffle_is_deterministic_with_seeded_generator(mnist_small):
    def order(seed):
        return torch.cat([y for _, y in mnist_small.train.batches(256, shuffle=True,
                                                                  generator=torch.Generator().manual_seed(seed))])
    assert torch.equal(order(5), order(5)) and not torch.equal(order(5), order(6))
    x, _ = next(mnist_small.test.batches(1000))
    assert x.shape == (1000, 1, 28, 28) and x.max() == 1.0 and x.min() == 0.0


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError, match="imagenet") as info:
        load_dataset("imagenet")
    for known in ("mnist", "fashion-mnist", "cifar10"):
        assert known in str(info.value)
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10"}


def test_resolve_data_dir_explicit_env_default(tmp_path, monkeypatch):
    monkeypatch.delenv("BAYESCOMP_DATA", raising=False)
    default = resolve_data_dir(None)
    assert default == Path(D.__file__).resolve().parents[3] / "shared" / "data" and (default / "mnist").is_dir()
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    env_dir.mkdir()
    arg_dir.mkdir()
    monkeypatch.setenv("BAYESCOMP_DATA", str(env_dir))
    assert resolve_data_dir() == env_dir
    assert resolve_data_dir(arg_dir) == arg_dir and resolve_data_dir(str(arg_dir)) == arg_dir
    monkeypatch.setenv("BAYESCOMP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere") as info:
        resolve_data_dir()
    assert "BAYESCOMP_DATA" in str(info.value)
    with pytest.raises(DataError, match="missing-dir"):
        resolve_data_dir(tmp_path / "missing-dir")


def test_env_data_dir_is_used_by_load_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESCOMP_DATA", str(_data_copy(tmp_path, skip="t10k-labels-idx1-ubyte.gz")))
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset("mnist")


def test_checksum_verdicts_are_cached_and_invalidated(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("BAYESCOMP_CACHE", str(cache_dir))
    root = _data_copy(tmp_path)
    calls = []
    real_md5 = D._md5
    monkeypatch.setattr(D, "_md5", lambda b: calls.append(len(b)) or real_md5(b))

    load_dataset("mnist", root, train_subset=10)
    assert len(calls) == 4
    entries = json.loads((cache_dir / "checksums.json").read_text())
    labels = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert entries[os.path.abspath(labels)]["verdict"] == "ok"

    D._load_idx_cached.cache_clear()  # force re-reading the files: the verdicts must come from the cache
    load_dataset("mnist", root, train_subset=10)
    assert len(calls) == 4

    D._load_idx_cached.cache_clear()
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "changed" file
    load_dataset("mnist", root, train_subset=10)
    assert calls[4:] == [10008]  # only the touched file is hashed again

    (cache_dir / "checksums.json").write_text("{ not json")  # unreadable cache: ignored, then rewritten
    D._load_idx_cached.cache_clear()
    load_dataset("mnist", root, train_subset=10)
    assert len(calls) == 9 and len(json.loads((cache_dir / "checksums.json").read_text())) == 4

    D._load_idx_cached.cache_clear()
    load_dataset("mnist", root, train_subset=10, verify=False)
    assert len(calls) == 9


def test_missing_file_is_named(tmp_path):
    root = _data_copy(tmp_path, skip="t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root)
    message = str(info.value)
    assert str(root / "mnist" / "t10k-labels-idx1-ubyte.gz") in message and "missing" in message
    assert "BAYESCOMP_DATA" in message and "--data-dir" in message


def test_corrupt_content_fails_md5_but_loads_unverified(tmp_path):
    root = _data_copy(tmp_path)
    path = root / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a valid label, so only the checksum can tell
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root)
    message = str(info.value)
    assert str(path) in message and "MD5" in message
    assert "a25bea736e30d166cdddb491f175f624" in message  # expected digest shown
    assert len(load_dataset("mnist", root, verify=False, val_size=0).train) == 60000


@pytest.mark.parametrize("damage,expected", [
    (lambda b: b[: len(b) // 2], "gzip"),                                # truncated
    (lambda b: b"this is not a gzip file at all", "gzip"),                # not gzip
    (lambda b: gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(b)[4:]), "magic"),  # wrong IDX kind
    (lambda b: gzip.compress(gzip.decompress(b)[:-5]), "shape"),          # header/size mismatch
])
def test_unreadable_or_malformed_idx_is_named(tmp_path, damage, expected):
    root = _data_copy(tmp_path)
    path = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=expected) as info:
        load_dataset("mnist", root, verify=False)
    assert str(path) in str(info.value)


def test_bad_cifar_npz_is_named(tmp_path):
    folder = tmp_path / "cifar-10"
    folder.mkdir()
    path = folder / "cifar10-uint8.npz"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DataError, match="npz") as info:
        load_dataset("cifar10", tmp_path)
    assert str(path) in str(info.value)
    small = np.zeros((4, 32, 32, 3), np.uint8)
    np.savez(path, x_train=small, y_train=np.zeros(4, np.uint8), x_test=small, y_test=np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="MD5 of array 'x_train'"):
        load_dataset("cifar10", tmp_path, val_size=1)
    assert len(load_dataset("cifar10", tmp_path, val_size=1, verify=False).train) == 3
