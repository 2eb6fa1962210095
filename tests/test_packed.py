"""The packed file format: exact round trips, size close to the bit accounting, clear errors on bad files."""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from bayescomp.compress.packed import (
    PackedFormatError, QuantSpec, load_packed, pack_uint, packed_layer_bits, packed_layer_info, save_packed,
    sparse_weight_bytes, unpack_uint,
)
from bayescomp.measure import state_dict_size_bytes
from bayescomp.modules import InputSelect, Normalize


def quantized(model: nn.Sequential, quant: dict[int, QuantSpec]) -> nn.Sequential:
    """A copy whose quantised layers sit on their grid (floor(w / step + 0.5) * step, in float32)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for index, spec in quant.items():
            weight = out[index].weight
            weight.copy_(torch.floor(weight / spec.step + 0.5) * spec.step)
    return out


def conv_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        Normalize([0.5, 0.4], [0.2, 0.3]),
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
    )
    bn = model[2]
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
        bn.num_batches_tracked.fill_(7)
    return model.eval()


def mlp_model() -> nn.Sequential:
    torch.manual_seed(1)
    indices = torch.sort(torch.randperm(64)[:40]).values
    return nn.Sequential(
        Normalize([0.3], [0.25]), InputSelect(indices, 64), nn.Linear(40, 32), nn.Tanh(), nn.Dropout(0.3),
        nn.Linear(32, 8, bias=False), nn.Identity(),
    ).eval()


@pytest.mark.parametrize("steps", [(2**-3, 2**-8, 2**-12), (2**-12, 2**-3, 2**-8), (0.3, 2**-8, 0.01)])
def test_round_trip_conv_model_is_exact(tmp_path, steps):
    model = conv_model()
    quant = {1: QuantSpec(steps[0]), 4: QuantSpec(steps[1]), 8: QuantSpec(steps[2])}
    reference = quantized(model, quant)
    x = torch.rand(5, 2, 14, 14)
    path = tmp_path / "model.bcpk"
    written = save_packed(model, path, quant, metadata={"name": "conv", "values": [1, 2.5]})
    assert written == path.stat().st_size
    loaded, metadata = load_packed(path)
    assert not loaded.training
    assert [type(m) for m in loaded] == [type(m) for m in model]
    assert metadata["name"] == "conv" and metadata["values"] == [1, 2.5]
    assert set(metadata["_packed"]["bits"]) == {1, 4, 8}
    assert metadata["_packed"]["bits"] == packed_layer_bits(path)
    for index in quant:
        assert torch.equal(loaded[index].weight, reference[index].weight)
    for ours, theirs in zip(loaded.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(ours, theirs)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert loaded[4].groups == 2 and loaded[4].stride == (2, 2) and loaded[4].bias is None
    assert loaded[0].mean == model[0].mean and loaded[5].negative_slope == 0.1

    # saving the already-quantised model gives the same file content
    again = tmp_path / "again.bcpk"
    save_packed(reference, again, quant, metadata={"name": "conv", "values": [1, 2.5]})
    assert again.read_bytes() == path.read_bytes()


def test_round_trip_mlp_with_input_select_and_float_layers(tmp_path):
    model = mlp_model()
    path = tmp_path / "mlp.bcpk"
    quant = {2: QuantSpec(2**-5)}
    save_packed(model, path, quant)
    loaded, metadata = load_packed(path)
    reference = quantized(model, quant)
    assert torch.equal(loaded[1].indices, model[1].indices) and loaded[1].in_features == 64
    assert torch.equal(loaded[5].weight, model[5].weight)  # not quantised: raw float32
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert metadata["_packed"]["bits"] == {2: packed_layer_bits(path)[2]}


def test_bit_width_is_minimal():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-3.0, -1.0, 0.0, 4.0], [1.0, 2.0, 3.0, -2.0]]))
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.bcpk")
        save_packed(model, path, {0: QuantSpec(1.0)})
        assert packed_layer_bits(path) == {0: 3}  # codes -3..4: 8 values, 3 bits
        loaded, _ = load_packed(path)
        assert torch.equal(loaded[0].weight, model[0].weight)
        save_packed(nn.Sequential(nn.Linear(3, 1, bias=False).requires_grad_(False)), path,
                    {0: QuantSpec(1e6)})
        assert packed_layer_bits(path) == {0: 1}  # every code 0: at least one bit


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 13, 31])
def test_pack_unpack_inverse(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=1001, dtype=np.uint64)
    blob = pack_uint(values, bits)
    assert len(blob) == (values.size * bits + 7) // 8
    assert np.array_equal(unpack_uint(blob, values.size, bits), values)


def test_file_size_matches_bit_accounting(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    with torch.no_grad():  # weights in [-1, 1): 4-bit codes at step 2^-3 (16 values)
        for layer in (model[1], model[3], model[5]):
            layer.weight.uniform_(-1.0, 1.0 - 2**-3)
    quant = {i: QuantSpec(2**-3) for i in (1, 3, 5)}
    path = tmp_path / "lenet300.bcpk"
    size = save_packed(model, path, quant)
    bits = packed_layer_bits(path)
    assert bits == {1: 4, 3: 4, 5: 4}
    weight_bytes = sum(model[i].weight.numel() * bits[i] / 8 for i in bits)
    bias_bytes = sum(4 * model[i].bias.numel() for i in bits)
    header_slack = 1024 + 48 * len(bits)  # JSON header; version 2 adds "encoding" and "nnz" per weight
    assert size <= weight_bytes + bias_bytes + header_slack
    assert size >= weight_bytes + bias_bytes
    assert state_dict_size_bytes(model) > 7 * size  # float32 would be 8x the 4-bit weights


def _saved(tmp_path) -> tuple[str, bytes]:
    path = tmp_path / "victim.bcpk"
    save_packed(conv_model(), path, {1: QuantSpec(2**-6)})
    return str(path), path.read_bytes()


def test_flipped_byte_is_detected(tmp_path):
    path, raw = _saved(tmp_path)
    corrupt = bytearray(raw)
    corrupt[len(raw) // 2] ^= 0x5A
    with open(path, "wb") as handle:
        handle.write(corrupt)
    with pytest.raises(PackedFormatError, match="checksum") as info:
        load_packed(path)
    assert path in str(info.value)


@pytest.mark.parametrize("keep", [0, 3, 12, 100, -1])
def test_truncated_file_is_detected(tmp_path, keep):
    path, raw = _saved(tmp_path)
    with open(path, "wb") as handle:
        handle.write(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(PackedFormatError, match="truncated") as info:
        load_packed(path)
    assert path in str(info.value)


def test_wrong_magic_and_version_are_detected(tmp_path):
    path, raw = _saved(tmp_path)
    with open(path, "wb") as handle:
        handle.write(b"PK\x03\x04" + raw[4:])
    with pytest.raises(PackedFormatError, match="magic") as info:
        load_packed(path)
    assert path in str(info.value)
    with open(path, "wb") as handle:
        handle.write(raw[:4] + (99).to_bytes(2, "little") + raw[6:])
    with pytest.raises(PackedFormatError, match="version 99"):
        load_packed(path)


def test_unknown_module_type_in_file_is_detected(tmp_path):
    import json
    import struct
    import zlib

    path, raw = _saved(tmp_path)
    header_len = struct.unpack_from("<I", raw, 6)[0]
    header = json.loads(raw[18:18 + header_len])
    header["modules"][3]["type"] = "Softmax2000"
    new_header = json.dumps(header).encode()
    body = raw[:6] + struct.pack("<I", len(new_header)) + raw[10:18] + new_header + raw[18 + header_len:-4]
    with open(path, "wb") as handle:
        handle.write(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(PackedFormatError, match="Softmax2000") as info:
        load_packed(path)
    assert path in str(info.value) and "module 3" in str(info.value)


def test_unsupported_module_raises_value_error(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x

    path = tmp_path / "bad.bcpk"
    with pytest.raises(ValueError, match="Custom") as info:
        save_packed(nn.Sequential(nn.Linear(2, 2), Custom()), path)
    assert "Linear" in str(info.value) and "Conv2d" in str(info.value)  # lists the supported types
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2))

    with pytest.raises(ValueError, match="own tensors"):
        save_packed(nn.Sequential(nn.Linear(2, 2), Scaled()), path)
    with pytest.raises(ValueError, match="only Linear and Conv2d"):
        save_packed(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), path, {1: QuantSpec(0.5)})
    with pytest.raises(ValueError, match="reserved"):
        save_packed(nn.Sequential(nn.Linear(2, 2)), path, metadata={"_packed": 1})
    with pytest.raises(ValueError, match="positive"):
        QuantSpec(0.0)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "model.bcpk"
    model = conv_model()
    save_packed(model, path, {1: QuantSpec(2**-4)})
    first = path.read_bytes()
    save_packed(model, path, {1: QuantSpec(2**-8)})  # overwrite in place
    assert os.listdir(path.parent) == ["model.bcpk"]
    assert path.read_bytes() != first
    with pytest.raises(ValueError, match="JSON"):
        save_packed(model, path, metadata={"bad": object()})
    assert os.listdir(path.parent) == ["model.bcpk"]  # failed save: old file intact, nothing left over
    load_packed(path)


# --------------------------------------------------------------------------------------------- sparse weights


def prune(model: nn.Sequential, keep: float, seed: int) -> nn.Sequential:
    """Zero all but a fraction ``keep`` of every Linear/Conv2d weight by multiplying with a random 0/1 mask
    (as pruning code does; negative weights become -0.0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                mask = (torch.rand(module.weight.shape, generator=generator) < keep).float()
                module.weight.mul_(mask)
    return model


def sparse_model() -> nn.Sequential:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 4 * 4, 300), nn.ReLU(), nn.Linear(300, 10))
    return prune(model, 0.01, seed=4).eval()


