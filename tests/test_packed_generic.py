"""Packing any module: a user's own layer with parameters, buffers and plain attributes (format version 4).

Such a layer is stored with its tensors and attributes and rebuilt without its constructor, only when the
caller passes (or registers) its class; what cannot be rebuilt is refused at save time with a message naming
the module and attribute; crafted or damaged files are refused (docs/file-format.md, "Own tensors").
"""

from __future__ import annotations

import importlib
import json
import struct
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from test_packed import rewrite
from torch import nn

import bayescomp
from bayescomp.compress.packed import (
    TENSOR_VERSION, TREE_VERSION, PackedFormatError, UntrustedClassError, container_classes, load_packed,
    register_packable, save_packed, unregister_packable,
)
from bayescomp.data import DataBundle, TensorData


class Standardize(nn.Module):
    """A user's input normalisation: ``mean`` / ``std`` buffers, a non-persistent int buffer and plain
    attributes of each stored kind (int, str, float, None, tuple, list)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.channels = len(mean)
        self.label = "standardize"
        self.eps = 1e-6
        self.note = None
        self.view_shape = (1, -1, 1, 1)
        self.history = [[1, 2], [3]]
        self.register_buffer("mean", torch.tensor(mean).view(self.view_shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float64).view(self.view_shape))
        self.register_buffer("calls", torch.tensor([3, 5], dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.std.float() + self.eps)


class LearnedScale(nn.Module):
    """A learned per-channel scale (a parameter), a frozen offset (a parameter without gradients) and a bias
    registered as ``None``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self.offset = nn.Parameter(torch.full((channels,), 0.25, dtype=torch.float16), requires_grad=False)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.scale.view(1, -1, 1, 1) + self.offset.float().view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias


class Net(nn.Module):
    """A small network around the user's layers; it holds a learned parameter of its own next to children."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Standardize([0.5, 0.25], [0.2, 0.4])
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.scaled = LearnedScale(3)
        self.head = nn.Linear(3, 4)
        self.temperature = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.scaled(self.conv(self.norm(x))))
        return self.head(features.mean(dim=(2, 3))) / self.temperature


USER_CLASSES = [Net, Standardize, LearnedScale]


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _saved(tmp_path: Path) -> tuple[Path, Net]:
    model = _net()
    path = tmp_path / "generic.bcz"
    save_packed(model, path, metadata={"name": "generic"})
    return path, model


def test_user_layers_round_trip_to_identical_outputs(tmp_path):
    path, model = _saved(tmp_path)
    loaded, metadata = load_packed(path, classes=USER_CLASSES)
    assert metadata["_packed"]["version"] == TENSOR_VERSION and metadata["name"] == "generic"
    assert type(loaded) is Net and type(loaded.norm) is Standardize and type(loaded.scaled) is LearnedScale
    assert not loaded.training and not loaded.norm.training
    x = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    ours, theirs = loaded.state_dict(), model.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    assert "norm.calls" not in ours and torch.equal(loaded.norm.calls, torch.tensor([3, 5]))
    assert loaded.norm.std.dtype == torch.float64 and loaded.scaled.offset.dtype == torch.float16
    assert isinstance(loaded.temperature, nn.Parameter) and loaded.temperature.requires_grad
    assert loaded.scaled.scale.requires_grad and not loaded.scaled.offset.requires_grad
    assert loaded.scaled.bias is None and "bias" in dict(loaded.scaled._parameters)
    for name in ("channels", "label", "eps", "note", "view_shape", "history"):
        assert getattr(loaded.norm, name) == getattr(model.norm, name), name
        assert type(getattr(loaded.norm, name)) is type(getattr(model.norm, name)), name
    again = tmp_path / "again.bcz"  # the rebuilt model writes the same bytes
    save_packed(loaded, again, metadata={"name": "generic"})
    assert again.read_bytes() == path.read_bytes()
    assert set(container_classes(model)) == set(USER_CLASSES)


def test_models_without_own_tensors_keep_their_version(tmp_path):
    path = tmp_path / "plain.bcz"
    save_packed(nn.Sequential(nn.Sequential(nn.Linear(2, 3)), nn.ReLU()), path)
    assert load_packed(path)[1]["_packed"]["version"] == TREE_VERSION
    assert b'"tensors"' not in path.read_bytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
                                   torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool])
def test_every_stored_dtype_round_trips_exactly(tmp_path, dtype):
    values = torch.tensor([[3.5, 0.0, 1.0], [2.25, 7.0, 100.0]])
    norm = Standardize([0.0], [1.0])
    norm.register_buffer("extra", values.to(dtype))
    norm.register_buffer("scalar", torch.tensor(5).to(dtype))
    path = tmp_path / "dtype.bcz"
    save_packed(nn.Sequential(norm), path)
    loaded = load_packed(path, classes=[Standardize])[0][0]
    for name in ("extra", "scalar"):
        got, expected = getattr(loaded, name), getattr(norm, name)
        assert got.dtype == dtype and got.shape == expected.shape and torch.equal(got, expected), name


def test_loading_needs_the_users_classes(tmp_path):
    path, model = _saved(tmp_path)
    with pytest.raises(UntrustedClassError, match=r"test_packed_generic\.Net") as info:
        load_packed(path)
    assert "classes=[Net]" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(UntrustedClassError, match=r"test_packed_generic\.Standardize") as info:
        bayescomp.load(path, classes=[Net])
    assert "classes=[Standardize]" in str(info.value)
    register_packable(Standardize)
    register_packable(LearnedScale)
    try:
        assert type(bayescomp.load(path, classes=[Net]).norm) is Standardize
    finally:
        unregister_packable(Standardize)
        unregister_packable(LearnedScale)
    with pytest.raises(UntrustedClassError):
        load_packed(path, classes=[Net])


def test_crafted_class_name_is_refused_without_importing_it(tmp_path, monkeypatch):
    """A CRC-valid file whose tensor-holding node names a module that would write a marker file on import: the
    loader refuses it by name and never imports it."""
    marker = tmp_path / "imported.marker"
    (tmp_path / "bcz_generic_payload.py").write_text(
        "from pathlib import Path\nfrom torch import nn\n"
        f"Path({str(marker)!r}).write_text('payload ran')\n"
        "class Evil(nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path, _ = _saved(tmp_path)

    def name_payload(header: dict) -> None:
        node = dict(header["tree"]["children"])["norm"]
        assert "tensors" in node
        node["class"] = "bcz_generic_payload.Evil"

    rewrite(path, name_payload)
    for load in (load_packed, bayescomp.load):  # no classes passed: the root class is refused first
        with pytest.raises(UntrustedClassError, match=r"test_packed_generic\.Net"):
            load(path)
    with pytest.raises(UntrustedClassError, match=r"bcz_generic_payload\.Evil") as info:
        load_packed(path, classes=USER_CLASSES)
    assert "classes=[Evil]" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists() and "bcz_generic_payload" not in sys.modules
    importlib.import_module("bcz_generic_payload")  # the payload is live: loading avoided this
    assert marker.exists()
    monkeypatch.delitem(sys.modules, "bcz_generic_payload")


class Flexible(nn.Module):
    """A layer with a buffer whose other attributes a test sets."""

    def __init__(self, **attrs: object) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(2))
        for key, value in attrs.items():
            setattr(self, key, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


class TensorHolder(nn.Module):
    """A container without tensors of its own that keeps a tensor in a plain attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)
        self.table = torch.ones(2)


