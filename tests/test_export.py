"""Export: every zoo model and a compressed residual model to ONNX (run by onnxruntime), TorchScript, torch.export
and the packed file, each loaded back and compared with PyTorch on real images at two batch sizes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bayescomp.compress import compress
from bayescomp.cli import main
from bayescomp.compress import CompressConfig
from bayescomp.export import FORMATS, SUFFIXES, ExportError, export_model, onnx_outputs
from bayescomp.models import MODELS, create_model

from test_graph import Branchy, _noisy


def _images(data, n: int = 8) -> torch.Tensor:
    return data.test.example(n)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_exports_to_onnx_with_equal_outputs(name, mnist_small, tmp_path):
    shape = (3, 32, 32) if MODELS[name].default_data == "cifar10" else (1, 28, 28)
    torch.manual_seed(0)
    model = create_model(name, 10, shape, [0.4] * shape[0], [0.3] * shape[0]).eval()
    if shape[0] == 1:
        images = _images(mnist_small)
    else:  # real CIFAR-10 images are large to load in a unit test; uniform images in [0, 1] exercise the same graph
        images = torch.rand(8, *shape, generator=torch.Generator().manual_seed(0))
    result = export_model(model, "onnx", tmp_path / f"{name}.onnx", images)
    assert result["max_abs_diff"] <= 1e-5 * max(1.0, float(model(images).abs().max()))
    out = onnx_outputs(tmp_path / f"{name}.onnx", images[:3])  # a batch size not seen at export time
    assert out.shape == (3, 10)


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_residual_model_exports_in_every_format(fmt, mnist_small, tmp_path):
    bayes = _noisy(Branchy())
    images = _images(mnist_small, 16)
    result = compress(bayes, None, CompressConfig(thresholds=-1.0), example_input=images[:2])
    assert result.weights_kept < result.weights_dense
    target = tmp_path / f"small{SUFFIXES[fmt]}"
    exported = export_model(result.quantized_model, fmt, target, images)
    assert target.exists() and exported["bytes"] == target.stat().st_size
    assert exported["max_rel_diff"] <= 1e-5


def test_export_refuses_a_mismatch(mnist_small, tmp_path, monkeypatch):
    """The check can fail: an exported model that computes something else is reported, not shipped silently."""
    import bayescomp.export as export

    model = create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31]).eval()
    monkeypatch.setattr(export, "_load_and_run", lambda fmt, path, images, classes: model(images) + 1e-3)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(model, "torchscript", tmp_path / "m.ts.pt", _images(mnist_small))
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, "tflite", tmp_path / "m.tflite", _images(mnist_small))


def test_cli_export_of_a_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", "--model", "lenet300", "--data", "mnist", "--train-subset", "512", "--val-size", "200",
                 "--test-subset", "200", "--dense-epochs", "1", "--epochs", "1", "--thresholds", "0",
                 "--no-latency", "--no-plots", "--no-progress", "--run-dir", str(run_dir)])
    assert code == 0
    for fmt in ("onnx", "torchscript", "packed"):
        assert main(["export", str(run_dir), "--format", fmt]) == 0
        record = json.loads((run_dir / f"export_{fmt}.json").read_text())
        assert record["max_abs_diff"] <= 1e-5 * 100 and (run_dir / f"compressed{SUFFIXES[fmt]}").exists()
    assert "outputs match PyTorch" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    assert "not a finished run directory" in capsys.readouterr().err


def test_unsupported_module_in_a_tree_is_named(tmp_path):
    from bayescomp.compress.packed import save_packed

    class Holder(nn.Module):  # defined locally: not importable, so a loader could not rebuild it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ValueError, match="Holder.*not importable"):
        save_packed(Holder(), tmp_path / "h.bcz")
