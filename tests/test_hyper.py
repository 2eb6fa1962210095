"""Conditional compression with the Bayesian hypernetwork: contexts, generation, budgets, training, files, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bayescomp import load
from bayescomp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bayescomp.cli import main
from bayescomp.hyper import (
    BudgetError, Context, ContextError, HyperCompressor, HyperConfig, generate, load_hypernetwork,
    masked_posterior_mean_logits, parse_classes, restrict, save_hypernetwork, train_hypernetwork, weight_variances,
)
from bayescomp.compress.precision import layer_precisions
from bayescomp.hyper.model import FACTORIZATIONS
from bayescomp.hyper.train import context_loss
from bayescomp.measure import count_flops
from bayescomp.models import create_model
from bayescomp.train import NonFiniteLossError, TrainConfig


@pytest.fixture(scope="module")
def teacher(mnist_small):
    torch.manual_seed(0)
    model = create_model("lenet5", 10, mnist_small.input_shape, mnist_small.mean, mnist_small.std)
    from bayescomp.train import fit

    fit(model, mnist_small, TrainConfig(epochs=1), progress=False, log=lambda *_: None)
    return model.eval()


def scrambled(teacher, factorization="input_output", seed=0) -> HyperCompressor:
    """A compressor whose heads are random, so that log alphas spread and differ between contexts (no training
    needed to exercise generation); W~ a point estimate, so that only the scales vary."""
    torch.manual_seed(seed)
    model = HyperCompressor(teacher, 10, (1, 28, 28),
                            HyperConfig(factorization=factorization, hidden=32, weight_posterior=False))
    with torch.no_grad():
        model.head_mu.weight.normal_(0, 0.05)
        model.head_mu.bias.normal_(0, 0.3)
        model.head_log_sigma2.weight.normal_(0, 0.3)
        model.head_log_sigma2.bias.normal_(-3, 2)
    return model.eval()


# ----------------------------------------------------------------------------------------------------- contexts
@pytest.mark.parametrize("classes, budget, message", [
    ([], 1.0, "no classes"),
    ([3], 1.0, "one class"),
    ([0, 10], 1.0, "unknown classes [10]"),
    ([-1, 2], 1.0, "unknown classes [-1]"),
    ([1, 2, 2], 1.0, "repeated"),
    ([1.5, 2], 1.0, "integers"),
    ([True, 2], 1.0, "integers"),
    ([1, 2], 0.0, "budget must be in (0, 1]"),
    ([1, 2], 1.5, "budget must be in (0, 1]"),
    ([1, 2], float("nan"), "budget must be in (0, 1]"),
    ([1, 2], -0.2, "budget must be in (0, 1]"),
])
def test_bad_contexts_get_clear_errors(classes, budget, message):
    with pytest.raises(ContextError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        Context.make(classes, 10, budget)


def test_contexts_are_sorted_and_accept_numpy_integers():
    context = Context.make(np.array([7, 0, 3]), 10, 0.25)
    assert context.classes == (0, 3, 7) and context.budget == 0.25
    vector = context.vector(10)
    assert vector[[0, 3, 7]].tolist() == [1, 1, 1] and float(vector[:10].sum()) == 3
    assert vector[-1].item() == pytest.approx(np.log(0.25))
    assert parse_classes(" 0, 3,7 ") == [0, 3, 7]
    with pytest.raises(ContextError, match="comma-separated"):
        parse_classes("0;3")


def test_restrict_renumbers_labels_to_context_positions(mnist_small):
    subset = restrict(mnist_small.test, [7, 2])
    original = mnist_small.test.labels[torch.isin(mnist_small.test.labels, torch.tensor([2, 7]))]
    assert len(subset) == len(original) > 0
    # positions follow the order given: 7 is 0, 2 is 1
    assert torch.equal(subset.labels, torch.where(original == 7, 0, 1))


# --------------------------------------------------------------------------------------------------- generation
def test_an_untrained_compressor_generates_the_teacher_cut_to_the_context(teacher, mnist_small):
    model = HyperCompressor(teacher, 10, (1, 28, 28)).eval()
    images = next(mnist_small.test.batches(64))[0]
    generated = generate(model, [1, 4, 9], threshold=100.0).model
    expected = teacher(images)[:, [1, 4, 9]]
    torch.testing.assert_close(generated(images), expected, rtol=1e-5, atol=1e-5)
    assert generated.classes == (1, 4, 9)


@pytest.mark.parametrize("factorization", FACTORIZATIONS)
def test_generated_network_equals_the_masked_posterior_mean_network(teacher, mnist_small, factorization):
    model = scrambled(teacher, factorization)
    images = next(mnist_small.test.batches(128))[0]
    generated = generate(model, [0, 3, 7], threshold=0.0)
    assert generated.weights_kept < model.dense_weights()  # something was pruned
    reference = masked_posterior_mean_logits(model, images, generated)
    torch.testing.assert_close(generated.model(images), reference, rtol=1e-4, atol=1e-4)
    assert count_flops(generated.model, (1, 28, 28)) == generated.flops
    assert sum(m.weight.numel() for m in generated.model.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))) == generated.weights_kept


def test_generation_is_deterministic_and_differs_between_contexts(teacher):
    model = scrambled(teacher)
    a, b = generate(model, [2, 5], threshold=0.0), generate(model, [5, 2], threshold=0.0)
    assert a.kept_architecture == b.kept_architecture
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    c = generate(model, [2, 5, 8], threshold=0.0)
    assert c.kept_architecture != a.kept_architecture or c.weights_kept != a.weights_kept


def test_budget_caps_compute_and_impossible_budgets_are_refused(teacher):
    model = scrambled(teacher)
    for budget in (1.0, 0.5, 0.2, 0.1, 0.03):
        generated = generate(model, [1, 2, 3], budget=budget, threshold=4.0)
        assert generated.flops_fraction <= budget + 1e-12
        assert count_flops(generated.model, (1, 28, 28)) == generated.flops
    with pytest.raises(BudgetError, match="raise the budget"):
        generate(model, [1, 2, 3], budget=1e-6, threshold=4.0)


def test_generation_without_a_threshold_asks_for_calibration(teacher):
    with pytest.raises(ValueError, match="calibrate"):
        generate(HyperCompressor(teacher, 10, (1, 28, 28)), [0, 1])


def test_a_threshold_that_prunes_everything_is_a_clear_error(teacher):
    model = scrambled(teacher)
    with pytest.raises(ValueError, match="keeps nothing"):
        generate(model, [0, 1], threshold=-1e6)


# ---------------------------------------------------------------------------------------------------- bit widths
def with_weight_posterior(teacher, seed=0) -> HyperCompressor:
    """``scrambled`` with a weight posterior whose variances spread over three orders of magnitude."""
    torch.manual_seed(seed)
    model = HyperCompressor(teacher, 10, (1, 28, 28), HyperConfig(hidden=32, weight_posterior=True))
    reference = scrambled(teacher, seed=seed)
    model.load_state_dict(reference.state_dict(), strict=False)
    with torch.no_grad():
        for p in model.weight_log_sigma2:
            p.uniform_(-12.0, -3.0)
    return model.eval()


@pytest.mark.parametrize("factorization, weight_posterior", [(f, False) for f in FACTORIZATIONS]
                         + [("input_output", True)])
def test_weight_variances_match_sampled_scales(teacher, factorization, weight_posterior):
    """Var(W) of W = z_out W~ z_in against the spread of weights built from sampled scales (and sampled W~ with a
    weight posterior), independent of the closed form, on a few hundred weights of every layer."""
    model = with_weight_posterior(teacher) if weight_posterior else scrambled(teacher, factorization)
    mu, log_sigma2 = model.posterior(torch.eye(11)[[0, 3, 7]].sum(0).reshape(1, -1))
    mu, log_sigma2 = mu[0].detach(), log_sigma2[0].detach()
    variances = weight_variances(model, mu, log_sigma2)
    gen = torch.Generator().manual_seed(1)
    samples = mu + torch.randn(20000, mu.numel(), generator=gen) * (0.5 * log_sigma2).exp()
    layers = [m for m in model.net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    ratios = []
    shared = model.shared_weight_variances()
    for module, variance, (z_in, z_out), s2 in zip(layers, variances, model.split(samples), shared):
        assert variance.shape == module.weight.shape
        if z_in is None and z_out is None:  # a layer without scales is deterministic
            assert not variance.any()
            continue
        flat = module.weight.detach().reshape(module.weight.shape[0], module.weight.shape[1], -1)
        rows = torch.randint(0, flat.shape[0], (300,), generator=gen)
        cols = torch.randint(0, flat.shape[1], (300,), generator=gen)
        w = flat[rows, cols, 0]
        if s2 is not None:  # W~ drawn too, independently per draw
            w = w + torch.randn(samples.shape[0], w.numel(), generator=gen) * s2.detach().reshape(
                flat.shape)[rows, cols, 0].sqrt()
        drawn = w * (1.0 if z_out is None else z_out[:, rows]) * (1.0 if z_in is None else z_in[:, cols])
        expected = variance.reshape(flat.shape)[rows, cols, 0]
        big = expected > 1e-6 * float(expected.max())
        ratios.append(drawn.var(0)[big] / expected[big])
    ratios = torch.cat(ratios)
    assert ratios.numel() > 500
    assert abs(float(ratios.mean()) - 1.0) < 0.01 and float((ratios - 1).abs().max()) < 0.15


def test_local_reparameterisation_draws_what_sampled_weights_give():
    """With a weight posterior, the training forward's pre-activations (local reparameterisation) have the
    distribution that drawing every weight per example gives: mean and variance of each logit over 20,000 draws
    of one input, against explicitly sampled weights through the same two-layer network."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    model = HyperCompressor(teacher, 3, (1, 2, 3), HyperConfig(hidden=8, weight_posterior=True))
    with torch.no_grad():
        model.head_mu.bias.normal_(0, 0.3)
        for p in model.weight_log_sigma2:
            p.uniform_(-4.0, -2.0)
    mu, _ = model.posterior(torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    scales = model.split(mu[0].detach())  # fixed scales: only the weights are random here
    x = torch.rand(1, 1, 2, 3).expand(20000, 1, 2, 3)
    with torch.no_grad():
        lrt = model.forward_with_scales(x, scales, sample_weights=True)
        first, second = model.prunable()
        s1, s2 = model.shared_weight_variances()
        (z1_in, z1_out), (z2_in, _) = scales
        w1 = first.weight + torch.randn(20000, 5, 6) * s1.sqrt()
        w2 = second.weight + torch.randn(20000, 3, 5) * s2.sqrt()
        h = torch.relu((torch.einsum("bi,boi->bo", x.reshape(20000, 6) * z1_in, w1) + first.bias) * z1_out)
        drawn = torch.einsum("bi,boi->bo", h * z2_in, w2) + second.bias
    torch.testing.assert_close(lrt.mean(0), drawn.mean(0), rtol=0, atol=4 * float(drawn.std(0).max()) / 141)
    torch.testing.assert_close(lrt.var(0), drawn.var(0), rtol=0.06, atol=0)
    assert float(drawn.var(0).min()) > 1e-4  # the weights' noise is visible at the output


def test_weight_posterior_kl_enters_the_loss_once_per_training_set(teacher, mnist_small):
    model = with_weight_posterior(teacher).train()
    bound = torch.log(torch.tensor(model.config.weight_clip_var))
    by_hand = sum(0.5 * float((p.clamp(max=bound).exp() + m.weight.pow(2) - 1 - p.clamp(max=bound)).sum().detach())
                  for m, p in zip(model.prunable(), model.weight_log_sigma2))
    assert float(model.weight_kl().detach()) == pytest.approx(by_hand, rel=1e-5)
    images, labels = next(mnist_small.train.batches(64))
    keep = labels < 3
    args = (images[keep], labels[keep], torch.eye(11)[[0, 1, 2]].sum(0), [0, 1, 2], 0.5, 600)
    torch.manual_seed(5)
    with_kl, _, kl_scales = context_loss(model, *args, 1.0, n_train=60000)
    torch.manual_seed(5)
    without_kl, _, _ = context_loss(model, *args, 0.0, n_train=60000)
    expected = 0.5 ** -model.config.budget_power * float(kl_scales.detach()) / 600 + by_hand / 60000
    assert float((with_kl - without_kl).detach()) == pytest.approx(expected, rel=1e-4)
    with_kl.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.weight_log_sigma2)


