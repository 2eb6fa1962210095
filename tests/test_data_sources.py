"""Your own data: Datasets, DataLoaders and image folders go through training, compression and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import bayescomp
from bayescomp.cli import main
from bayescomp.data import DataError, TensorData, load_dataset
from bayescomp.data_sources import StreamData, load_image_folder, make_bundle
from bayescomp.train import TrainConfig, evaluate, fit


class CountingDataset(Dataset):
    """Float images from uint8 tensors, counting the items read (to show that nothing is read up front)."""

    def __init__(self, data: TensorData) -> None:
        self.data, self.reads = data, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.data.images[i].float() / 255, int(self.data.labels[i])


def test_stream_batches_equal_in_memory_batches(mnist_small):
    """Same seed, same batches: a Dataset streamed by the library trains exactly as the in-memory data."""
    stream = StreamData(CountingDataset(mnist_small.train))
    a = list(mnist_small.train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(3)))
    b = list(stream.batches(128, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert len(a) == len(b) == stream.num_batches(128)
    for (xa, ya), (xb, yb) in zip(a, b):
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ya, yb)
    torch.testing.assert_close(stream.example(3), mnist_small.train.example(3))
    sub_a, sub_b = mnist_small.train.subset(50, seed=4), stream.subset(50, seed=4)
    torch.testing.assert_close(next(sub_b.batches(50))[0], next(sub_a.batches(50))[0])


def test_fit_on_a_dataset_equals_fit_in_memory(mnist_small):
    streamed = make_bundle(CountingDataset(mnist_small.train), CountingDataset(mnist_small.val),
                           CountingDataset(mnist_small.test), num_classes=10)
    assert streamed.train.dataset.reads <= 2, "nothing is read before training asks for it"
    models = []
    for data in (mnist_small, streamed):
        torch.manual_seed(0)
        model = bayescomp.bayesify(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)),
                                   "gnj")
        fit(model, data, TrainConfig(epochs=1, batch_size=100, seed=5), progress=False, log=lambda *_: None)
        models.append(model)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q)
    assert streamed.train.dataset.reads >= len(mnist_small.train)


@pytest.fixture(scope="module")
def cifar_loaders():
    """A real CIFAR-10 subset behind DataLoaders with the user's own batch size and a normalising transform."""
    data = load_dataset("cifar10", val_size=500, seed=0, train_subset=1500, test_subset=500)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)

    def tensors(split: TensorData) -> TensorDataset:
        return TensorDataset((split.images.float() / 255 - mean) / std, split.labels)

    return (DataLoader(tensors(data.train), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(0)),
            DataLoader(tensors(data.val), batch_size=250), DataLoader(tensors(data.test), batch_size=250))


def test_cifar10_dataloader_through_compress_model(cifar_loaders, tmp_path):
    train, val, test = cifar_loaders
    bundle = make_bundle(train, val, test, num_classes=10, name="cifar10-loader")
    assert bundle.input_shape == (3, 32, 32) and len(bundle.train) == 1500
    assert bundle.train.num_batches(128) == len(train), "the loader's own batching is used"
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    fit(dense, bundle, TrainConfig(epochs=2, lr=3e-3), progress=False, log=lambda *_: None)
    result = bayescomp.compress_model(dense, (train, val, test), "gnj", epochs=1, log=lambda *_: None)
    assert result.weights_kept < result.weights_dense
    error = evaluate(result.quantized_model, bundle.test)["error_pct"]
    assert error < 85.0, "the compressed model learned something (chance is 90 %)"
    path = tmp_path / "cifar.bcz"
    result.save(path)
    images = next(iter(test))[0][:8]
    torch.testing.assert_close(bayescomp.load(path)(images), result.quantized_model.eval()(images),
                               rtol=1e-4, atol=1e-4)


def test_iterable_dataset_is_refused_with_a_reason():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(1, 2, 2), 0

    with pytest.raises(TypeError, match="length"):
        StreamData(Stream())


