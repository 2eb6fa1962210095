"""The magnitude-pruning baseline: masks against independent computations, gradual pruning on real MNIST, and
the compression path (small model == masked model)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from bayescomp.compress import build_chain, propagate
from bayescomp.compress.masks import group_keep_from_thresholds
from bayescomp.magnitude import (
    MagnitudeConfig, magnitude_compress, magnitude_masks, nonzero_weights, prune_and_finetune, schedule,
)
from bayescomp.models import create_model
from bayescomp.train import TrainConfig, evaluate, fit


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 12), nn.ReLU(),
                         nn.Linear(12, 5))


def _convnet(seed: int = 0, last_conv: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    if last_conv:
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 4))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _group_norms(weight: torch.Tensor) -> torch.Tensor:
    """Independent group definition: Linear input columns, Conv2d output filters."""
    return weight.norm(dim=0) if weight.dim() == 2 else weight.flatten(1).norm(dim=1)


# --- unstructured -------------------------------------------------------------------------------------------

def test_unstructured_global_keeps_exactly_the_top_k_magnitudes():
    model = _mlp()
    weights = _weights(model)
    sparsity = 0.7
    masks = magnitude_masks(model, MagnitudeConfig(sparsity=sparsity), sparsity)
    everything = torch.cat([w.abs().flatten() for w in weights])
    k = everything.numel() - round(sparsity * everything.numel())
    kth_largest = torch.sort(everything, descending=True).values[k - 1]
    for mask, w in zip(masks, weights):
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert torch.equal(mask, w.abs() >= kth_largest)
    assert sum(int(m.sum()) for m in masks) == k  # the target up to rounding of sparsity * n
    # and the same as torch's own global pruning
    reference = copy.deepcopy(model)
    layers = [m for m in reference.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured([(m, "weight") for m in layers], prune.L1Unstructured, amount=sparsity)
    for mask, layer in zip(masks, layers):
        assert torch.equal(mask, layer.weight_mask.bool())


def test_unstructured_layer_scope_prunes_the_fraction_of_every_layer():
    model = _mlp(1)
    weights = _weights(model)
    masks = magnitude_masks(model, MagnitudeConfig(sparsity=0.6, scope="layer"), 0.6)
    for mask, w in zip(masks, weights):
        k = w.numel() - round(0.6 * w.numel())
        assert int(mask.sum()) == k
        assert bool(w.abs()[mask].min() >= w.abs()[~mask].max())  # the largest k of this layer


def test_keep_min_stops_global_pruning_from_emptying_a_layer():
    model = _mlp(2)
    with torch.no_grad():
        model[5].weight.mul_(1e-4)  # the output layer's weights all rank below everything else
    w_last = model[5].weight.detach().abs().flatten()
    n = sum(w.numel() for w in _weights(model))
    k = n - round(0.9 * n)
    emptied = magnitude_masks(model, MagnitudeConfig(sparsity=0.9, keep_min=0), 0.9)
    assert int(emptied[2].sum()) == 0  # without the guard the layer is gone
    masks = magnitude_masks(model, MagnitudeConfig(sparsity=0.9, keep_min=3), 0.9)
    assert int(masks[2].sum()) == 3
    assert torch.equal(masks[2].flatten(), w_last >= torch.sort(w_last, descending=True).values[2])
    assert sum(int(m.sum()) for m in masks) == k  # the reserve comes out of the same budget


def test_previously_pruned_weights_stay_pruned():
    model = _mlp(3)
    config = MagnitudeConfig(sparsity=0.8)
    first = magnitude_masks(model, config, 0.5)
    with torch.no_grad():  # make some pruned weights the largest of all: they must not come back
        model[1].weight[~first[0]] = 10.0
    second = magnitude_masks(model, config, 0.8, previous=first)
    assert all(not bool((s & ~f).any()) for s, f in zip(second, first))
    n = sum(m.numel() for m in second)
    assert sum(int(m.sum()) for m in second) == n - round(0.8 * n)


def test_schedule_is_cubic_and_ends_at_the_target():
    config = MagnitudeConfig(sparsity=0.9, rounds=4)
    values = [schedule(config, r) for r in range(1, 5)]
    assert values[-1] == pytest.approx(0.9)
    assert values[0] == pytest.approx(0.9 * (1 - 0.75**3))
    assert all(a < b for a, b in zip(values, values[1:]))
    assert all(b - a > c - b for a, b, c in zip(values, values[1:], values[2:]))  # big steps first


# --- structured ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["layer", "global"])
def test_structured_removes_the_smallest_groups(scope):
    model = _convnet()
    weights = _weights(model)
    # keep_min=0: the reserve of keep_min groups per layer would (rightly) take part of the global budget here
    config = MagnitudeConfig(sparsity=0.5, structured=True, scope=scope, keep_min=0)
    masks = magnitude_masks(model, config, 0.5)
    norms = [_group_norms(w) for w in weights]
    if scope == "layer":
        expected = []
        for nrm in norms:
            k = nrm.numel() - round(0.5 * nrm.numel())
            expected.append(nrm >= torch.sort(nrm, descending=True).values[k - 1])
    else:
        sizes = [w.numel() // nrm.numel() for w, nrm in zip(weights, norms)]
        rms = torch.cat([nrm / math.sqrt(s) for nrm, s in zip(norms, sizes)])
        k = rms.numel() - round(0.5 * rms.numel())
        keep = rms >= torch.sort(rms, descending=True).values[k - 1]
        expected = list(torch.split(keep, [nrm.numel() for nrm in norms]))
    for mask, w, exp in zip(masks, weights, expected):
        groups = mask.t() if w.dim() == 2 else mask.flatten(1)  # rows = groups
        assert bool((groups.all(dim=1) | ~groups.any(dim=1)).all()), "groups are whole columns/filters"
        assert torch.equal(groups.any(dim=1), exp)


def test_structured_never_removes_the_outputs_of_a_final_conv():
    model = _convnet(last_conv=True)
    masks = magnitude_masks(model, MagnitudeConfig(sparsity=0.5, structured=True, scope="layer"), 0.5)
    assert bool(masks[1].all())
    assert int(masks[0].flatten(1).any(dim=1).sum()) == 3


# --- gradual pruning with fine-tuning on real MNIST ---------------------------------------------------------

def test_prune_and_finetune_lenet300_on_mnist(mnist_small):
    data = mnist_small
    torch.manual_seed(0)
    model = create_model("lenet300", 10, data.input_shape, data.mean, data.std)
    fit(model, data, TrainConfig(epochs=1, batch_size=64, seed=0), progress=False, log=lambda s: None)
    before = _weights(model)
    lines: list[str] = []
    masks = prune_and_finetune(model, data, MagnitudeConfig(sparsity=0.9, rounds=2),
                               TrainConfig(epochs=2, batch_size=64, seed=1), log=lines.append)
    total = sum(w.numel() for w in before)
    assert nonzero_weights(model) <= sum(int(m.sum()) for m in masks)
    assert 1 - nonzero_weights(model) / total >= 0.9 - 1e-3
    after = _weights(model)
    for mask, w, w0 in zip(masks, after, before):
        assert bool((w[~mask] == 0).all())
        assert not torch.equal(w[mask], w0[mask]), "the kept weights were fine-tuned"
    for module in model.modules():
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
        assert not module._forward_pre_hooks
    plain = create_model("lenet300", 10, data.input_shape, data.mean, data.std)
    assert list(model.state_dict()) == list(plain.state_dict())
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert sum("round" in line for line in lines) == 2 and sum("epoch" in line for line in lines) >= 2
    assert evaluate(model, data.test)["error_pct"] < 20.0


def test_structured_prune_and_finetune_conv_compresses_exactly(mnist_small):
    data = mnist_small
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 10))
    config = MagnitudeConfig(sparsity=0.5, structured=True, scope="layer", rounds=2)
    masks = prune_and_finetune(model, data, config, TrainConfig(epochs=2, batch_size=64, seed=0),
                               log=lambda s: None)
    removed = ~masks[0].flatten(1).any(dim=1)
    assert int(removed.sum()) == 4
    assert bool((model[0].bias[removed] == 0).all()), "a removed filter loses its bias too"
    result = magnitude_compress(model, masks)
    assert result.architecture_kept[0] == 4 < result.architecture_dense[0]
    x = data.test.images[:64].float() / 255.0
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model.eval()(x), rtol=1e-5, atol=1e-5)


# --- compression --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("structured,scope", [(False, "global"), (True, "global"), (True, "layer")])
def test_magnitude_compress_small_model_equals_masked_model(structured, scope):
    torch.manual_seed(0)
    model = create_model("lenet300", 10, (1, 28, 28), (0.13,), (0.31,))
    sparsity = 0.5 if structured else 0.95
    config = MagnitudeConfig(sparsity=sparsity, structured=structured, scope=scope)
    masks = magnitude_masks(model, config, sparsity)
    state = copy.deepcopy(model.state_dict())
    result = magnitude_compress(model, masks)
    for key, value in model.state_dict().items():  # the input model is untouched
        assert torch.equal(value, state[key])
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for m, mask in zip([m for m in reference.modules() if isinstance(m, nn.Linear)], masks):
            m.weight.mul_(mask)
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.quantized_model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert result.weights_kept <= result.weights_dense == 784 * 300 + 300 * 100 + 100 * 10
    assert nonzero_weights(result.model) <= nonzero_weights(reference)  # also drops rows nobody reads
    assert [p.total_bits for p in result.precisions] == [32, 32, 32]
    assert result.search_path == [] and result.base_val_error_pct is None
    if structured:  # half of the groups go: the architecture shrinks (in every layer with layer scope)
        removed = round(0.5 * (784 + 300 + 100))
        assert sum(result.architecture_kept) == sum(result.architecture_dense) - removed
        assert result.weights_kept < result.weights_dense
        if scope == "layer":
            assert result.architecture_kept == [392, 150, 50]
    # the thresholds on the statistics reproduce the plan
    chain = build_chain(reference)
    again = propagate(chain, group_keep_from_thresholds(result.log_alpha, result.thresholds))
    for a, b in zip(again.in_keep + again.out_keep, result.plan.in_keep + result.plan.out_keep):
        assert torch.equal(a, b)


def test_nonzero_weights_counts_weight_entries_only():
    model = _mlp()
    with torch.no_grad():
        model[1].weight[:5] = 0.0
        model[1].bias.zero_()
    assert nonzero_weights(model) == 20 * 30 + 30 * 12 + 12 * 5 - 5 * 20


# --- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan")])
def test_sparsity_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="sparsity"):
        MagnitudeConfig(sparsity=bad)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_masks(_mlp(), MagnitudeConfig(), bad)


def test_other_bad_options_are_refused():
    with pytest.raises(ValueError, match="scope"):
        MagnitudeConfig(scope="net")
    with pytest.raises(ValueError, match="rounds"):
        MagnitudeConfig(rounds=0)