def test_a_weight_posterior_compressor_survives_saving_and_loading(teacher, tmp_path):
    model = with_weight_posterior(teacher)
    model.threshold.fill_(0.0)
    save_hypernetwork(model, tmp_path / "hyper.pt", {"model": "lenet5", "data": "mnist", "mean": [0.1307],
                                                    "std": [0.3081]})
    loaded = load_hypernetwork(tmp_path / "hyper.pt", teacher=teacher)
    assert loaded.config.weight_posterior
    for a, b in zip(model.weight_log_sigma2, loaded.weight_log_sigma2):
        assert torch.equal(a, b)
    assert generate(model, [1, 5]).bits_per_layer == generate(loaded, [1, 5]).bits_per_layer


def test_a_file_from_before_the_weight_posterior_loads_without_one(teacher, tmp_path):
    """Compressors saved before ``weight_posterior`` existed have no such config key (the committed MNIST and
    Fashion-MNIST ones among them): they load as what they are, whatever the option's default."""
    model = HyperCompressor(teacher, 10, (1, 28, 28), HyperConfig(hidden=32, weight_posterior=False))
    model.threshold.fill_(0.0)
    save_hypernetwork(model, tmp_path / "hyper.pt", {"model": "lenet5", "data": "mnist", "mean": [0.1307],
                                                    "std": [0.3081]})
    blob = torch.load(tmp_path / "hyper.pt", weights_only=True)
    del blob["config"]["weight_posterior"], blob["config"]["weight_clip_var"]
    torch.save(blob, tmp_path / "old.pt")
    loaded = load_hypernetwork(tmp_path / "old.pt", teacher=teacher)
    assert not loaded.config.weight_posterior and len(loaded.weight_log_sigma2) == 0
    assert generate(loaded, [1, 5]).weights_kept == generate(model, [1, 5]).weights_kept