def gap_bytes(positions: np.ndarray) -> int:
    """Bytes of gap-coded positions, computed here independently: zeros skipped before each non-zero, at the
    bit width of the largest gap."""
    if positions.size == 0:
        return 0
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    width = max(1, int(gaps.max()).bit_length())
    return math.ceil(positions.size * width / 8)


def expected_sizes(weight: torch.Tensor, step: float | None) -> dict[str, int]:
    """Bytes of the three encodings of a weight, from the format description."""
    if step is None:
        flat = weight.detach().reshape(-1)
        nonzero = flat != 0
        dense, values = 4 * flat.numel(), 4 * int(nonzero.sum())
    else:
        flat = torch.floor(weight.detach().reshape(-1) / step + 0.5).long()
        nonzero = flat != 0
        dense = math.ceil(flat.numel() * max(1, int(flat.max() - flat.min()).bit_length()) / 8)
        kept = flat[nonzero]
        width = max(1, int(kept.max() - kept.min()).bit_length()) if kept.numel() else 1
        values = math.ceil(kept.numel() * width / 8)
    positions = torch.nonzero(nonzero).reshape(-1).numpy()
    return {"dense": dense, "sparse_mask": math.ceil(flat.numel() / 8) + values,
            "sparse_gaps": gap_bytes(positions) + values}


