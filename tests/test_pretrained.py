"""Shipped pretrained weights: checked by SHA-256, refused when corrupt, and as accurate as their manifest says."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bayescomp.data import load_dataset
from bayescomp.models import create_model
from bayescomp.models import pretrained as pretrained_mod
from bayescomp.train import evaluate


def _shipped():
    return pretrained_mod.list_pretrained()


def test_some_weights_ship():
    assert ("lenet300", "mnist") in _shipped()


@pytest.mark.parametrize("model,data", _shipped())
def test_shipped_weights_reproduce_their_manifest(model, data):
    bundle = load_dataset(data)
    net = create_model(model, bundle.num_classes, bundle.input_shape, bundle.mean, bundle.std, pretrained=True,
                       data=data)
    manifest = pretrained_mod.read_manifest(model, data)
    if model.startswith("resnet"):  # a seeded 1,000-image slice keeps the suite fast; 10,000 for the LeNets
        test = bundle.test.subset(1000, seed=0)
        # binomial standard error of an error rate p on 1,000 images, 4 sigma
        p = manifest["test_error_pct"] / 100
        tolerance = 400 * (p * (1 - p) / 1000) ** 0.5
    else:
        # the full test set; two images of slack for float summation order on other thread counts
        test, tolerance = bundle.test, 0.02 + 1e-9
    error = evaluate(net, test)["error_pct"]
    assert abs(error - manifest["test_error_pct"]) <= tolerance, (error, manifest["test_error_pct"])


def test_corrupt_weights_are_refused(tmp_path, monkeypatch):
    for path in pretrained_mod.WEIGHTS_DIR.glob("lenet300_mnist.*"):
        shutil.copy(path, tmp_path / path.name)
    weights = tmp_path / "lenet300_mnist.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    monkeypatch.setattr(pretrained_mod, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(pretrained_mod.PretrainedWeightsError, match="SHA-256"):
        create_model("lenet300", pretrained=True)


def test_unknown_pair_names_what_ships():
    with pytest.raises(pretrained_mod.PretrainedWeightsError, match="lenet300/mnist"):
        create_model("vgg16", 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, pretrained=True, data="cifar10")


def test_weights_that_do_not_fit_are_refused():
    with pytest.raises(pretrained_mod.PretrainedWeightsError, match="do not fit"):
        create_model("lenet300", num_classes=7, pretrained=True)


def test_manifest_records_how_the_weights_were_made():
    for model, data in _shipped():
        manifest = json.loads(pretrained_mod.manifest_path(model, data).read_text())
        assert manifest["command"].startswith("python benchmarks/pretrain.py")
        assert manifest["sha256"] and manifest["epochs"] > 0 and manifest["train_time_s"] > 0
        assert isinstance(torch.load(pretrained_mod.WEIGHTS_DIR / manifest["file"], weights_only=True), dict)


def test_run_from_pretrained_weights_needs_their_split(tmp_path):
    from bayescomp.pipeline import RunConfig, dense_model

    data = load_dataset("mnist", val_size=5000, seed=0)
    config = RunConfig(model="lenet300", data="mnist", pretrained=True)
    dense = dense_model(config, data, log=lambda *_: None)
    reference = create_model("lenet300", 10, data.input_shape, data.mean, data.std, pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(ValueError, match="split"):
        dense_model(RunConfig(model="lenet300", data="mnist", pretrained=True, val_size=1000),
                    load_dataset("mnist", val_size=1000), log=lambda *_: None)


@pytest.mark.parametrize("model,data", _shipped())
def test_left_out_shape_and_normalisation_come_from_the_weights_data_set(model, data):
    """``create_model(name, pretrained=True, data=...)`` with nothing else builds the network its weights were
    trained as: the same state and the same outputs as the one built from the loaded data set's metadata."""
    bundle = load_dataset(data, test_subset=16)
    explicit = create_model(model, bundle.num_classes, bundle.input_shape, bundle.mean, bundle.std, pretrained=True,
                            data=data).eval()
    implicit = create_model(model, pretrained=True, data=data).eval()
    assert explicit.state_dict().keys() == implicit.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(explicit.state_dict().values(), implicit.state_dict().values()))
    images = bundle.test.example(16)
    with torch.no_grad():
        assert torch.equal(explicit(images), implicit(images))


def test_a_zoo_model_defaults_to_its_own_data_set():
    """Without arguments a CIFAR-10 model takes 3 x 32 x 32 images and a MNIST model 1 x 28 x 28, each with its
    data set's normalisation."""
    resnet = create_model("resnet20")
    assert resnet(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="Normalize expects N x 3"):
        resnet(torch.rand(2, 1, 28, 28))
    lenet = create_model("lenet5")
    assert lenet(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    normalize = lenet[0]
    assert torch.allclose(normalize.mean_.flatten(), torch.tensor([0.1307]))


def test_defaults_from_an_unknown_data_set_are_refused_by_name():
    with pytest.raises(ValueError, match="photos/"):
        create_model("lenet5", data="photos/")
    assert create_model("lenet5", 3, (1, 28, 28), (0.5,), (0.25,), data="photos/")(torch.rand(1, 1, 28, 28)).shape \
        == (1, 3)
