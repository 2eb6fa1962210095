"""The method registry: every method is found by name and alias, declares what the pipeline needs, and the
one-call verb ``bayescomp.compress_model`` compresses a user's own residual model end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import bayescomp
from bayescomp.cli import main
from bayescomp.methods import METHODS, Method, canonical_name, get_method, list_methods, method_keys
from bayescomp.train import TrainConfig, evaluate, fit


@pytest.mark.parametrize("name", list_methods())
def test_every_method_declares_a_valid_settings_dataclass(name):
    method = get_method(name)
    assert dataclasses.is_dataclass(method.config_cls)
    assert set(method.cli_options) <= {f.name for f in dataclasses.fields(method.config_cls)}
    assert method.settings_dict() == dataclasses.asdict(method.config_cls())


def test_aliases_resolve_and_unknown_names_list_the_known_ones():
    for key in method_keys():
        assert canonical_name(key) in METHODS
    assert canonical_name("sparse-vd") == "svd"
    with pytest.raises(ValueError, match="known: .*gnj"):
        get_method("no-such-method")


def test_a_name_cannot_be_registered_twice():
    existing = get_method("gnj")
    with pytest.raises(ValueError, match="already registered"):
        bayescomp.register_method(dataclasses.replace(existing))


def test_the_toy_method_is_registered_by_its_file_alone():
    assert "toy-rownorm" in list_methods()  # tests/toy_method.py, imported by conftest.py


def test_group_lr_scale_refused_where_a_method_has_no_group_scales(tmp_path, capsys):
    code = main(["run", "--method", "svd", "--group-lr-scale", "5", "--run-dir", str(tmp_path / "r"),
                 "--train-subset", "500", "--val-size", "500", "--test-subset", "200", "--epochs", "0",
                 "--dense-epochs", "0", "--no-latency", "--no-plots", "--no-progress"])
    assert code == 2
    assert "--group-lr-scale does not apply to --method svd" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).group_lr_suffixes])
def test_group_lr_scale_sets_every_declared_suffix(name):
    from argparse import Namespace

    from bayescomp.cli import _train_config

    args = Namespace(batch_size=None, epochs=None, lr=None, group_lr_scale=7.0, kl_warmup=None, method=name,
                     dense_epochs=None)
    config = _train_config(TrainConfig(), args, bayes=True)
    assert {s: 7.0 for s in get_method(name).group_lr_suffixes}.items() <= config.lr_scales.items()


class Residual(nn.Module):
    """A user's own model: a conv stem, one residual block, global pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv_b(torch.relu(self.conv_a(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_compress_model_on_a_users_residual_model(mnist_small, tmp_path):
    torch.manual_seed(0)
    dense = Residual()
    fit(dense, mnist_small, TrainConfig(epochs=2, lr=3e-3), progress=False, log=lambda *_: None)
    before = [p.detach().clone() for p in dense.parameters()]
    result = bayescomp.compress_model(dense, mnist_small, "gnj", epochs=1, log=lambda *_: None)
    assert all(torch.equal(a, b) for a, b in zip(before, dense.parameters())), "the input model is not modified"
    assert result.extras["method"] == "gnj" and len(result.extras["history"]) == 1
    path = tmp_path / "mine.bcz"
    size = result.save(path)
    assert size == path.stat().st_size
    with pytest.raises(bayescomp.compress.packed.PackedFormatError):
        bayescomp.load(path)  # a user's class is rebuilt only when the caller passes it
    loaded = bayescomp.load(path, classes=[Residual])
    images = mnist_small.test.example(16)
    torch.testing.assert_close(loaded(images), result.quantized_model.eval()(images), rtol=1e-5, atol=1e-5)
    assert evaluate(loaded, mnist_small.test)["error_pct"] == pytest.approx(
        evaluate(result.quantized_model, mnist_small.test)["error_pct"])


def test_compress_model_runs_a_registered_non_bayesian_method(mnist_small):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    result = bayescomp.compress_model(dense, mnist_small, "toy-rownorm", log=lambda *_: None)
    assert result.architecture_kept[1] == 48  # 0.75 of 64 hidden units