def write_folder(root, data: TensorData, per_class: int, classes=(0, 1, 2), size=None) -> None:
    """Real MNIST digits as PNG files, one sub-folder per class (``size``: a different size for the last one)."""
    for digit in classes:
        folder = root / f"digit{digit}"
        folder.mkdir(parents=True)
        rows = torch.nonzero(data.labels == digit).flatten()[:per_class]
        for k, row in enumerate(rows.tolist()):
            image = Image.fromarray(data.images[row, 0].numpy())
            if size is not None and k == len(rows) - 1 and digit == classes[-1]:
                image = image.resize(size)
            image.save(folder / f"{k:04d}.png")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    data = load_dataset("mnist", val_size=1, seed=0)
    root = tmp_path_factory.mktemp("folder") / "digits"
    write_folder(root, data.test, per_class=200)
    return root


def test_image_folder_splits_are_seeded_disjoint_and_read_from_the_files(image_folder):
    first = load_image_folder(image_folder, seed=0)
    again = load_image_folder(image_folder, seed=0)
    other = load_image_folder(image_folder, seed=1)
    assert first.num_classes == 3 and first.class_names == ("digit0", "digit1", "digit2")
    assert first.input_shape == (1, 28, 28)
    assert (len(first.train), len(first.val), len(first.test)) == (486, 54, 60)
    sets = [set(split.dataset.indices) for split in (first.train, first.val)]
    test = set(first.test.dataset.indices)
    assert not (sets[0] & sets[1]) and not (sets[0] & test) and not (sets[1] & test)
    assert first.val.dataset.indices == again.val.dataset.indices != other.val.dataset.indices
    image, label = first.train.dataset[0]
    path, want = first.train.dataset.dataset.samples[first.train.dataset.indices[0]]
    assert label == want and torch.equal(image[0], torch.from_numpy(np.array(Image.open(path))))
    assert 0.05 < first.mean[0] < 0.3 and 0.2 < first.std[0] < 0.45, "MNIST-like pixel statistics"


def test_image_folder_through_the_cli(image_folder, tmp_path):
    run_dir = tmp_path / "run"
    code = main(["run", "--model", "lenet300", "--data", str(image_folder), "--method", "gnj", "--run-dir",
                 str(run_dir), "--dense-epochs", "3", "--epochs", "2", "--batch-size", "64", "--no-progress",
                 "--no-latency", "--no-plots"])
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"] == str(image_folder)
    model = bayescomp.load(run_dir / "compressed.bcz")
    data = load_image_folder(image_folder, seed=0)
    assert evaluate(model, data.test)["error_pct"] == pytest.approx(report["test_error_pct"], abs=1e-6)
    assert report["test_error_pct"] < 40.0, "three digit classes are learned (chance is 67 % error)"


def test_image_folder_errors_name_the_problem(tmp_path, capsys):
    data = load_dataset("mnist", val_size=1, seed=0)
    root = tmp_path / "mixed"
    write_folder(root, data.test, per_class=20, classes=(0, 1), size=(20, 20))
    bundle = load_image_folder(root, image_size=(28, 28))  # resizing makes the odd image fit
    assert bundle.input_shape == (1, 28, 28) and len(list(bundle.train.batches(16)))
    with pytest.raises(DataError, match=r"0019\.png.*--image-size"):
        unsized = load_image_folder(root)
        for split in (unsized.train, unsized.val, unsized.test):
            list(split.batches(16))
    code = main(["run", "--model", "lenet300", "--data", str(root), "--image-size", "28x28", "--run-dir",
                 str(tmp_path / "sized"), "--dense-epochs", "1", "--epochs", "1", "--no-progress", "--no-latency",
                 "--no-plots"])
    assert code == 0 and json.loads((tmp_path / "sized" / "run.json").read_text())["image_size"] == [28, 28]
    with pytest.raises(SystemExit):  # argparse refuses a malformed size before anything runs
        main(["run", "--data", str(root), "--image-size", "28x", "--run-dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
    code = main(["run", "--model", "lenet300", "--data", str(tmp_path / "nowhere"), "--run-dir",
                 str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()


def test_data_parallel_training_refuses_a_dataloader(cifar_loaders, monkeypatch):
    """Every rank must draw the same global batch; a user's DataLoader batches on its own, so DDP refuses it (and
    says what to pass instead) before any step."""
    import bayescomp.distributed as dist_utils

    train, val, _ = cifar_loaders
    bundle = make_bundle(train, val, num_classes=10)
    monkeypatch.setattr(dist_utils, "init_from_env", lambda: None)
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="pass its Dataset instead"):
        fit(model, bundle, TrainConfig(epochs=1), progress=False, log=lambda *_: None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