def test_generated_networks_carry_bits_from_their_kept_weights_variance(teacher, mnist_small):
    model = scrambled(teacher)
    generated = generate(model, [0, 3, 7], threshold=0.0)
    mu, log_sigma2 = model.posterior(torch.eye(11)[[0, 3, 7]].sum(0).reshape(1, -1))
    mu, log_sigma2 = mu[0].detach(), log_sigma2[0].detach()
    layers = [m for m in model.net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    small = [m for m in generated.model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    kept_variances = []
    for i, (module, (m_in, m_out)) in enumerate(zip(layers, model.split(mu))):
        spatial = (1,) * (module.weight.dim() - 2)
        effective = module.weight.detach() * (1.0 if m_out is None else m_out.view(-1, 1, *spatial)) \
            * (1.0 if m_in is None else m_in.view(1, -1, *spatial))
        keep_in, keep_out = generated.plan.in_keep[i], generated.plan.out_keep[i]
        # the generated layer holds exactly these weights, so the variances are cut the same way
        torch.testing.assert_close(small[i].weight, effective[keep_out][:, keep_in])
        kept_variances.append(weight_variances(model, mu, log_sigma2)[i][keep_out][:, keep_in])
    expected = layer_precisions(kept_variances, [m.weight.detach() for m in small])
    assert generated.precisions == expected and generated.bits_per_layer == [p.total_bits for p in expected]
    assert all(b < 32 for b in generated.bits_per_layer)
    bits = sum(m.weight.numel() * b for m, b in zip(small, generated.bits_per_layer))
    assert generated.compression_bits == pytest.approx(32 * model.dense_weights() / bits)
    quantized = [m for m in generated.quantized_model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    for q, m, p in zip(quantized, small, generated.precisions):
        codes = q.weight / p.step
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)  # on the layer's grid
        assert float((q.weight - m.weight).detach().abs().max()) <= p.step / 2 + 1e-7
    images = next(mnist_small.test.batches(256))[0]
    agree = (generated.quantized_model(images).argmax(1) == generated.model(images).argmax(1)).float().mean()
    assert float(agree) > 0.95 and generated.quantized_model.classes == (0, 3, 7)


# ------------------------------------------------------------------------------------------------------ training
def test_group_kl_falls_as_log_alpha_rises(teacher):
    """The group KL is BC-GNJ's (tested against Monte Carlo in test_priors); here: the wiring, per group."""
    model = scrambled(teacher)
    mu = torch.ones(1, model.num_groups)
    kls = [float(model.kl_divergence(mu, torch.full_like(mu, s))) for s in (-8.0, -4.0, 0.0, 4.0)]
    assert kls == sorted(kls, reverse=True) and kls[-1] >= 0


def test_interrupted_training_resumes_exactly(teacher, mnist_small, tmp_path):
    config = TrainConfig(epochs=2, batch_size=128, lr=1e-3, seed=3)

    def fresh():
        torch.manual_seed(0)
        return HyperCompressor(teacher, 10, (1, 28, 28), HyperConfig(hidden=32))

    whole = fresh()
    history = train_hypernetwork(whole, mnist_small, config, tmp_path / "a.ckpt", progress=False, log=lambda *_: None)
    assert np.isfinite(history[-1]["loss"])
    split = fresh()
    train_hypernetwork(split, mnist_small, config, tmp_path / "b.ckpt", progress=False, log=lambda *_: None,
                       stop_after_epochs=1)
    resumed = fresh()
    train_hypernetwork(resumed, mnist_small, config, tmp_path / "b.ckpt", progress=False, log=lambda *_: None)
    for (name, x), (_, y) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(teacher, mnist_small, tmp_path):
    torch.manual_seed(0)
    model = HyperCompressor(teacher, 10, (1, 28, 28), HyperConfig(hidden=16))
    ckpt = tmp_path / "h.ckpt"
    train_hypernetwork(model, mnist_small, TrainConfig(epochs=2), ckpt, progress=False, log=lambda *_: None,
                       stop_after_epochs=1)
    before = ckpt.read_bytes()
    with torch.no_grad():
        model.head_mu.bias.fill_(float("nan"))
    state = load_checkpoint(ckpt)
    state["model"] = model.state_dict()
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version", "checkpoint_file")}, ckpt)
    with pytest.raises(NonFiniteLossError, match="checkpoint of the last completed epoch is kept"):
        train_hypernetwork(model, mnist_small, TrainConfig(epochs=2), ckpt, progress=False, log=lambda *_: None)
    assert ckpt.read_bytes() != before and ckpt.exists()


def test_context_loss_only_sees_the_context_classes(teacher, mnist_small):
    # W~ a point estimate: the teacher's own logits, up to the scales' tiny noise
    model = HyperCompressor(teacher, 10, (1, 28, 28), HyperConfig(hidden=16, weight_posterior=False))
    images, labels = next(restrict(mnist_small.train, [4, 6]).batches(64))
    context = Context.make([4, 6], 10)
    loss, nll, kl = context_loss(model, images, labels, context.vector(10), [4, 6], 1.0, 1000, 0.0)
    logits = teacher(images)[:, [4, 6]]
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert nll.item() == pytest.approx(expected.item(), rel=0.05)  # scales start at 1 with tiny noise
    assert loss.item() == pytest.approx(nll.item())  # kl_scale 0


# ---------------------------------------------------------------------------------------------------------- files
def test_save_and_load_roundtrip_and_corrupt_files(teacher, tmp_path):
    model = scrambled(teacher)
    model.threshold.fill_(0.5)
    path = tmp_path / "hyper.pt"
    save_hypernetwork(model, path, {"model": "lenet5", "data": "mnist", "mean": [0.1307], "std": [0.3081]})
    loaded = load_hypernetwork(path, teacher=create_model("lenet5", 10, (1, 28, 28), [0.1307], [0.3081]))
    a, b = generate(model, [0, 8]), generate(loaded, [0, 8])
    assert a.kept_architecture == b.kept_architecture and b.threshold == 0.5
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_hypernetwork(path)
    with pytest.raises(CheckpointError, match="no such hypernetwork file"):
        load_hypernetwork(tmp_path / "missing.pt")


def test_cli_hyper_train_and_generate_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "hyper"
    assert main(["hyper", "train", "--model", "lenet5", "--epochs", "1", "--run-dir", str(run_dir),
                 "--no-progress", "--option", "hidden=32", "--train-subset", "1500", "--test-subset", "600",
                 "--val-size", "500"]) == 0
    capsys.readouterr()
    assert (run_dir / "hyper.pt").exists()
    train = json.loads((run_dir / "train.json").read_text())
    assert np.isfinite(train["calibration"]["threshold"])
    out = tmp_path / "gen"
    assert main(["hyper", "generate", str(run_dir), "--classes", "0,3,7", "--budget", "0.5", "--out", str(out),
                 "--no-latency"]) == 0
    printed = capsys.readouterr().out
    assert "generated for classes [0, 3, 7]" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["flops_fraction"] <= 0.5 and report["classes"] == [0, 3, 7]
    model = load(out / "compressed.bcz")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    # stored at the bit widths its scales allow: smaller than the same network in float32, and it loads as the
    # quantised network the report's second error was measured on
    assert len(report["bits_per_layer"]) == 4 and max(report["bits_per_layer"]) < 32
    assert report["compression_bits"] > report["compression_weights"]
    floats = sum(p.numel() * 4 for p in model.parameters())
    assert report["file_bytes"] < floats
    assert "bits per layer" in (out / "report.md").read_text()
    assert main(["hyper", "generate", str(run_dir), "--classes", "0,3,3", "--out", str(out)]) == 2
    assert "repeated" in capsys.readouterr().err
    assert main(["hyper", "generate", str(run_dir), "--classes", "0,3", "--budget", "2", "--out", str(out)]) == 2
    assert "budget must be in (0, 1]" in capsys.readouterr().err


def test_budget_masked_training_runs_the_network_generation_would_give(teacher, mnist_small):
    """With budget masking, the training loss of a context with b < 1 is the loss of the generated network (the
    budget alone pruning); checked against the generated plain model (scales nearly deterministic)."""
    import math

    model = scrambled(teacher)
    model.config.budget_masking = True
    with torch.no_grad():
        model.head_log_sigma2.weight.zero_()
        model.head_log_sigma2.bias.fill_(-30.0)
    model.config.max_log_sigma2 = 0.0
    images, labels = next(restrict(mnist_small.train, [1, 5, 8]).batches(64))
    context = Context.make([1, 5, 8], 10, 0.1)
    _, nll, _ = context_loss(model, images, labels, context.vector(10), [1, 5, 8], 0.1, 1000, 0.0)
    generated = generate(model, context, threshold=math.inf)
    assert generated.flops_fraction <= 0.1
    expected = torch.nn.functional.cross_entropy(generated.model(images), labels)
    assert nll.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    model.config.budget_masking = False
    _, unmasked, _ = context_loss(model, images, labels, context.vector(10), [1, 5, 8], 0.1, 1000, 0.0)
    assert unmasked.item() != pytest.approx(nll.item(), rel=1e-3)