def test_list_methods_is_public():
    assert bayescomp.list_methods() == list_methods()
    assert isinstance(bayescomp.get_method("gnj"), Method)


@pytest.mark.parametrize("guard", [True, False])
def test_finetuning_that_raises_the_validation_error_is_undone_by_the_guard(mnist_small, guard):
    """A fine-tuning recipe that wrecks the pruned model (Adam at lr 1.0) is undone on the validation split's
    evidence: with the guard the weights equal those of the same run without fine-tuning; without it they do not."""
    from bayescomp.compress import CompressConfig

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(dense, mnist_small, TrainConfig(epochs=2, lr=3e-3), progress=False, log=lambda *_: None)
    common = dict(epochs=1, compress=CompressConfig(finetune_guard=guard), log=lambda *_: None)
    plain = bayescomp.compress_model(dense, mnist_small, "gnj", finetune=TrainConfig(epochs=0), **common)
    wrecked = bayescomp.compress_model(dense, mnist_small, "gnj", finetune=TrainConfig(epochs=1, lr=1.0), **common)
    record = wrecked.extras["finetune_validation"]
    assert record["val_error_pct_after"] > record["val_error_pct_before"] + 5  # the recipe did hurt
    assert record["kept"] is (not guard)
    same = all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                  wrecked.model.state_dict().values()))
    assert same is guard
    if guard:
        assert evaluate(wrecked.model, mnist_small.val)["error_pct"] == pytest.approx(record["val_error_pct_before"])
    assert "val_error_pct_after_unseen" not in record  # the search read the whole validation split


def test_fine_tuned_validation_error_is_also_given_on_the_images_the_search_did_not_read(mnist_small):
    """With ``search_val_size`` the search chooses on part of the validation split; the record adds the error
    after fine-tuning on the rest, measured here independently."""
    from bayescomp.compress import CompressConfig

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(dense, mnist_small, TrainConfig(epochs=1, lr=3e-3), progress=False, log=lambda *_: None)
    result = bayescomp.compress_model(dense, mnist_small, "gnj", epochs=1, finetune=TrainConfig(epochs=1),
                                      compress=CompressConfig(search_val_size=200), log=lambda *_: None)
    record = result.extras["finetune_validation"]
    unseen = mnist_small.val.subset_complement(200, seed=0)
    assert record["val_images_unseen"] == len(mnist_small.val) - 200 == len(unseen)
    assert record["val_error_pct_after_unseen"] == pytest.approx(evaluate(result.model, unseen)["error_pct"])


@pytest.mark.parametrize("amp", [True, False])
def test_fine_tuning_runs_in_the_precision_of_the_runs_training(mnist_small, amp):
    """``amp`` (``--precision bf16`` / ``--amp``) covers fine-tuning as well as the Bayesian training: the pruned
    plain model's layer products come out in bfloat16 while it fine-tunes, in float32 without it."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    seen: list[torch.dtype] = []

    def record(module, _inputs, output):
        if type(module) is nn.Linear and module.training:  # only fine-tuning trains a plain Linear here
            seen.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        bayescomp.compress_model(dense, mnist_small, "gnj", epochs=1, finetune=TrainConfig(epochs=1), amp=amp,
                                 log=lambda *_: None)
    finally:
        handle.remove()
    assert seen, "fine-tuning never ran a plain Linear in training mode"
    assert set(seen) == {torch.bfloat16 if amp else torch.float32}


class _SealedSplit:
    """A test split that fails on any use: what a step reads of it is caught where it happens."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read (.{name}) before the report")

    def __len__(self):
        raise AssertionError("the test split was read (len) before the report")


