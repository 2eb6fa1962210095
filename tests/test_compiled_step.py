"""The compiled training step (:mod:`bayescomp.compiled_step`): the same loss and gradients as the eager step for
every prior, the noise operator's draws, the "auto" rule, and real training through ``fit``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayescomp import bayesify, compiled_step, noise
from bayescomp.compiled_step import compiled_objective, decide
from bayescomp.objective import variational_loss
from bayescomp.priors import PRIORS
from bayescomp.priors.base import bayesian_layers
from bayescomp.train import TrainConfig, evaluate, fit

BATCH = 64


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 16))


@pytest.fixture
def noise_by_shape(monkeypatch):
    """Every draw of N numbers is the same fixed N(0, 1) tensor, in the eager and in the compiled step: the two
    steps may order their draws differently, so only draws that do not depend on order can be compared."""
    def fill(out: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(out.numel())
        return out.copy_(torch.randn(out.shape, generator=generator, dtype=torch.float32))

    monkeypatch.setattr(noise, "effective_noise_source", lambda: "philox")
    monkeypatch.setattr(noise, "_philox_fill", fill)
    monkeypatch.setattr(noise, "SMALL", 1)  # small draws (BC-GHS's per-example global scale) through it too
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_compiled_step_has_the_eager_loss_and_gradients(prior, noise_by_shape):
    """Iterates the registry. The compiled step takes the layers' plain autograd ops and lets the compiler derive
    the backward; the eager step takes the fused Functions with hand-written gradients. Same loss, same gradients."""
    torch.manual_seed(0)
    model = bayesify(_mlp(), prior)
    images, labels = torch.randn(BATCH, 20), torch.randint(0, 16, (BATCH,))
    model.train()

    def loss_and_grads(step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss, nll, kl = step(images, labels, 0.5)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_loss, eager = loss_and_grads(lambda x, y, s: variational_loss(model(x), y, model, 1000, s))
    compiled_loss, compiled = loss_and_grads(compiled_objective(model, variational_loss, model, 1000))
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert compiled.keys() == eager.keys() and eager
    for name in eager:
        assert torch.allclose(compiled[name], eager[name], rtol=1e-4, atol=1e-6), name


def test_noise_operator_draws_fresh_normal_numbers_inside_a_compiled_function():
    """Two draws of the same shape in one compiled function are not merged, and they are standard normal."""
    torch._dynamo.reset()

    @torch.compile(dynamic=False)
    def two_draws(x: torch.Tensor):
        return x + noise.standard_normal(64, 512), x + noise.standard_normal(64, 512)

    first, second = two_draws(torch.zeros(64, 512))
    assert not torch.equal(first, second)
    again, _ = two_draws(torch.zeros(64, 512))
    assert not torch.equal(first, again)
    both = torch.cat([first, second]).double()
    assert abs(both.mean().item()) < 0.02 and abs(both.std().item() - 1.0) < 0.02
    torch._dynamo.reset()


def test_auto_compiles_long_bayesian_mlp_runs_only():
    mlp, cnn = bayesify(_mlp(), "gnj"), bayesify(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), "gnj")
    quiet = []
    assert decide(mlp, "cpu", False, False, 10_000, "auto", quiet.append)
    assert not decide(mlp, "cpu", False, False, 100, "auto", quiet.append)  # too short to pay for compiling
    assert not decide(cnn, "cpu", False, False, 10_000, "auto", quiet.append)
    assert not decide(_mlp(), "cpu", False, False, 10_000, "auto", quiet.append)  # plain networks stay eager
    assert decide(cnn, "cpu", False, False, 100, True, quiet.append)
    assert not decide(mlp, "cpu", False, False, 10_000, "off", quiet.append)
    assert quiet == []
    said = []
    assert not decide(mlp, "cuda", False, False, 10_000, "on", said.append)
    assert not decide(mlp, "cpu", True, False, 10_000, "on", said.append)
    assert len(said) == 2 and "CPU" in said[0] and "data-parallel" in said[1]
    with pytest.raises(ValueError, match="step compilation"):
        decide(mlp, "cpu", False, False, 10, "sometimes", said.append)


def test_process_setting_reads_the_environment(monkeypatch):
    monkeypatch.setattr(compiled_step, "_mode", {"name": None})
    monkeypatch.setenv("BAYESCOMP_COMPILE", "off")
    assert compiled_step.requested_step_compilation() == "off"
    compiled_step.set_step_compilation("on")
    assert compiled_step.requested_step_compilation() == "on"
    monkeypatch.setattr(compiled_step, "_mode", {"name": None})
    monkeypatch.setenv("BAYESCOMP_COMPILE", "always")
    with pytest.raises(ValueError, match="step compilation"):
        compiled_step.requested_step_compilation()


def test_fit_with_a_compiled_step_trains_resumes_and_compiles_once(mnist_small, tmp_path):
    """Real MNIST: a compiled BC-GNJ LeNet-300-100 run learns as the eager one does (same data, same noise source;
    the draws differ in order, so the runs are compared by their validation error, not bit for bit); the smaller
    last batch of each epoch runs eagerly, so the step is compiled once; an interrupted compiled run resumes and
    ends bit for bit where an uninterrupted compiled run ends."""
    from bayescomp.models import create_model

    def model():
        torch.manual_seed(0)
        return bayesify(create_model("lenet300", 10, mnist_small.input_shape, mnist_small.mean, mnist_small.std),
                        "gnj")

    config = TrainConfig(epochs=3, batch_size=96, lr=1e-3, seed=1)  # 2,000 examples: a last batch of 80
    assert len(mnist_small.train) % config.batch_size != 0
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = model()
    history = fit(compiled, mnist_small, config, checkpoint_path=tmp_path / "a.ckpt", progress=False,
                  log=lambda *_: None, compile_step=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert all(epoch.get("compiled_step") for epoch in history.epochs)
    eager = model()
    fit(eager, mnist_small, config, progress=False, log=lambda *_: None, compile_step=False)
    compiled_error, eager_error = (evaluate(m, mnist_small.val)["error_pct"] for m in (compiled, eager))
    assert compiled_error < 15.0 and abs(compiled_error - eager_error) < 3.0

    interrupted = model()
    fit(interrupted, mnist_small, config, checkpoint_path=tmp_path / "b.ckpt", progress=False, log=lambda *_: None,
        compile_step=True, stop_after_epochs=1)
    resumed = model()
    fit(resumed, mnist_small, config, checkpoint_path=tmp_path / "b.ckpt", progress=False, log=lambda *_: None,
        compile_step=True)
    for (name, a), (_, b) in zip(compiled.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    torch._dynamo.reset()


def test_compiled_layers_take_the_plain_ops_and_leave_no_cached_variance(noise_by_shape):
    """Inside a compiled step the fused Functions and the variance cache are bypassed (the compiler fuses the plain
    ops); outside it the layers use them again."""
    model = bayesify(_mlp(), "gnj")
    step = compiled_objective(model, variational_loss, model, 1000)
    step(torch.randn(BATCH, 20), torch.randint(0, 16, (BATCH,)), 1.0)
    for _, layer in bayesian_layers(model):
        assert layer._variance_cache()._entries == {}
        assert layer._fused_training()
    loss = F.cross_entropy(model(torch.randn(BATCH, 20)), torch.randint(0, 16, (BATCH,)))
    assert torch.isfinite(loss)
    assert any(layer._variance_cache()._entries for _, layer in bayesian_layers(model))


def test_many_compiled_objectives_in_one_process_each_compile(noise_by_shape):
    """Every compiled objective has a code object of its own: a process that trains more models than dynamo's
    per-code recompile limit (8) still compiles each of them instead of silently running eagerly."""
    torch._dynamo.utils.counters.clear()
    limit = torch._dynamo.config.recompile_limit
    for seed in range(limit + 2):
        torch.manual_seed(seed)
        model = bayesify(_mlp(), "gnj")
        compiled_objective(model, variational_loss, model, 1000)(torch.randn(BATCH, 20),
                                                                  torch.randint(0, 16, (BATCH,)), 1.0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == limit + 2


def test_a_failing_compiler_falls_back_to_eager_steps_and_says_so(mnist_small, monkeypatch):
    """A compiler that breaks (here: every compiled call raises, as a missing toolchain would) costs the run
    nothing: it logs the reason once and trains eagerly to the same kind of model. An error of the model itself,
    which the eager step raises too, is not hidden."""
    from bayescomp.models import create_model

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("C++ compile error\ncc1plus: fatal error")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = bayesify(create_model("lenet300", 10, mnist_small.input_shape, mnist_small.mean, mnist_small.std), "gnj")
    said = []
    history = fit(model, mnist_small, TrainConfig(epochs=2, batch_size=100, lr=1e-3), progress=False,
                  log=said.append, compile_step=True)
    assert sum("compilation failed (RuntimeError: C++ compile error)" in line for line in said) == 1, said
    assert evaluate(model, mnist_small.val)["error_pct"] < 20.0 and len(history.epochs) == 2

    wrong = bayesify(_mlp(), "gnj")  # 20 input features: a 784-pixel batch fails eagerly too
    step = compiled_objective(wrong, variational_loss, wrong, 1000, log=said.append)
    with pytest.raises(RuntimeError, match=r"64x784 and 20x32"):
        step(torch.randn(BATCH, 784), torch.randint(0, 16, (BATCH,)), 1.0)


def test_a_compiler_failing_on_the_backward_graph_falls_back_too(monkeypatch):
    """The backward graph is lowered with the forward at the first call, inside the fallback's guard: a compiler
    that fails only there (here: a backend whose backward compiler raises) still leaves a working eager step,
    whose gradients are those of the eager objective. Lowered lazily, at ``backward()``, the error would escape."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def backward_fails(graph, example_inputs):
        raise RuntimeError("backward lowering failed")

    backend = aot_autograd(fw_compiler=lambda graph, example_inputs: make_boxed_func(graph.forward),
                           bw_compiler=backward_fails)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend=backend, **kwargs))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = bayesify(_mlp(), "gnj")
    images, labels = torch.randn(BATCH, 20), torch.randint(0, 16, (BATCH,))
    said = []
    step = compiled_objective(model, variational_loss, model, 1000, log=said.append)
    torch.manual_seed(1)
    step(images, labels, 1.0)[0].backward()
    assert sum("compilation failed" in line and "backward lowering failed" in line for line in said) == 1, said
    compiled_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    variational_loss(model(images), labels, model, 1000, torch.tensor(1.0))[0].backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, compiled_grads[name], rtol=1e-5, atol=1e-6), name