@pytest.mark.parametrize("module, expected", [
    (Flexible(activation=torch.relu), r"'1' \(Flexible\): attribute 'activation' holds a .*make it a plain"),
    (Flexible(options={"a": 1}), r"attribute 'options' holds a dict,.*classes=\[Flexible\]"),
    (Flexible(sizes=(1, [2, 3])), r"attribute 'sizes' mixes lists and tuples"),
    (Flexible(_eps=1e-5), r"attribute '_eps' is private.*rename it to 'eps'"),
    (Flexible(offset=torch.zeros(2)), r"'offset' is a tensor.*self\.register_buffer\('offset', tensor\)"),
    (TensorHolder(), r"'1' \(TensorHolder\): attribute 'table' is a tensor.*register_buffer"),
])
def test_what_cannot_be_stored_is_refused_at_save_time(tmp_path, module, expected):
    path = tmp_path / "refused.bcz"
    with pytest.raises(ValueError, match=expected):
        save_packed(nn.Sequential(nn.Linear(2, 2), module), path)
    assert not path.exists()


def test_unsupported_dtype_and_unimportable_class_are_named(tmp_path):
    path = tmp_path / "refused.bcz"
    complex_buffer = Flexible()
    complex_buffer.register_buffer("code", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"'0' \(Flexible\): buffer 'code': a torch\.complex64 tensor"):
        save_packed(nn.Sequential(complex_buffer), path)

    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(2))

    with pytest.raises(ValueError, match=r"own tensors.*not importable.*module level"):
        save_packed(nn.Sequential(Local()), path)
    assert not path.exists()


def test_torch_layers_outside_the_table_load_when_passed(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].weight.normal_()
        model[1].bias.normal_()
    path = tmp_path / "layer_norm.bcz"
    save_packed(model, path)
    with pytest.raises(UntrustedClassError, match="LayerNorm"):
        load_packed(path)
    loaded = load_packed(path, classes=[nn.LayerNorm])[0]
    assert type(loaded[1]) is nn.LayerNorm and loaded[1].normalized_shape == (6,)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match=r"'0' \(Conv1d\): attribute '_reversed_padding_repeated_twice' is "
                                         r"private.*if torch's Conv1d sets it"):
        save_packed(nn.Sequential(nn.Conv1d(2, 2, 3)), tmp_path / "conv1d.bcz")


def _norm_tensor(name: str, key: str, value: object) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        dict(header["tree"]["children"])["norm"]["tensors"][name][key] = value
    return edit


def _rename_tensor(old: str, new: str) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        tensors = dict(header["tree"]["children"])["norm"]["tensors"]
        tensors[new] = tensors.pop(old)
    return edit


