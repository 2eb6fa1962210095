"""The packed file format: exact round trips, size close to the bit accounting, clear errors on bad files."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

from bayescomp.compress.packed import (
    PackedFormatError, QuantSpec, load_packed, pack_uint, packed_layer_bits, save_packed, unpack_uint,
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
    assert size <= weight_bytes + bias_bytes + 1024
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
    with pytest.raises(ValueError, match="Sequential"):
        save_packed(nn.Sequential(nn.Sequential(nn.Linear(2, 2))), path)
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
