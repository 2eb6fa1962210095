"""benchmarks/channel_widths.py: ResNet-20 at several stage widths, timed, with MACs counted independently."""

from __future__ import annotations

import json
import sys

import torch


def _macs_by_hand(widths: tuple[int, int, int]) -> int:
    """Multiply-accumulates of a CIFAR ResNet-20 with uniform stage widths, counted from its definition: a 3x3
    stem, three stages of three basic blocks (two 3x3 convs; a 1x1 projection where the shape changes), a Linear."""
    total, size, channels = 3 * widths[0] * 9 * 32 * 32, 32, widths[0]
    for stage, width in enumerate(widths):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            size //= stride
            total += channels * width * 9 * size * size + width * width * 9 * size * size
            if stride != 1 or channels != width:
                total += channels * width * size * size
            channels = width
    return total + widths[-1] * 10


def test_widths_are_timed_and_counted(tmp_path, monkeypatch):
    from benchmarks import channel_widths

    monkeypatch.setattr(channel_widths, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["channel_widths", "--widths", "16,32,64", "8,16,32", "--rounds", "1",
                                      "--train-steps", "1", "--threads", str(torch.get_num_threads())])
    channel_widths.main()
    record = json.loads((tmp_path / "channel_widths_resnet20.json").read_text())
    dense, cut = record["rows"]
    assert dense["widths"] == [16, 32, 64] and cut["widths"] == [8, 16, 32]
    assert dense["macs"] == _macs_by_hand((16, 32, 64)) and cut["macs"] == _macs_by_hand((8, 16, 32))
    assert cut["mac_ratio"] == dense["macs"] / cut["macs"]
    for key in ("nchw_b1_ms", "nchw_b256_ms", "nhwc_b1_ms", "nhwc_b256_ms", "train_bf16_nhwc_ms"):
        assert dense[key] > 0 and cut[key] > 0
        assert cut[key.replace("_ms", "_speedup")] == dense[key] / cut[key]
    assert "8-16-32" in (tmp_path / "channel_widths_resnet20.md").read_text()
