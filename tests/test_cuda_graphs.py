"""``fit(cuda_graphs=True)``: the training step replayed as one CUDA graph (:mod:`bayescomp.cuda_graphs`).

The CPU tests check what every machine runs: the option falls back to the eager loop, which layers may be
captured (iterating the prior registry), and that a checkpoint of a capturable optimiser resumes on a CPU. The
tests marked ``cuda`` need a GPU (they ran on an NVIDIA H200 through the device machine; CI has none): the graph
must train a plain network as the eager loop does, draw new posterior noise on every replay with the eager loop's
mean loss, and train a Bayesian LeNet-5 epoch end to end.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from bayescomp import bayesify
from bayescomp.checkpoint import restore_training_state, training_state
from bayescomp.cuda_graphs import WARMUP_STEPS, GraphedStep, graph_unsafe_layers
from bayescomp.models import create_model
from bayescomp.objective import variational_loss
from bayescomp.priors import PRIORS
from bayescomp.priors.base import bayesian_layers
from bayescomp.train import TrainConfig, fit, make_optimizer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")


def _lenet300(data, prior: str | None = None):
    torch.manual_seed(0)
    model = create_model("lenet300", 10, data.input_shape, data.mean, data.std)
    return model if prior is None else bayesify(model, prior)


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_graph_safety_is_declared_per_prior(prior, mnist_small):
    """Iterates the registry: a prior whose layers run value-dependent Python after a step (Turbo-VBI's message
    passing every few steps) must not claim to be capturable; the others are."""
    model = _lenet300(mnist_small, prior)
    unsafe = graph_unsafe_layers(model)
    if prior == "turbo":
        assert unsafe == [name for name, _ in bayesian_layers(model)] and len(unsafe) == 3
    else:
        assert unsafe == []


def test_cuda_graphs_on_a_cpu_says_so_and_trains_exactly_as_the_eager_loop(mnist_small):
    config = TrainConfig(epochs=1, batch_size=128, seed=0)
    eager, graphed, lines = _lenet300(mnist_small, "gnj"), _lenet300(mnist_small, "gnj"), []
    fit(eager, mnist_small, config, progress=False, log=lambda *_: None)
    fit(graphed, mnist_small, config, progress=False, log=lines.append, cuda_graphs=True)
    assert any("cuda_graphs: it needs a CUDA device; training eagerly" in line for line in lines)
    for a, b in zip(eager.state_dict().values(), graphed.state_dict().values()):
        assert torch.equal(a, b)


def test_a_capturable_optimisers_checkpoint_resumes_with_this_runs_optimiser(mnist_small):
    """A checkpoint written by a CUDA-graph run (Adam capturable, its step count a tensor) must resume on a CPU:
    the optimiser's mode is this run's, the moments are the file's."""
    model = _lenet300(mnist_small)
    config = TrainConfig(epochs=1, seed=0)
    optimizer = make_optimizer(model, config)
    model(torch.zeros(2, *mnist_small.input_shape)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    state = training_state(model, optimizer, scheduler, 1, config, [])
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True
    resumed = make_optimizer(model, config)
    restore_training_state(state, model, resumed, torch.optim.lr_scheduler.LambdaLR(resumed, lambda e: 1.0))
    assert all(group["capturable"] is False and group["fused"] for group in resumed.param_groups)
    first = next(iter(resumed.state.values()))
    assert torch.equal(first["exp_avg"], next(iter(optimizer.state.values()))["exp_avg"])
    model(torch.zeros(2, *mnist_small.input_shape)).sum().backward()
    resumed.step()  # a capturable flag left on would refuse CPU parameters here


@cuda
def test_graph_trains_a_plain_network_as_the_eager_loop(mnist_small):
    """No noise: the replayed steps are the eager steps (capturable Adam's device-side bias correction aside),
    the smaller last batch (2,000 = 15 x 128 + 80) included."""
    config = TrainConfig(epochs=2, batch_size=128, seed=0)
    eager, graphed, lines = _lenet300(mnist_small), _lenet300(mnist_small), []
    fit(eager, mnist_small, config, progress=False, log=lambda *_: None, device="cuda")
    fit(graphed, mnist_small, config, progress=False, log=lines.append, device="cuda", cuda_graphs=True)
    assert not any("training eagerly" in line for line in lines)
    for name, a in eager.state_dict().items():
        assert torch.allclose(a, graphed.state_dict()[name], rtol=1e-4, atol=1e-5), name


@cuda
def test_every_replay_draws_new_noise_with_the_eager_mean_loss(mnist_small):
    """BC-GNJ with a zero learning rate: the replayed loss on one batch varies from replay to replay (the Philox
    stream advances) and its mean over replays matches the eager steps' mean within 4 standard errors."""
    model = _lenet300(mnist_small, "gnj").cuda().train()
    optimizer = make_optimizer(model, TrainConfig(lr=0.0), capturable=True)
    images, labels = next(iter(mnist_small.train.batches(128, device="cuda")))
    layers = [m for m in model.modules() if hasattr(m, "apply_constraints")]
    step = GraphedStep(model, model, variational_loss, optimizer, lambda: [m.apply_constraints() for m in layers],
                       len(mnist_small.train), images, labels)
    for _ in range(WARMUP_STEPS):
        step.warm_up(images, labels, 1.0)
    step.capture()
    replayed = [step(images, labels, 1.0)[1].item() for _ in range(200)]
    eager = [variational_loss(model(images), labels, model, len(mnist_small.train), 1.0)[1].item()
             for _ in range(200)]
    assert len(set(replayed)) > 150
    error = (statistics.variance(replayed) / 200 + statistics.variance(eager) / 200) ** 0.5
    assert abs(statistics.mean(replayed) - statistics.mean(eager)) < 4 * error


@cuda
@pytest.mark.parametrize("prior", ["gnj", "ghs", "svd"])
def test_a_bayesian_lenet5_trains_under_graphs_as_eagerly(prior, mnist_small):
    """Two epochs (KL warmed up over both) from the same start, eager and graphed on the GPU: both learn, and
    their validation errors agree within 10 points (the posterior noise differs, the recipe does not)."""
    errors, lines = [], []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = bayesify(create_model("lenet5", 10, mnist_small.input_shape, mnist_small.mean, mnist_small.std),
                         prior)
        history = fit(model, mnist_small, TrainConfig(epochs=2, batch_size=128, seed=0, kl_warmup_epochs=2),
                      progress=False, log=lines.append, device="cuda", cuda_graphs=graphs)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        errors.append(history.epochs[-1]["val_error_pct"])
    assert not any("training eagerly" in line for line in lines)
    assert errors[1] < 50.0 and abs(errors[0] - errors[1]) < 10.0, errors


def test_cli_cuda_graphs_flag_reaches_training_and_the_report(tmp_path, capsys):
    """``bayescomp run --cuda-graphs`` on a CPU: the training says it runs eagerly, the report records the
    request under ``training``."""
    import json

    from bayescomp.cli import main

    run_dir = tmp_path / "r"
    code = main(["run", "--model", "lenet300", "--method", "gnj", "--run-dir", str(run_dir), "--train-subset", "500",
                 "--val-size", "200", "--test-subset", "200", "--dense-epochs", "1", "--epochs", "1",
                 "--no-progress", "--no-latency", "--no-plots", "--cuda-graphs"])
    assert code == 0
    assert "cuda_graphs: it needs a CUDA device; training eagerly" in capsys.readouterr().out
    assert json.loads((run_dir / "report.json").read_text())["training"]["cuda_graphs"] is True
