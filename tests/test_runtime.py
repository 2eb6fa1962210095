"""Latency in eager PyTorch and onnxruntime (dense vs compressed), `bayescomp bench`, and the missing-runtime path.
Timing is kept cheap: few rounds and repeats; the assertions are on structure, consistency and order of calls,
plus one speed comparison with a FLOPs ratio of about 500x that noise cannot invert."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bayescomp import runtime
from bayescomp.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_compare_runtimes_is_consistent_and_orders_by_flops():
    torch.manual_seed(0)
    dense, small = _mlp([64, 1024, 1024, 10]), _mlp([64, 8, 10])
    dense.train()
    out = runtime.compare_runtimes(dense, small, (1, 8, 8), batch_sizes=(1, 64), rounds=2, repeats=12, threads=1)
    assert dense.training and out["threads"] == 1 and out["rounds"] == 2
    assert out["onnxruntime"] is not None and "onnxruntime_note" not in out
    assert out["onnx_max_abs_diff"] < 1e-4
    median = out["median_ms"]
    for rt in ("eager", "onnxruntime"):
        for label in ("dense", "compressed"):
            assert set(median[rt][label]) == {"batch_1", "batch_64"}
            assert all(v > 0 for v in median[rt][label].values())
        for key in ("batch_1", "batch_64"):
            assert out["speedup"][rt][key] == pytest.approx(median[rt]["dense"][key] / median[rt]["compressed"][key])
            assert out["speedup_vs_dense_eager"][rt][key] == pytest.approx(
                median["eager"]["dense"][key] / median[rt]["compressed"][key])
    for key in ("batch_1", "batch_64"):
        every = {f"{rt} {label}": median[rt][label][key] for rt in median for label in median[rt]}
        assert out["fastest"][key] == min(every, key=every.get)
    # 2.1M vs 0.6k MACs per example: at batch 64 the dense model is slower in both runtimes
    assert out["speedup"]["eager"]["batch_64"] > 1 and out["speedup"]["onnxruntime"]["batch_64"] > 1
    text = "\n".join(runtime.format_runtime_latency(out))
    assert "onnxruntime compressed" in text and "| 64 |" in text and "vs dense in eager PyTorch" in text


def _convnet(filters: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, filters, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(filters * 6 * 6, 10))


def test_channels_last_copy_gives_the_same_outputs_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = nn.Sequential(_convnet(6)[:3], nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3), nn.Flatten(), nn.Linear(64, 3))
    model[1].running_mean.uniform_(-1, 1)  # non-trivial statistics, so batch norm's layout handling is exercised
    model.eval()
    fast = runtime.to_channels_last(model)
    assert fast is not model and runtime.has_convolutions(model) and not runtime.has_convolutions(_mlp([4, 2]))
    assert model[0][0].weight.is_contiguous()  # the original keeps NCHW
    assert fast[0][0].weight.is_contiguous(memory_format=torch.channels_last) and fast[2].weight.shape[1] == 6
    x = torch.rand(5, 1, 16, 16)  # the caller's input stays NCHW
    with torch.inference_mode():
        expected, got = model(x), fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_nets_are_also_timed_channels_last():
    torch.manual_seed(0)
    dense, small = _convnet(32), _convnet(2)
    out = runtime.compare_runtimes(dense, small, (1, 16, 16), batch_sizes=(1, 32), rounds=2, repeats=8, threads=1)
    median = out["median_ms"]
    assert set(median) == {"eager", "eager_channels_last", "onnxruntime"}
    for key in ("batch_1", "batch_32"):
        assert out["speedup"]["eager_channels_last"][key] == pytest.approx(
            median["eager_channels_last"]["dense"][key] / median["eager_channels_last"]["compressed"][key])
        every = {f"{rt} {label}": median[rt][label][key] for rt in median for label in median[rt]}
        assert out["fastest"][key] == min(every, key=every.get)
    text = "\n".join(runtime.format_runtime_latency(out))
    assert "eager PyTorch channels-last compressed" in text and "speed-up eager channels-last" in text
    header, rule = text.splitlines()[2:4]
    assert header.count("|") == rule.count("|")  # one rule cell per column
    off = runtime.compare_runtimes(dense, small, (1, 16, 16), batch_sizes=(1,), rounds=1, repeats=3, onnx=False,
                                   channels_last=False)
    assert set(off["median_ms"]) == {"eager"}


class _Recorder(nn.Module):
    def __init__(self, label: str, log: list[str]) -> None:
        super().__init__()
        self.label, self.log, self.linear = label, log, nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.label)
        return self.linear(x)


def test_models_are_timed_interleaved_in_every_round():
    log: list[str] = []
    rounds = 3
    runtime.compare_runtimes(_Recorder("d", log), _Recorder("c", log), (4,), batch_sizes=(1,), rounds=rounds,
                             repeats=3 * rounds, onnx=False)
    runs = [label for i, label in enumerate(log) if i == 0 or log[i - 1] != label]  # one entry per contiguous run
    assert runs == ["d", "c"] * rounds


def test_missing_onnxruntime_is_reported_not_fatal(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    out = runtime.compare_runtimes(_mlp([16, 4]), _mlp([16, 4]), (16,), batch_sizes=(1,), rounds=1, repeats=3)
    assert out["onnxruntime"] is None and "not installed" in out["onnxruntime_note"]
    assert set(out["median_ms"]) == {"eager"}
    assert "pip install 'bayescomp[export]'" in "\n".join(runtime.format_runtime_latency(out))


def test_unexportable_model_is_reported_not_fatal(monkeypatch):
    from bayescomp import export

    def refuse(*args, **kwargs):
        raise export.ExportError("ONNX export of Weird failed: unsupported operator")

    monkeypatch.setattr(export, "export_onnx", refuse)
    out = runtime.compare_runtimes(None, _mlp([3, 2]), (3,), batch_sizes=(1,), rounds=1, repeats=3)
    assert "not measured" in out["onnxruntime_note"] and "unsupported operator" in out["onnxruntime_note"]
    assert set(out["median_ms"]) == {"eager"} and "speedup" not in out
    assert out["fastest"]["batch_1"] == "eager compressed"


def test_wrong_onnx_outputs_are_not_timed(monkeypatch):
    from bayescomp import export

    real = export.onnx_outputs
    monkeypatch.setattr(export, "onnx_outputs", lambda session, images: real(session, images) + 1.0)
    out = runtime.compare_runtimes(_mlp([3, 2]), _mlp([3, 2]), (3,), batch_sizes=(1,), rounds=1, repeats=3)
    assert "differ from PyTorch" in out["onnxruntime_note"] and set(out["median_ms"]) == {"eager"}


def test_bench_cli_on_a_committed_compressed_model(capsys):
    code = main(["bench", str(RESULTS / "lenet5_mnist_gnj.bcz"), "--rounds", "1", "--threads", "1", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_shape"] == [1, 28, 28] and "zoo lenet5" in out["dense"]
    assert set(out["median_ms"]) == {"eager", "eager_channels_last", "onnxruntime"}  # LeNet-5 is a conv net
    assert set(out["median_ms"]["onnxruntime"]) == {"dense", "compressed"}
    assert out["onnx_max_abs_diff"] < 1e-4


def test_bench_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing.bcz")]) == 2
    assert "no packed model" in capsys.readouterr().err
    assert main(["bench", str(RESULTS / "lenet5_mnist_gnj.bcz"), "--rounds", "0"]) == 2
    assert main(["bench", str(RESULTS / "lenet5_mnist_gnj.bcz"), "--input-shape", "1,x"]) == 2
    err = capsys.readouterr().err
    assert "--rounds" in err and "--input-shape" in err and "Traceback" not in err


def test_bench_run_directory_and_bare_file(tmp_path, capsys):
    from bayescomp.compress.packed import save_packed

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "compressed.bcz").write_bytes((RESULTS / "lenet300_mnist_gnj.bcz").read_bytes())
    assert main(["bench", str(run_dir), "--rounds", "1", "--threads", "1", "--no-onnx"]) == 0
    text = capsys.readouterr().out
    assert "zoo lenet300" in text and "eager PyTorch dense" in text and "onnxruntime not requested" in text
    bare = tmp_path / "mine.bcz"  # no record of model or data set: timed alone, on the given input shape
    save_packed(_mlp([12, 6, 3]), bare)
    assert main(["bench", str(bare), "--rounds", "1"]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["bench", str(bare), "--rounds", "1", "--threads", "1", "--input-shape", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dense"].startswith("none") and set(out["median_ms"]["onnxruntime"]) == {"compressed"}
    assert "speedup" not in out


def test_int8_qdq_only_on_layers_of_at_most_8_bits(tmp_path):
    import onnx

    from bayescomp import export

    torch.manual_seed(0)
    model = _mlp([16, 32, 4]).eval()  # Flatten (0), Linear (1), ReLU (2), Linear (3)
    calibration = torch.rand(128, 16)
    none, nodes = runtime.int8_qdq_session(model, {1: 9, 3: 12}, calibration, tmp_path / "a")
    assert none is None and nodes == []
    session, nodes = runtime.int8_qdq_session(model, {1: 8, 3: 12}, calibration, tmp_path / "b")
    assert nodes == ["/1/Gemm"]
    graph = onnx.load(str(tmp_path / "b" / "int8_qdq.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    gemms = {n.name: n for n in graph.node if n.op_type == "Gemm"}
    assert set(gemms["/1/Gemm"].input[:2]) <= dequantized  # input and weight of layer 1 go through int8
    assert not set(gemms["/3/Gemm"].input[:2]) & dequantized  # layer 3 stays float32
    x = torch.rand(64, 16)
    with torch.no_grad():
        expected = model(x)
    got = export.onnx_outputs(session, x)
    # int8 steps: inputs in [0, 1] at 1/255, weights per channel at max|w|/127 (or /63 with 7-bit weights, chosen
    # by default on CPUs without an int8 dot product, where full-range weights saturate); error under 5 % of scale
    assert float((got - expected).abs().max()) < 0.05 * float(expected.abs().max())
    assert float((got - expected).abs().max()) > 0  # it really is quantised
    seven, _ = runtime.int8_qdq_session(model, {1: 8, 3: 12}, calibration, tmp_path / "c", reduce_range=True)
    error7 = float((export.onnx_outputs(seven, x) - expected).abs().max())
    assert 0 < error7 < 0.05 * float(expected.abs().max())  # 7-bit weights hold on every CPU
    timed = runtime.time_sessions({"int8": session}, (16,), batch_sizes=(1, 8), rounds=1, repeats=3)
    assert set(timed["int8"]) == {"batch_1", "batch_8"} and min(timed["int8"].values()) > 0


def test_int8_weights_use_7_bits_only_without_an_int8_dot_product(monkeypatch, tmp_path):
    from onnxruntime import quantization

    from bayescomp import mixed_precision

    seen = {}
    real = quantization.quantize_static

    def spy(*args, **kwargs):
        seen["reduce_range"] = kwargs["reduce_range"]
        return real(*args, **kwargs)

    monkeypatch.setattr(quantization, "quantize_static", spy)
    model = _mlp([16, 8, 4]).eval()
    cases = (({"avx2"}, True), ({"avx2", "avx512_vnni"}, False), ({"avx_vnni"}, False))
    for index, (flags, expected) in enumerate(cases):
        monkeypatch.setattr(mixed_precision, "_cpu_flags", lambda flags=flags: flags)
        assert runtime.int8_dot_product_native() is not expected
        runtime.int8_qdq_session(model, {1: 8}, torch.rand(64, 16), tmp_path / str(index))
        assert seen.pop("reduce_range") is expected


def test_runtime_latency_write_up_has_the_lenet5_acceptance_only_when_lenet5_was_timed():
    """benchmarks.runtime_latency --files times any committed file (ResNet-20 too); the issue-19 acceptance line
    belongs to the LeNet-5 file alone. Rendered from the committed record, with and without that entry."""
    import json

    from benchmarks._common import RESULTS
    from benchmarks.runtime_latency import render

    record = json.loads((RESULTS / "runtime_latency.json").read_text())
    assert "## Acceptance (issue 19)" in render(record)
    record.pop("acceptance")
    record["models"] = {k: v for k, v in record["models"].items() if k != "lenet5_mnist_gnj"}
    text = render(record)
    assert "Acceptance" not in text and "lenet300_mnist_gnj" in text and "lenet5_mnist_gnj" not in text