@pytest.mark.parametrize("name", list_methods())
def test_training_and_compression_never_read_the_test_split(name, mnist_small):
    """Every registered method trains and compresses on the training and validation splits alone, so a caller
    that compresses without reporting (the blind rule of ``benchmarks/blind_row.py``) reads no test image; report
    figures (self-compression's density-twin error) come from ``report_extras``, which gets the real split."""
    from dataclasses import replace

    from bayescomp.methods import RunContext
    from bayescomp.methods.runner import prepare_and_train
    from bayescomp.pipeline import RunConfig

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(dense, mnist_small, TrainConfig(epochs=1, lr=3e-3), progress=False, log=lambda *_: None)
    method = get_method(name)
    config = RunConfig(method=name, bayes=TrainConfig(epochs=1, lr=3e-3), finetune=TrainConfig(epochs=0))
    sealed = replace(mnist_small, test=_SealedSplit())
    ctx = RunContext(config=config, data=sealed, dense=dense, run_dir=None,
                     settings=method.make_settings(config.prior), log=lambda *_: None, progress=False)
    model = prepare_and_train(method, ctx).model
    result = method.compress(model, ctx)
    assert result.model is not None
    extras = method.report_extras(model if method.posterior_in_report else None, replace(ctx, data=mnist_small))
    if name == "self":
        assert extras["test_error_pct_density"] == evaluate(ctx.state["density_twin"], mnist_small.test)["error_pct"]


@pytest.mark.parametrize("name", list_methods())
def test_only_a_methods_post_training_settings_reuse_a_trained_run_directory(name):
    """A run directory refuses other training settings; a change to the fields a method reads only after training
    (``post_training_settings``, e.g. self-compression's tolerance) is listed as ``prior.<field>`` so the trained
    model is reused, and any other field of its settings still counts as a change of ``prior``."""
    from bayescomp.pipeline import RunConfig, changed_settings

    method = get_method(name)
    base = RunConfig(method=name).to_dict()
    base["prior"] = method.settings_dict()
    for key in method.post_training_settings:
        after = {**base, "prior": {**base["prior"], key: "changed"}}
        assert changed_settings(base, after) == [f"prior.{key}"]
    for key in set(base["prior"]) - set(method.post_training_settings):
        after = {**base, "prior": {**base["prior"], key: "changed"}}
        assert changed_settings(base, after) == ["prior"]
    other = next(n for n in list_methods() if n != name)
    assert "method" in changed_settings(base, {**base, "method": other, "prior": {}})


def test_a_post_training_setting_must_be_a_settings_field():
    existing = get_method("self")
    with pytest.raises(ValueError, match="not fields of"):
        dataclasses.replace(existing, name="self-typo", aliases=(), post_training_settings=("tolerance",))


def test_a_run_directory_written_before_a_training_field_existed_is_still_reused():
    """A ``run.json`` whose training sections lack a field added later (here ``optimizer``) matches a run that
    leaves the field at its default, and differs from one that changes it."""
    from bayescomp.pipeline import RunConfig, changed_settings

    current = RunConfig(method="gnj").to_dict()
    older = {**current, "finetune": {k: v for k, v in current["finetune"].items() if k != "optimizer"}}
    assert "optimizer" in current["finetune"]
    assert changed_settings(older, current) == []
    sgd = {**current, "finetune": {**current["finetune"], "optimizer": "sgd"}}
    assert changed_settings(older, sgd) == ["finetune"]
    older_compress = {**current, "compress": {k: v for k, v in current["compress"].items() if k != "channel_score"}}
    assert changed_settings(older_compress, current) == []
    snr = {**current, "compress": {**current["compress"], "channel_score": "snr", "target_macs": 2.0}}
    assert changed_settings(older_compress, snr) == ["compress"]


def test_the_report_says_the_fine_tuned_validation_error_on_the_unseen_images():
    from bayescomp.report import _finetuned_validation_sentence

    record = {"val_error_pct_after": 9.456, "val_error_pct_after_unseen": 9.82, "val_images_unseen": 4000}
    assert _finetuned_validation_sentence(record) == (" Validation error after fine-tuning 9.46 % (9.82 % on the "
                                                      "4,000 images the search did not read).")
    assert _finetuned_validation_sentence({"val_error_pct_after": 1.0}) == " Validation error after fine-tuning 1.00 %."
    assert _finetuned_validation_sentence(None) == ""