@pytest.mark.parametrize("quantise", [False, True])
def test_sparse_round_trip(tmp_path, quantise):
    model = sparse_model()
    quant = {i: QuantSpec(2**-7) for i in (0, 2, 5, 7)} if quantise else {}
    reference = quantized(model, quant)
    path = tmp_path / "sparse.bcpk"
    save_packed(model, path, quant)
    loaded, metadata = load_packed(path)
    info = packed_layer_info(path)
    assert set(info) == {0, 2, 5, 7}
    for index in info:
        assert info[index]["encoding"] != "dense"
        assert info[index]["nnz"] == int(torch.count_nonzero(reference[index].weight))
        assert metadata["_packed"]["encodings"][index] == info[index]["encoding"]
        assert torch.equal(loaded[index].weight, reference[index].weight)
        nonzero = reference[index].weight != 0
        assert torch.equal(loaded[index].weight[nonzero].view(torch.int32),  # bit for bit
                           reference[index].weight[nonzero].view(torch.int32))
        assert torch.equal(loaded[index].weight[~nonzero].view(torch.int32),  # +0.0, also where -0.0 was
                           torch.zeros(int((~nonzero).sum()), dtype=torch.int32))
    assert metadata["_packed"]["version"] == 2
    assert sorted(metadata["_packed"]["bits"]) == (sorted(quant) if quantise else [])
    for ours, theirs in zip(loaded.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(ours, theirs)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_sparse_file_is_small(tmp_path):
    step = 2**-7
    generator = torch.Generator().manual_seed(5)
    layer = nn.Linear(800, 500)
    numel, nnz = layer.weight.numel(), layer.weight.numel() // 100
    positions = torch.randperm(numel, generator=generator)[:nnz].sort().values
    signs = 1 - 2 * torch.randint(0, 2, (nnz,), generator=generator)
    codes = torch.randint(1, 128, (nnz,), generator=generator) * signs
    codes[:2] = torch.tensor([-128, 127])  # codes -128..127 without 0: 8 bits each
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight.view(-1)[positions] = codes.float() * step
    model = nn.Sequential(layer)
    sparse_path, dense_path = tmp_path / "sparse.bcpk", tmp_path / "dense.bcpk"
    size = save_packed(model, sparse_path, {0: QuantSpec(step)})
    filled = copy.deepcopy(model)
    with torch.no_grad():  # the same layer with every entry non-zero: stored dense at 8 bits
        filled[0].weight.copy_(torch.where(layer.weight == 0, step, layer.weight))
    dense_size = save_packed(filled, dense_path, {0: QuantSpec(step)})
    assert packed_layer_info(dense_path)[0]["encoding"] == "dense"
    assert dense_size >= numel  # 8 bits per weight
    assert size < dense_size / 20

    info = packed_layer_info(sparse_path)[0]
    assert info["encoding"] == "sparse_gaps" and info["nnz"] == nnz and info["bits"] == 8
    bound = gap_bytes(positions.numpy()) + nnz * 8 // 8
    assert info["weight_bytes"] <= bound + 2
    assert info["weight_bytes"] == sparse_weight_bytes(layer.weight, step)
    # close to the information content: log2(numel choose nnz) bits for the positions + 8 bits per value
    entropy_bytes = (math.lgamma(numel + 1) - math.lgamma(nnz + 1) - math.lgamma(numel - nnz + 1)) \
        / math.log(2) / 8 + nnz
    assert info["weight_bytes"] < 1.3 * entropy_bytes
    assert size <= info["weight_bytes"] + 4 * 500 + 1024  # bias and header on top
    loaded, _ = load_packed(sparse_path)
    assert torch.equal(loaded[0].weight, layer.weight)


def _weights_for_choice() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    base = torch.empty(120, 90).uniform_(-1, 1, generator=generator)
    rand = torch.rand(base.shape, generator=generator)
    return {
        "dense": torch.where(rand < 0.01, 0.0, base),  # 1 % zeros (float32: a mask pays off from 1/32)
        "half": torch.where(rand < 0.5, 0.0, base),  # 50 % zeros
        "sparse": torch.where(rand < 0.995, 0.0, base),  # 0.5 % non-zeros
        "zero": torch.zeros_like(base),
    }


@pytest.mark.parametrize("step", [None, 2**-3])
def test_chosen_encoding_is_the_smallest(tmp_path, step):
    expected_encoding = {"dense": "dense", "half": "sparse_mask", "sparse": "sparse_gaps",
                         "zero": "sparse_gaps"}
    for name, weight in _weights_for_choice().items():
        layer = nn.Linear(90, 120, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        path = tmp_path / f"{name}.bcpk"
        quant = {0: QuantSpec(step)} if step is not None else {}
        save_packed(nn.Sequential(layer), path, quant)
        info = packed_layer_info(path)[0]
        sizes = expected_sizes(weight, step)
        assert info["weight_bytes"] == min(sizes.values()) == sparse_weight_bytes(weight, step), name
        assert info["encoding"] == expected_encoding[name], (name, sizes)
        assert info["index_bytes"] + info["value_bytes"] == info["weight_bytes"]
        loaded, _ = load_packed(path)
        reference = quantized(nn.Sequential(layer), quant)[0].weight
        assert torch.equal(loaded[0].weight, reference), name
    assert packed_layer_info(tmp_path / "zero.bcpk")[0]["weight_bytes"] == 0


def rewrite(path: Path, edit_header: Callable[[dict], None] | None = None,
            edit_data: Callable[[dict, bytearray], None] | None = None, version: int | None = None) -> None:
    """Change a packed file's header, data or version and write it back with a valid CRC (as a bug in another
    writer, not disk corruption, would)."""
    raw = path.read_bytes()
    magic, old_version, header_len, data_len = struct.unpack_from("<4sHIQ", raw)
    header = json.loads(raw[18:18 + header_len])
    data = bytearray(raw[18 + header_len:18 + header_len + data_len])
    if edit_header is not None:
        edit_header(header)
    if edit_data is not None:
        edit_data(header, data)
    new_header = json.dumps(header).encode()
    body = struct.pack("<4sHIQ", magic, old_version if version is None else version, len(new_header),
                       len(data)) + new_header + bytes(data)
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_version_1_files_still_load(tmp_path):
    model = conv_model()
    quant = {1: QuantSpec(2**-3), 8: QuantSpec(2**-8)}  # layer 4 stays float32
    path = tmp_path / "v1.bcpk"
    save_packed(model, path, quant, metadata={"name": "old"})
    current, _ = load_packed(path)
    info = packed_layer_info(path)
    assert {i["encoding"] for i in info.values()} == {"dense"}

    def to_version_1(header: dict) -> None:  # version-1 weight entries had no encoding and no nnz
        for spec in header["modules"]:
            for entry in spec.get("blobs", {}).values():
                entry.pop("encoding", None)
                entry.pop("nnz", None)

    rewrite(path, to_version_1, version=1)
    assert b'"encoding"' not in path.read_bytes()
    loaded, metadata = load_packed(path)
    assert metadata["name"] == "old" and metadata["_packed"]["version"] == 1
    assert metadata["_packed"]["encodings"] == {1: "dense", 4: "dense", 8: "dense"}
    assert packed_layer_bits(path) == {1: info[1]["bits"], 8: info[8]["bits"]}
    assert packed_layer_info(path) == info  # nnz counted from the weights
    for ours, theirs in zip(loaded.state_dict().values(), current.state_dict().values()):
        assert torch.equal(ours, theirs)

    def sneak_sparse(header: dict) -> None:
        header["modules"][8]["blobs"]["weight"]["encoding"] = "sparse_gaps"

    rewrite(path, sneak_sparse)
    with pytest.raises(PackedFormatError, match="version-1"):
        load_packed(path)


def _sparse_victim(tmp_path) -> tuple[Path, bytes]:
    """A file with a gap-coded float32 layer (0) and a mask-coded quantised layer (1)."""
    generator = torch.Generator().manual_seed(7)
    gapped, masked = nn.Linear(100, 60, bias=False), nn.Linear(20, 10)
    with torch.no_grad():
        gapped.weight.zero_()
        positions = torch.cat([torch.randperm(5999, generator=generator)[:29], torch.tensor([5999])])
        gapped.weight.view(-1)[positions] = torch.rand(30, generator=generator) + 0.5  # last index non-zero
        masked.weight.mul_((torch.rand(masked.weight.shape, generator=generator) < 0.5).float())
    path = tmp_path / "victim.bcpk"
    save_packed(nn.Sequential(gapped, masked), path, {1: QuantSpec(2**-6)})
    encodings = {i: v["encoding"] for i, v in packed_layer_info(path).items()}
    assert encodings == {0: "sparse_gaps", 1: "sparse_mask"}
    return path, path.read_bytes()


def _set(index: int, key: str, value) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        header["modules"][index]["blobs"]["weight"][key] = value
    return edit


def _shift_nnz(index: int, delta: int) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        header["modules"][index]["blobs"]["weight"]["nnz"] += delta
    return edit


def _max_gaps(header: dict, data: bytearray) -> None:
    """Every gap at its largest value: positions then run past the end of the weight."""
    entry = header["modules"][0]["blobs"]["weight"]
    start = entry["offset"]
    data[start:start + entry["index_length"]] = b"\xff" * entry["index_length"]


def _flip_mask_bit(header: dict, data: bytearray) -> None:
    entry = header["modules"][1]["blobs"]["weight"]
    data[entry["offset"]] ^= 0x80  # one more or one fewer position than nnz says


@pytest.mark.parametrize("edit_header, edit_data, message", [
    (_set(0, "nnz", 6001), None, "out of range"),
    (_set(0, "nnz", -1), None, "out of range"),
    (_shift_nnz(0, 8), None, r"38 gaps at \d+ bits have"),
    (_shift_nnz(1, -1), None, "mask marks"),
    (_set(0, "index_length", 10**6), None, "index_length"),
    (_set(0, "index_length", -3), None, "index_length"),
    (_set(0, "gap_bits", 0), None, "gap width"),
    (_set(0, "gap_bits", 65), None, "gap width"),
    (_set(1, "bits", 0), None, "bit width"),
    (_set(1, "offset_code", 2**70), None, "OverflowError"),
    (_set(0, "encoding", "sparse_rle"), None, "unknown weight encoding"),
    (_set(0, "shape", [600, 10]), None, "does not fit"),
    (_set(0, "gap_bits", None), None, "malformed"),
    (None, _max_gaps, "past the end"),
    (None, _flip_mask_bit, "mask marks"),
])
def test_malformed_sparse_weight_is_detected(tmp_path, edit_header, edit_data, message):
    path, _ = _sparse_victim(tmp_path)
    rewrite(path, edit_header, edit_data)
    with pytest.raises(PackedFormatError, match=message) as info:
        load_packed(path)
    assert str(path) in str(info.value)


def test_dense_nnz_mismatch_and_bad_info_entry_are_detected(tmp_path):
    path = tmp_path / "dense.bcpk"
    for edit, call, message in [(_shift_nnz(5, 1), load_packed, "header says nnz"),
                                (_set(2, "encoding", "zip"), packed_layer_info, "unknown weight encoding"),
                                (_set(2, "shape", "oops"), packed_layer_info, "malformed")]:
        save_packed(mlp_model(), path, {2: QuantSpec(2**-5)})
        rewrite(path, edit)
        with pytest.raises(PackedFormatError, match=message):
            call(path)


def test_sparse_weight_bytes_validates_step():
    with pytest.raises(ValueError, match="positive"):
        sparse_weight_bytes(torch.ones(3, 3), 0.0)
    assert sparse_weight_bytes(torch.ones(3, 3), None) == 36
    assert sparse_weight_bytes(torch.zeros(3, 3), 0.5) == 0


# ---------------------------------------------------------------------------------------- committed files

COMMITTED_FILES = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").rglob("*.bcz"))


def _example_input(model: nn.Module) -> torch.Tensor:
    """Random images of the model's data set: 3 x 32 x 32 (CIFAR-10) or 1 x 28 x 28 (MNIST, Fashion-MNIST),
    read off the input channels of the first convolution (a model without one is an MNIST MLP)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = 1 if conv is None else conv.in_channels
    side = 32 if channels == 3 else 28
    return torch.rand(4, channels, side, side, generator=torch.Generator().manual_seed(0))


def test_committed_files_are_found():
    assert COMMITTED_FILES, "no .bcz under benchmarks/results: the test below would check nothing"


@pytest.mark.parametrize("path", COMMITTED_FILES, ids=lambda p: p.name)
def test_committed_file_rebuilds_and_writes_back_identically(path, tmp_path):
    """Every committed .bcz loads; writing the loaded model again with the file's own steps and metadata gives
    the same bytes (versions 2 and 3: the writer and reader agree with whatever wrote the file), and the model
    read back from that copy has the same tensors and outputs (version 1, whose copy is written as version 2)."""
    model, metadata = load_packed(path)
    packed = metadata.pop("_packed")
    again = tmp_path / "again.bcz"
    save_packed(model, again, {index: QuantSpec(step) for index, step in packed["steps"].items()}, metadata)
    if packed["version"] >= 2:
        assert again.read_bytes() == path.read_bytes()
    reloaded, _ = load_packed(again)
    assert type(reloaded) is type(model)
    ours, theirs = model.state_dict(), reloaded.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = _example_input(model)
    with torch.no_grad():
        out = model(x)
        assert torch.isfinite(out).all() and torch.equal(out, reloaded(x))


# ------------------------------------------------------------- loading never runs code named in the file


class TwoBranch(nn.Module):
    """A user's container: a residual branch scaled by a plain attribute (stored in the file's module tree)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 0.5
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.scale * self.body(x))


