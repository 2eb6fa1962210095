"""Your own data: a map-style ``Dataset``, a ``DataLoader`` or a folder of images, streamed batch by batch.

The built-in data sets live in memory as :class:`~bayescomp.data.TensorData`. Everything that reads a split
(training, the threshold search, calibration, the report) uses only four things of it, so any object with them
works:

* ``len(split)``: the number of examples (the KL is scaled by the training set's size, so it must be known);
* ``split.batches(batch_size, shuffle, generator, device)``: (float images, int64 labels) batches;
* ``split.example(n)``: the first ``n`` inputs, to trace and export the model;
* ``split.subset(n, seed)``: ``n`` seeded random examples (the threshold search may use a subset of validation).

:class:`StreamData` gives a ``Dataset`` or a ``DataLoader`` these four, reading examples only when a batch needs
them, so a data set larger than memory trains as well as MNIST does. With a ``Dataset`` the library batches and
shuffles (seeded as for the built-in data, so a resumed run sees the same order); with a ``DataLoader`` the
user's batching, workers, sampler and transforms are used as they are (``batch_size``/``shuffle`` passed by the
library are then ignored: the loader already decided them).

Images may come as float tensors (used as they are: normalised by your transforms or not) or uint8 tensors
(scaled to [0, 1], as the built-in data are). :func:`load_image_folder` reads a folder with one sub-folder per
class (Pillow), carving a validation split (and a test split, if the folder has none) with a seeded permutation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from bayescomp.data import DATASETS, DataBundle, DataError, TensorData, load_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images scaled to [0, 1] (as the built-in data); float images as they are, in float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


def _split_example(item: Any) -> tuple[torch.Tensor, int]:
    """(image tensor, label) of one dataset item; a clear error for anything else."""
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(f"a dataset item must be (image, label), got {type(item).__name__}")
    image, label = item[0], item[1]
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"dataset images must be tensors (add a ToTensor-like transform), got {type(image).__name__}")
    return image, int(label)


class StreamData:
    """A split read from a map-style ``Dataset`` or a ``DataLoader`` one batch at a time (see the module doc).

    Args:
        source: a map-style ``Dataset`` of (image tensor, label) items, or a ``DataLoader`` yielding
            (images, labels) batches.
        num_workers: worker processes of the loaders built for a ``Dataset`` (a ``DataLoader`` keeps its own).
    """

    def __init__(self, source: Dataset | DataLoader, num_workers: int = 0) -> None:
        if isinstance(source, DataLoader):
            self.loader: DataLoader | None = source
            self.dataset = source.dataset
        elif isinstance(source, Dataset):
            self.loader, self.dataset = None, source
        else:
            raise TypeError(f"expected a torch Dataset or DataLoader, got {type(source).__name__}")
        if not hasattr(self.dataset, "__len__"):
            raise TypeError("the dataset must have a length (a map-style Dataset): the KL term is scaled by the "
                            "number of training examples, and the splits are carved by index")
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self, batch_size: int) -> int:
        """Batches per pass: the loader's own count, or ceil(N / batch_size) when the library batches."""
        return len(self.loader) if self.loader is not None else math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 images, int64 labels) batches; the last partial batch is included (as :class:`TensorData`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.loader is not None:
            loader = self.loader
        else:
            order = torch.randperm(len(self), generator=generator).tolist() if shuffle else None
            # own generator: a loader without one draws its workers' base seed from the global RNG, which would
            # shift the posterior noise and make a streamed run differ from the in-memory one
            loader = DataLoader(self.dataset, batch_size=batch_size, sampler=order, num_workers=self.num_workers,
                                generator=torch.Generator().manual_seed(0 if generator is None else generator.initial_seed()))
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError(f"a batch must be (images, labels), got {type(batch).__name__}")
            images, labels = _as_float(batch[0]), torch.as_tensor(batch[1]).long()
            if device is not None:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            yield images, labels

    def example(self, n: int = 2) -> torch.Tensor:
        """The first ``n`` images as the model sees them (stacked, float32)."""
        n = min(n, len(self))
        return torch.stack([_as_float(_split_example(self.dataset[i])[0]) for i in range(n)])

    def subset(self, n: int, seed: int = 0) -> StreamData:
        """``n`` seeded random examples (in their original order), with the same loader settings."""
        if not 1 <= n <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)}, got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
        part = Subset(self.dataset, idx)
        if self.loader is None:
            return StreamData(part, self.num_workers)
        loader = self.loader
        return StreamData(DataLoader(part, batch_size=loader.batch_size or 1, num_workers=loader.num_workers,
                                     collate_fn=loader.collate_fn, pin_memory=loader.pin_memory))

    def labels_seen(self) -> torch.Tensor:
        """Every label of the split (reads the whole split once; used when the class count is not given)."""
        targets = getattr(self.dataset, "targets", None)
        if targets is not None and not isinstance(self.dataset, Subset):
            return torch.as_tensor(targets).long()
        return torch.cat([labels for _, labels in self.batches(256)])