def _damage_bool(header: dict, data: bytearray) -> None:
    entry = dict(header["tree"]["children"])["norm"]["tensors"]["mean"]
    entry.update(dtype="bool", shape=[entry["length"]])
    data[entry["offset"]] = 2


@pytest.mark.parametrize("edit_header, edit_data, message", [
    (_norm_tensor("mean", "length", 4), None, r"float32 blob of shape \[1, 2, 1, 1\] has 4 bytes, expected"),
    (_norm_tensor("std", "shape", [1, 3, 1, 1]), None, r"float64 blob of shape \[1, 3, 1, 1\] has 16 bytes"),
    (_norm_tensor("std", "shape", [-2, -1]), None, "non-negative"),
    (_norm_tensor("mean", "offset", 10**9), None, "outside the"),
    (_norm_tensor("mean", "dtype", "complex128"), None, "unknown tensor dtype 'complex128'"),
    (_norm_tensor("mean", "kind", "weight"), None, "kind 'weight'"),
    (_norm_tensor("mean", "device", "meta"), None, r"'device' are not defined for a buffer"),
    (_norm_tensor("calls", "requires_grad", True), None, r"'requires_grad' are not defined for a buffer"),
    (_norm_tensor("calls", "persistent", "no"), None, "must be true or false"),
    (_rename_tensor("mean", "forward"), None, "would replace a member"),
    (_rename_tensor("mean", "label"), None, "would replace"),
    (_rename_tensor("mean", "__class__"), None, "not an identifier"),
    (None, _damage_bool, "bytes other than 0 and 1"),
])
def test_crafted_tensor_entries_are_refused(tmp_path, edit_header, edit_data, message):
    path, _ = _saved(tmp_path)
    rewrite(path, edit_header, edit_data)
    with pytest.raises(PackedFormatError, match=message) as info:
        load_packed(path, classes=USER_CLASSES)
    assert str(path) in str(info.value)


def test_integer_parameter_requiring_gradients_and_version_3_tensors_are_refused(tmp_path):
    path, _ = _saved(tmp_path)

    def integer_scale(header: dict) -> None:
        dict(header["tree"]["children"])["scaled"]["tensors"]["scale"].update(dtype="int32")

    rewrite(path, integer_scale)
    with pytest.raises(PackedFormatError, match="cannot require gradients"):
        load_packed(path, classes=USER_CLASSES)
    path, _ = _saved(tmp_path)
    rewrite(path, version=TREE_VERSION)  # a version-3 reader would build the layers without their tensors
    with pytest.raises(PackedFormatError, match=r"'tensors'.* not defined in a version-3 file"):
        load_packed(path, classes=USER_CLASSES)


def test_corrupted_tensor_blob_is_detected(tmp_path):
    path, _ = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    header_len = struct.unpack_from("<I", raw, 6)[0]
    header = json.loads(raw[18:18 + header_len])
    entry = dict(header["tree"]["children"])["norm"]["tensors"]["mean"]
    raw[18 + header_len + entry["offset"]] ^= 0x40  # one bit of the stored mean
    path.write_bytes(bytes(raw))
    with pytest.raises(PackedFormatError, match="checksum") as info:
        load_packed(path, classes=USER_CLASSES)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------- through the public one-call verb


class InputStats(nn.Module):
    """A user's input normalisation held in buffers (what ``bayescomp.modules.Normalize`` does as a leaf)."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.kind = "mnist-like"
        self.register_buffer("mean", torch.tensor([[[[mean]]]]))
        self.register_buffer("std", torch.tensor([[[[std]]]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stats = InputStats(0.4, 0.3)
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(self.stats(x)))
        x = torch.relu(x + self.conv(x))
        return self.head(x.mean(dim=(2, 3)))


def _tiny_bundle() -> DataBundle:
    """Synthetic 8 x 8 images whose label is whether the left half is brighter than the right."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorData:
        images = torch.randint(0, 256, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)
        labels = (images[..., :4].float().mean((1, 2, 3)) > images[..., 4:].float().mean((1, 2, 3))).long()
        return TensorData(images, labels)

    return DataBundle(name="tiny", train=split(128), val=split(64), test=split(64), num_classes=2,
                      input_shape=(1, 8, 8), mean=(0.5,), std=(0.29,), class_names=("right", "left"))


def test_compress_model_saves_a_user_layer_with_buffers(tmp_path):
    torch.manual_seed(0)
    data = _tiny_bundle()
    result = bayescomp.compress_model(SmallResidual(), data, "gnj", epochs=1, log=lambda *_: None)
    path = tmp_path / "mine.bcz"
    assert result.save(path) == path.stat().st_size
    with pytest.raises(UntrustedClassError, match="InputStats"):
        bayescomp.load(path, classes=[SmallResidual])
    loaded = bayescomp.load(path, classes=[SmallResidual, InputStats])
    assert type(loaded.stats) is InputStats and loaded.stats.kind == "mnist-like"
    assert torch.equal(loaded.stats.mean, torch.tensor([[[[0.4]]]]))
    images = data.test.example(16)
    with torch.no_grad():
        expected = result.quantized_model.eval()(images)
        torch.testing.assert_close(loaded(images), expected, rtol=1e-5, atol=1e-5)