def _tree_file(tmp_path: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(3)
    model = TwoBranch().eval()
    path = tmp_path / "user.bcz"
    save_packed(model, path, {0: QuantSpec(2**-6)})
    return path, model


def test_file_naming_a_module_outside_the_allowlist_is_refused_without_importing_it(tmp_path, monkeypatch):
    """A crafted file with a valid CRC names a class in a module whose import would write a marker file: the
    loader refuses it by name, and the module is never imported."""
    import importlib
    import sys

    import bayescomp

    marker = tmp_path / "imported.marker"
    (tmp_path / "bcz_payload_mod.py").write_text(
        "from pathlib import Path\nfrom torch import nn\n"
        f"Path({str(marker)!r}).write_text('payload ran')\n"
        "class Payload(nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path, _ = _tree_file(tmp_path)

    def name_payload(header: dict) -> None:
        header["tree"]["class"] = "bcz_payload_mod.Payload"

    rewrite(path, name_payload)
    for load in (load_packed, bayescomp.load, lambda p: load_packed(p, classes=[TwoBranch])):
        with pytest.raises(PackedFormatError, match=r"bcz_payload_mod\.Payload") as info:
            load(path)
        assert "classes=[Payload]" in str(info.value) and str(path) in str(info.value)
        assert not marker.exists() and "bcz_payload_mod" not in sys.modules
    importlib.import_module("bcz_payload_mod")  # the payload is live: importing it is what the loader avoided
    assert marker.exists()
    monkeypatch.delitem(sys.modules, "bcz_payload_mod")


def test_user_class_is_rebuilt_only_when_passed_or_registered(tmp_path):
    import bayescomp
    from bayescomp.compress.packed import (
        UntrustedClassError, container_classes, register_packable, unregister_packable,
    )

    path, model = _tree_file(tmp_path)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UntrustedClassError, match="TwoBranch") as info:
        load_packed(path)
    assert "classes=[TwoBranch]" in str(info.value) and "register_packable(TwoBranch)" in str(info.value)
    expected = quantized(nn.Sequential(model.body[0]), {0: QuantSpec(2**-6)})[0].weight
    for loaded in (load_packed(path, classes=[TwoBranch])[0], bayescomp.load(path, classes=[TwoBranch])):
        assert type(loaded) is TwoBranch and loaded.scale == 0.5 and not loaded.training
        assert torch.equal(loaded.body[0].weight, expected)
        with torch.no_grad():
            assert torch.equal(loaded(x), loaded.head(x + 0.5 * loaded.body(x)))
    assert set(container_classes(model)) == {TwoBranch, nn.Sequential}
    assert type(load_packed(path, classes=container_classes(model))[0]) is TwoBranch
    assert register_packable(TwoBranch) is TwoBranch
    try:
        assert type(bayescomp.load(path)) is TwoBranch
    finally:
        unregister_packable(TwoBranch)
    with pytest.raises(UntrustedClassError):
        load_packed(path)

    def saved_from_a_script(header: dict) -> None:  # a model saved by `python train.py` is __main__.TwoBranch
        header["tree"]["class"] = "__main__.TwoBranch"

    rewrite(path, saved_from_a_script)
    assert type(load_packed(path, classes=[TwoBranch])[0]) is TwoBranch
    for bad in (TwoBranch(), "TwoBranch", nn.Linear, dict):
        with pytest.raises(TypeError, match="classes"):
            load_packed(path, classes=[bad])


def _set_tree_attr(key, value, node_path=()) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        node = header["tree"]
        for index in node_path:
            node = node["children"][index][1]
        node.setdefault("attrs", {})[key] = value
    return edit


def _set_spec(index: int, key: str, value) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        header["modules"][index][key] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set_tree_attr("forward", 1), "shadow TwoBranch.forward"),
    (_set_tree_attr("_modules", {}), "public identifiers"),
    (_set_tree_attr("__class__", "x"), "public identifiers"),
    (_set_tree_attr("training", True), "training flag"),
    (_set_tree_attr("head", 3), "child module"),
    (_set_tree_attr("eval", 3), "shadow TwoBranch.eval"),
    (_set_tree_attr("scale", 1.0, node_path=(0,)), "Sequential has no stored attributes"),
    (_set_spec(0, "args", {"in_features": 4, "out_features": 4, "bias": True, "device": "meta"}), "'device'"),
    (_set_spec(0, "args", {"in_features": 4, "out_features": 4, "bias": True, "dtype": "float64"}), "'dtype'"),
    (_set_spec(1, "args", {"inplace": False, "negative_slope": 3}), "'negative_slope'"),
    (_set_spec(2, "num_batches_tracked", 5), "'num_batches_tracked'"),
    (_set_spec(0, "args", [4, 4]), "not an object"),
])
def test_crafted_header_attributes_are_refused(tmp_path, edit, message):
    """Only the fields the format defines for each module kind are accepted (docs/file-format.md): no extra
    constructor arguments, blob names or spec keys on leaves, and only plain data attributes on containers."""
    path, _ = _tree_file(tmp_path)
    rewrite(path, edit)
    with pytest.raises(PackedFormatError, match=message) as info:
        load_packed(path, classes=[TwoBranch])
    assert str(path) in str(info.value)


def test_extra_blob_on_a_leaf_is_refused(tmp_path):
    path, _ = _tree_file(tmp_path)

    def add_blob(header: dict) -> None:
        header["modules"][0]["blobs"]["weight_log_sigma2"] = dict(header["modules"][0]["blobs"]["bias"])

    rewrite(path, add_blob)
    with pytest.raises(PackedFormatError, match="'weight_log_sigma2'.*not defined for Linear"):
        load_packed(path, classes=[TwoBranch])