Split = TensorData | StreamData


def as_split(source: Split | Dataset | DataLoader, num_workers: int = 0) -> Split:
    """``TensorData`` / ``StreamData`` as they are; a ``Dataset`` or ``DataLoader`` wrapped in :class:`StreamData`."""
    if isinstance(source, (TensorData, StreamData)):
        return source
    return StreamData(source, num_workers)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Optimiser steps in one pass over ``split`` with the library's batch size (a DataLoader's own count)."""
    count = getattr(split, "num_batches", None)
    return count(batch_size) if count is not None else math.ceil(len(split) / batch_size)


def make_bundle(train: Split | Dataset | DataLoader, val: Split | Dataset | DataLoader,
                test: Split | Dataset | DataLoader | None = None, *, num_classes: int | None = None,
                name: str = "custom", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                class_names: Sequence[str] | None = None, num_workers: int = 0) -> DataBundle:
    """A :class:`~bayescomp.data.DataBundle` from your own splits (``Dataset``, ``DataLoader`` or in-memory).

    ``val`` chooses the pruning thresholds and the fine-tuning; ``test`` (default: ``val``, and the report says
    so through ``name``) is read only for the final figures. ``num_classes`` defaults to the number of distinct
    training labels (read once); ``mean``/``std`` (per input channel) only matter to zoo models built with
    :func:`bayescomp.create_model`, which normalise their input with them (default: 0 and 1, i.e. none: your
    transforms normalised already). The input shape is read from the first training example.
    """
    splits = [as_split(s, num_workers) for s in (train, val, val if test is None else test)]
    if len(splits[0]) == 0 or len(splits[1]) == 0:
        raise ValueError("the training and validation splits must not be empty")
    first = splits[0].example(1)
    input_shape = tuple(int(d) for d in first.shape[1:])
    if num_classes is None:
        labels = splits[0].labels if isinstance(splits[0], TensorData) else splits[0].labels_seen()
        num_classes = int(labels.max()) + 1
    channels = input_shape[0] if len(input_shape) == 3 else 1
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
    return DataBundle(name if test is not None else f"{name} (test = val)", *splits, num_classes=num_classes,
                      input_shape=input_shape, mean=mean, std=std, class_names=names)


class ImageFolder(Dataset):
    """Images in ``root/<class name>/<file>``, read with Pillow on demand as uint8 C x H x W tensors.

    Classes are the sub-folders in sorted order (label i = i-th name). Every image is converted to the mode of
    the first one ("L" grey or "RGB") and, with ``image_size``, resized to it (height, width); without it all
    images must share the first one's size (checked when read, with the file named).
    """

    def __init__(self, root: str | Path, image_size: tuple[int, int] | None = None,
                 classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} not found")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = list(classes) if classes is not None else found
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            if not folder.is_dir():
                raise DataError(f"image folder {self.root} has no class folder {name!r}")
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.samples += [(path, label) for path in files]
        if len(self.classes) < 2 or not self.samples:
            raise DataError(f"image folder {self.root} needs at least two class sub-folders holding images "
                            f"({', '.join(IMAGE_SUFFIXES)}); found classes {self.classes} with "
                            f"{len(self.samples)} images")
        self.targets = [label for _, label in self.samples]
        self.mode, size = self._probe(self.samples[0][0])
        self.size = (image_size[1], image_size[0]) if image_size is not None else size  # Pillow: (w, h)
        self.resize = image_size is not None

    @staticmethod
    def _probe(path: Path) -> tuple[str, tuple[int, int]]:
        from PIL import Image

        try:
            with Image.open(path) as image:
                return ("L" if image.mode in ("L", "1", "I;16", "I", "F", "LA") else "RGB"), image.size
        except OSError as error:
            raise DataError(f"cannot read image {path}: {error}") from None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
                if self.resize:
                    image = image.resize(self.size, Image.BILINEAR)
                elif image.size != self.size:
                    raise DataError(f"image {path} is {image.size[0]}x{image.size[1]} but the folder's first image is "
                                    f"{self.size[0]}x{self.size[1]}; pass image_size (--image-size) to resize")
                array = np.asarray(image, dtype=np.uint8)
        except OSError as error:
            raise DataError(f"cannot read image {path}: {error}") from None
        tensor = torch.from_numpy(array.copy())
        tensor = tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        return tensor, label


def _seeded_split(n: int, size: int, seed: int) -> tuple[list[int], list[int]]:
    """(rest, carved) index lists: ``size`` seeded random indices carved out, both sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[size:].sort().values.tolist(), perm[:size].sort().values.tolist()


