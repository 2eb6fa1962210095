"""Trainer: resume after interruption ends like an uninterrupted run; NaN losses and corrupt checkpoints
get clear errors and lose nothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bayescomp import bayesify
from bayescomp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bayescomp.models import create_model
from bayescomp.train import NonFiniteLossError, TrainConfig, evaluate, fit


#: Prior settings for the resume test: Turbo-VBI's closed-form steps must run inside these short epochs too.
RESUME_CONFIGS = {"turbo": {"update_every": 3}}


def _model(data, prior: str = "gnj"):
    torch.manual_seed(0)
    return bayesify(create_model("lenet300", 10, data.input_shape, data.mean, data.std), prior,
                    RESUME_CONFIGS.get(prior))


@pytest.mark.parametrize("prior", sorted(__import__("bayescomp.priors", fromlist=["PRIORS"]).PRIORS))
def test_interrupted_and_resumed_run_equals_uninterrupted(prior, mnist_small, tmp_path):
    """Iterates the registry: every prior's state (parameters and buffers such as Turbo-VBI's support and messages)
    is checkpointed, so a resumed run ends bit for bit where an uninterrupted one does."""
    config = TrainConfig(epochs=3, batch_size=256, lr=1e-3, lr_schedule="cosine", kl_warmup_epochs=1, seed=3)
    straight = _model(mnist_small, prior)
    fit(straight, mnist_small, config, checkpoint_path=tmp_path / "a.ckpt", progress=False, log=lambda *_: None)

    interrupted = _model(mnist_small, prior)
    fit(interrupted, mnist_small, config, checkpoint_path=tmp_path / "b.ckpt", progress=False,
        stop_after_epochs=1, log=lambda *_: None)
    resumed = _model(mnist_small, prior)  # a fresh process would start from a fresh model
    history = fit(resumed, mnist_small, config, checkpoint_path=tmp_path / "b.ckpt", progress=False,
                  log=lambda *_: None)
    assert len(history.epochs) == 3
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_training_improves_a_real_model(mnist_small):
    model = create_model("lenet300", 10, mnist_small.input_shape, mnist_small.mean, mnist_small.std)
    before = evaluate(model, mnist_small.test)["error_pct"]
    fit(model, mnist_small, TrainConfig(epochs=2, batch_size=64), progress=False, log=lambda *_: None)
    after = evaluate(model, mnist_small.test)["error_pct"]
    assert after < 20.0 < before


def test_nan_loss_raises_and_keeps_last_good_checkpoint(mnist_small, tmp_path):
    model = _model(mnist_small)
    path = tmp_path / "nan.ckpt"
    config = TrainConfig(epochs=2, batch_size=500)
    fit(model, mnist_small, config, checkpoint_path=path, progress=False, stop_after_epochs=1, log=lambda *_: None)
    good = load_checkpoint(path)
    # poison the checkpointed state as well so that resuming runs into the NaN
    state = dict(good)
    poisoned = {k: v.clone() for k, v in good["model"].items()}
    poisoned["2.weight_mu"][0, 0] = float("nan")
    state["model"] = poisoned
    bad_path = tmp_path / "bad.ckpt"
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, bad_path)
    before = bad_path.read_bytes()
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2"):
        fit(_model(mnist_small), mnist_small, config, checkpoint_path=bad_path, progress=False,
            log=lambda *_: None)
    assert bad_path.read_bytes() == before  # nothing overwritten


def test_corrupt_checkpoint_falls_back_or_fails_clearly(tmp_path):
    path = tmp_path / "run.ckpt"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    path.write_bytes(path.read_bytes()[:40])  # truncated newest checkpoint
    with pytest.warns(UserWarning, match="previous checkpoint"):
        state = load_checkpoint(path)
    assert state["epoch"] == 1
    assert (tmp_path / "run.ckpt.corrupt").exists()

    lone = tmp_path / "lone.ckpt"
    lone.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="lone.ckpt.*cannot be read"):
        load_checkpoint(lone)
    assert lone.read_bytes() == b"not a checkpoint"


def test_resume_with_other_config_is_refused(mnist_small, tmp_path):
    path = tmp_path / "c.ckpt"
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    fit(model, mnist_small, TrainConfig(epochs=1, batch_size=500), checkpoint_path=path, progress=False,
        log=lambda *_: None)
    with pytest.raises(ValueError, match="another training config"):
        fit(model, mnist_small, TrainConfig(epochs=1, batch_size=100), checkpoint_path=path, progress=False,
            log=lambda *_: None)


def test_fit_trains_a_density_propagating_model_with_its_own_objective(mnist_small):
    """The trainer's objective hook: a density-propagating CNN (moments out) learns with the Gaussian-likelihood
    ELBO, and evaluate() scores its predictive mean."""
    from bayescomp.selfcompress import density_from_plain
    from bayescomp.selfcompress.objective import gaussian_elbo_loss

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 144, 10),
                          nn.Softmax(dim=1))
    model = density_from_plain(plain, rho_init=-10.0)
    before = evaluate(model, mnist_small.test)["error_pct"]
    history = fit(model, mnist_small, TrainConfig(epochs=2, batch_size=100, lr=1e-3), progress=False,
                  log=lambda *_: None, objective=gaussian_elbo_loss)
    after = evaluate(model, mnist_small.test)["error_pct"]
    assert before > 50 and after < 25, (before, after)
    assert all(math.isfinite(e["loss"]) for e in history.epochs) and history.epochs[-1]["kl"] > 0


def test_mixed_precision_keeps_the_variance_parameters_in_float32(mnist_small):
    """bfloat16 autocast (CPU here; CUDA on a GPU) trains the Bayesian model: parameters, their gradients and the
    KL stay float32, the loss stays finite, and the result is close to the float32 run of the same seed."""
    from bayescomp import bayesify
    from bayescomp.models import create_model
    from bayescomp.objective import collect_kl
    from bayescomp.train import AutocastForward

    torch.manual_seed(0)
    dense = create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])
    fit(dense, mnist_small, TrainConfig(epochs=1, lr=3e-3), progress=False, log=lambda *_: None)
    runs = {}
    for amp in (False, True):
        model = bayesify(dense, "gnj")
        history = fit(model, mnist_small, TrainConfig(epochs=1, lr=1e-3), progress=False, log=lambda *_: None,
                      amp=amp, device="cpu")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert collect_kl(model).dtype == torch.float32
        runs[amp] = history.epochs[-1]
    out = AutocastForward(model, "cpu")(mnist_small.val.example(4))
    assert out.dtype == torch.float32
    assert math.isfinite(runs[True]["loss"])
    assert abs(runs[True]["val_error_pct"] - runs[False]["val_error_pct"]) < 3.0
    assert abs(runs[True]["nll"] - runs[False]["nll"]) < 0.1


def test_sgd_option_is_nesterov_sgd_with_weight_decay_and_trains(mnist_small):
    """``optimizer="sgd"`` builds SGD with Nesterov momentum and the config's weight decay, and the step it takes
    is SGD's: one step from zero momentum moves each weight by lr * (grad + wd * w) * (1 + momentum)."""
    from bayescomp.train import SGD_MOMENTUM, make_optimizer

    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    config = TrainConfig(lr=0.1, optimizer="sgd", weight_decay=0.01)
    optimizer = make_optimizer(layer, config)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == SGD_MOMENTUM
    before = layer.weight.detach().clone()
    layer(torch.randn(5, 4)).square().sum().backward()
    grad = layer.weight.grad.detach().clone() + 0.01 * before
    optimizer.step()
    expected = before - 0.1 * grad * (1 + SGD_MOMENTUM)  # buf = g; Nesterov: g + momentum * buf
    torch.testing.assert_close(layer.weight.detach(), expected)

    model = create_model("lenet300", 10, mnist_small.input_shape, mnist_small.mean, mnist_small.std)
    fit(model, mnist_small, TrainConfig(epochs=2, batch_size=64, lr=0.05, optimizer="sgd", weight_decay=5e-4),
        progress=False, log=lambda *_: None)
    assert evaluate(model, mnist_small.test)["error_pct"] < 20.0


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")


def test_a_checkpoint_written_before_a_config_field_existed_still_resumes(mnist_small, tmp_path):
    """A checkpoint whose saved training config lacks a field added later (``optimizer``) resumes under a config
    that leaves the field at its default, and is refused under one that changes it."""
    config = TrainConfig(epochs=2, batch_size=500)
    path = tmp_path / "old.ckpt"
    fit(_model(mnist_small), mnist_small, config, checkpoint_path=path, progress=False, stop_after_epochs=1,
        log=lambda *_: None)
    state = load_checkpoint(path)
    del state["train_config"]["optimizer"]
    save_checkpoint(state, path)
    history = fit(_model(mnist_small), mnist_small, config, checkpoint_path=path, progress=False,
                  log=lambda *_: None)
    assert len(history.epochs) == 2
    with pytest.raises(ValueError, match="other settings"):
        fit(_model(mnist_small), mnist_small, TrainConfig(epochs=2, batch_size=500, optimizer="sgd"),
            checkpoint_path=path, progress=False, log=lambda *_: None)