def channel_stats(split: Split, limit: int = 1000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of up to ``limit`` seeded training images (in [0, 1])."""
    part = split.subset(min(limit, len(split)), seed)
    images = torch.cat([x for x, _ in part.batches(256)])
    flat = images.transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(flat.mean(1).tolist()), tuple(flat.std(1).clamp_min(1e-6).tolist())


def load_image_folder(root: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                      image_size: tuple[int, int] | None = None, num_workers: int = 0) -> DataBundle:
    """A :class:`~bayescomp.data.DataBundle` from a folder of images (one sub-folder per class).

    With ``root/train`` and ``root/test`` sub-folders, those are the splits (class folders inside each) and the
    validation split is carved from ``train``; otherwise ``root`` holds the class folders and both the test and
    the validation split are carved from it. Carving uses a seeded permutation (``seed``), so the same folder
    gives the same splits on every machine. Mean and std (for zoo models' input normalisation) come from up to
    1000 training images.
    """
    root = Path(root)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        full = ImageFolder(root / "train", image_size)
        test_set: Dataset = ImageFolder(root / "test", image_size, classes=full.classes)
        pool = list(range(len(full)))
    else:
        full = ImageFolder(root, image_size)
        pool, test_idx = _seeded_split(len(full), max(1, round(test_fraction * len(full))), seed + 1)
        test_set = Subset(full, test_idx)
    rest, val_pos = _seeded_split(len(pool), max(1, round(val_fraction * len(pool))), seed)
    if not rest:
        raise DataError(f"image folder {root} has too few images ({len(full)}) to carve validation and test splits")
    train = StreamData(Subset(full, [pool[i] for i in rest]), num_workers)
    val = StreamData(Subset(full, [pool[i] for i in val_pos]), num_workers)
    mean, std = channel_stats(train)
    return make_bundle(train, val, StreamData(test_set, num_workers), num_classes=len(full.classes),
                       name=f"folder:{root.name}", mean=mean, std=std, class_names=full.classes)


def is_image_folder(data: str) -> bool:
    """Whether a ``--data`` value names a folder of images rather than a built-in data set."""
    return data not in DATASETS and ("/" in data or "\\" in data or Path(data).is_dir())


def data_slug(data: str) -> str:
    """A file-name-safe short name of a ``--data`` value (the folder's name for an image folder)."""
    name = Path(data).resolve().name if is_image_folder(data) else data
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "data"


def data_identity(data: str) -> str:
    """What a cached dense model depends on: the data set's name, or an image folder's path and a digest of its
    files (relative path, size, modification time), so an edited folder is not served a stale model."""
    if not is_image_folder(data):
        return data
    root = Path(data).resolve()
    digest = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"folder:{root}:{digest.hexdigest()[:16]}"


def load_data_source(data: str, data_dir: str | Path | None = None, val_size: int = 5000, seed: int = 0,
                     train_subset: int | None = None, test_subset: int | None = None,
                     image_size: Sequence[int] | None = None) -> DataBundle:
    """The splits of a ``--data`` value: a built-in data set (:func:`bayescomp.data.load_dataset`, in memory) or
    an image folder (:func:`load_image_folder`, streamed; ``val_size`` does not apply: 10 % of the images are
    carved for validation), then the seeded train / test subsets."""
    if not is_image_folder(data):
        return load_dataset(data, data_dir, val_size=val_size, seed=seed, train_subset=train_subset,
                            test_subset=test_subset)
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    bundle = load_image_folder(data, seed=seed, image_size=size)
    if train_subset is not None:
        bundle.train = bundle.train.subset(train_subset, seed)
    if test_subset is not None:
        bundle.test = bundle.test.subset(test_subset, seed)
    return bundle
