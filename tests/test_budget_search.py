"""The greedy search to a compute budget (``CompressConfig(target_macs=..., search="greedy")``): it stops at the first
plan within budget, prunes inside each unit in the posterior's order, spreads the cut by the validation error, and
refuses a budget no plan reaches. Synthetic problems have a known answer; the real-model check counts MACs on the
cut network independently."""

from __future__ import annotations

import pytest
import torch

from bayescomp.compress import CompressConfig, PruneError, compress
from bayescomp.compress.search import (BUDGET_ORDERS, _advanced, budget_greedy_search, budget_uniform_search,
                                       thresholds_for_counts)
from bayescomp.measure import count_flops
from bayescomp.models import create_model
from tests.test_graph import Branchy, _noisy

UNIT_COST = (10.0, 3.0, 1.0)  # cost of one kept group, per unit
SIZES = (8, 16, 32)


def _problem(sensitive_unit: int):
    """Three units; pruning a group of ``sensitive_unit`` raises the error by 5 points, others by 0.01 each."""
    generator = torch.Generator().manual_seed(0)
    stats = [torch.randn(n, generator=generator) for n in SIZES]

    def make_plan(pruned: list[int]) -> list[int]:
        if any(p >= n for p, n in zip(pruned, SIZES)):
            raise PruneError("a unit lost every group")
        return list(pruned)

    def cost(plan: list[int]) -> float:
        return sum((n - p) * c for n, p, c in zip(SIZES, plan, UNIT_COST))

    def error(plan: list[int]) -> float:
        return 1.0 + sum(p * (5.0 if i == sensitive_unit else 0.01) for i, p in enumerate(plan))

    return stats, make_plan, cost, error


@pytest.mark.parametrize("sensitive_unit", [0, 1, 2])
def test_budget_greedy_spares_the_unit_whose_cut_hurts(sensitive_unit):
    stats, make_plan, cost, error = _problem(sensitive_unit)
    dense = cost([0, 0, 0])
    spare = UNIT_COST[sensitive_unit] * SIZES[sensitive_unit]
    budget = dense - 0.5 * (dense - spare)  # reachable by the other two units alone
    result = budget_greedy_search(stats, make_plan, cost, budget, lambda plan: 0, error)
    assert cost(result.plan) <= budget
    assert result.path[-2]["cost"] > budget, "it must stop at the first plan within budget"
    assert result.plan[sensitive_unit] == 0
    assert result.val_error_pct == pytest.approx(error(result.plan))
    assert result.base_val_error_pct == pytest.approx(1.0)
    # the returned thresholds prune exactly the groups with the largest statistic in each unit
    for s, t, p in zip(stats, result.thresholds, result.plan):
        assert int((s > t).sum()) == p
        if p:
            assert bool((s[s > t].min() >= s[s < t].max()))


def test_budget_greedy_takes_the_sensitive_unit_only_when_it_must():
    stats, make_plan, cost, error = _problem(0)
    floor_without_unit0 = cost([0, SIZES[1] - 1, SIZES[2] - 1])
    result = budget_greedy_search(stats, make_plan, cost, floor_without_unit0 - 5.0, lambda plan: 0, error)
    assert result.plan[0] >= 1
    assert cost(result.plan) <= floor_without_unit0 - 5.0


def test_budget_greedy_refuses_an_unreachable_budget():
    stats, make_plan, cost, error = _problem(0)
    floor = cost([n - 1 for n in SIZES])
    with pytest.raises(PruneError, match="no plan reaches the budget"):
        budget_greedy_search(stats, make_plan, cost, floor - 1.0, lambda plan: 0, error)
    exact = budget_greedy_search(stats, make_plan, cost, floor, lambda plan: 0, error)
    assert exact.plan == [n - 1 for n in SIZES]


def test_thresholds_for_counts_matches_the_counts():
    stats = [torch.tensor([0.5, -1.0, 2.0, 1.0])]
    (threshold,) = thresholds_for_counts(stats, [2])
    assert int((stats[0] > threshold).sum()) == 2


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_greedy_mac_budget_on_real_models(target, mnist_small):
    """Graph (branchy conv net) and chain (LeNet-300-100): the cut network, counted independently, meets the budget;
    the search path ends at the reported cost; the model is left unchanged."""
    for model in (Branchy(), create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])):
        bayes = _noisy(model, seed=3)
        before = {k: v.clone() for k, v in bayes.state_dict().items()}
        shape = tuple(mnist_small.val.example(1).shape[1:])
        dense_macs = count_flops(model, shape)
        config = CompressConfig(target_macs=target, search="greedy", fold_empty_units=False, search_val_size=200)
        result = compress(bayes, mnist_small.val, config)
        assert count_flops(result.model, shape) <= dense_macs / target
        assert result.search_path[-1]["cost"] == count_flops(result.model, shape)
        assert len(result.search_path) >= 2 and result.search_path[-2]["cost"] > dense_macs / target
        assert all(torch.equal(before[k], v) for k, v in bayes.state_dict().items())


# --- a weight budget beside the MAC budget (``CompressConfig(target_weights=...)``)
UNIT_WEIGHTS = (1, 3, 10)  # weights of one kept group, per unit: the MAC-heavy unit holds few weights (as a CNN's stem)


def _weights(plan: list[int]) -> int:
    return sum((n - p) * w for n, p, w in zip(SIZES, plan, UNIT_WEIGHTS))


def _flat_problem():
    """Every pruned group costs the same 0.01 points, so only the savings steer the search."""
    stats, make_plan, cost, _ = _problem(0)
    return stats, make_plan, cost, lambda plan: 1.0 + 0.01 * sum(plan)


def test_weight_budget_moves_the_cut_to_the_units_holding_the_weights():
    """With MACs alone the search cuts the MAC-heavy unit; a weight budget it cannot meet there makes it cut the
    weight-heavy unit too, and it stops at the first plan meeting both budgets."""
    stats, make_plan, cost, error = _flat_problem()
    dense_cost, dense_weights = cost([0, 0, 0]), _weights([0, 0, 0])
    mac_budget, weight_budget = 0.7 * dense_cost, 0.5 * dense_weights
    macs_only = budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error)
    assert macs_only.plan[0] > 0 and macs_only.plan[2] == 0
    assert _weights(macs_only.plan) > weight_budget, "the problem must need the weight budget to change the cut"
    both = budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget)
    assert cost(both.plan) <= mac_budget and _weights(both.plan) <= weight_budget
    assert both.plan[2] > 0
    before = both.path[-2]
    assert before["cost"] > mac_budget or before["weights_kept"] > weight_budget
    assert both.path[-1]["weights_kept"] == _weights(both.plan)
    # an unreachable weight budget is refused, naming it
    with pytest.raises(PruneError, match="weights"):
        budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error,
                             weight_budget=_weights([n - 1 for n in SIZES]) - 1)


def test_weight_budget_alone_and_a_mac_budget_alone_are_unchanged():
    """``budget=inf`` with a weight budget prunes to the weights only; without ``weight_budget`` the search is the
    MAC-only search (same plan as when the weights are not counted at all)."""
    stats, make_plan, cost, error = _flat_problem()
    weight_budget = 0.6 * _weights([0, 0, 0])
    alone = budget_greedy_search(stats, make_plan, cost, float("inf"), _weights, error, weight_budget=weight_budget)
    assert _weights(alone.plan) <= weight_budget < alone.path[-2]["weights_kept"]
    assert alone.plan[2] > 0
    budget = 0.6 * cost([0, 0, 0])
    counted = budget_greedy_search(stats, make_plan, cost, budget, _weights, error)
    uncounted = budget_greedy_search(stats, make_plan, cost, budget, lambda plan: 0, error)
    assert counted.plan == uncounted.plan


@pytest.mark.parametrize("order", BUDGET_ORDERS)
def test_every_budget_order_meets_both_budgets_and_stops_at_the_first_plan_that_does(order):
    stats, make_plan, cost, error = _flat_problem()
    mac_budget, weight_budget = 0.5 * cost([0, 0, 0]), 0.3 * _weights([0, 0, 0])
    result = budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget,
                                  order=order)
    assert cost(result.plan) <= mac_budget and _weights(result.plan) <= weight_budget
    before = result.path[-2]
    assert before["cost"] > mac_budget or before["weights_kept"] > weight_budget
    assert result.val_error_pct == pytest.approx(error(result.plan))


def test_weights_first_does_not_overshoot_the_mac_budget_as_the_joint_count_does():
    """The CNN shape in miniature (unit 0 holds the MACs, unit 2 the weights): counting both savings together cuts
    the MAC-heavy unit while the weights are still over budget, then the weight-heavy unit's cuts remove MACs too, so
    the plan ends far below the MAC budget. Serving the weights first leaves unit 0 alone until the weight budget is
    met and then cuts it only for what is left: fewer groups go, the cost lands nearer its budget."""
    stats, make_plan, cost, error = _flat_problem()
    mac_budget, weight_budget = 0.7 * cost([0, 0, 0]), 0.5 * _weights([0, 0, 0])
    joint = budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget)
    first = budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget,
                                 order="weights_first")
    assert cost(joint.plan) < cost(first.plan) <= mac_budget
    assert sum(first.plan) < sum(joint.plan) and first.val_error_pct < joint.val_error_pct
    assert any(step["pruned"][0] > 0 for step in joint.path if step["weights_kept"] > weight_budget)
    assert all(step["pruned"][0] == 0 for step in first.path if step["weights_kept"] > weight_budget)
    # the default is the joint count, and an unknown order is refused by the search and by the config
    assert budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error,
                                weight_budget=weight_budget, order="joint").plan == joint.plan
    with pytest.raises(ValueError, match="unknown budget order"):
        budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error, order="weights-first")
    with pytest.raises(ValueError, match="unknown budget_order"):
        CompressConfig(target_macs=2.0, target_weights=3.0, budget_order="weights")


@pytest.mark.parametrize("search", ["global", "greedy", "uniform"])
def test_mac_and_weight_budgets_on_real_models(search, mnist_small):
    """Both budgets hold on the cut network, counted independently (MACs by ``count_flops``, weights by summing the
    conv/linear weight tensors); the weight budget is the binding one here (4x weights, 1.5x MACs)."""
    for model in (Branchy(), create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])):
        bayes = _noisy(model, seed=4)
        shape = tuple(mnist_small.val.example(1).shape[1:])
        dense_macs = count_flops(model, shape)
        config = CompressConfig(target_macs=1.5, target_weights=4.0, search=search, fold_empty_units=False,
                                search_val_size=200)
        result = compress(bayes, mnist_small.val, config)
        assert count_flops(result.model, shape) <= dense_macs / 1.5
        kept = sum(m.weight.numel() for m in result.model.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                        torch.nn.Linear)))
        assert kept == result.weights_kept
        assert result.weights_kept <= result.weights_dense / 4.0
        assert result.search_path[-1]["weights_kept"] == result.weights_kept


def test_weight_budget_settings_are_checked():
    for bad in (0.5, 1.0, True, "3"):
        with pytest.raises(ValueError, match="target_weights is a reduction factor above 1"):
            CompressConfig(target_weights=bad)
    with pytest.raises(ValueError, match="leave thresholds unset"):
        CompressConfig(target_weights=3.0, thresholds=-3.0)
    assert CompressConfig(target_weights=3.0).budgeted and not CompressConfig().budgeted


# --- the uniform per-unit fraction (``CompressConfig(search="uniform")``)
def _smallest_uniform_plan(mac_budget: float, weight_budget: float | None) -> list[int]:
    """By enumeration: the counts only change at fractions k / n, so the least pruning meeting both budgets is the
    first such fraction (in increasing order) whose counts do."""
    fractions = sorted({(k, n) for n in SIZES for k in range(n + 1)}, key=lambda kn: (kn[0] / kn[1], kn))
    for k, n in fractions:
        plan = [min(m - 1, k * m // n) for m in SIZES]  # integer arithmetic: k/n of m groups, rounded down
        if sum((n - p) * c for n, p, c in zip(SIZES, plan, UNIT_COST)) <= mac_budget \
                and (weight_budget is None or _weights(plan) <= weight_budget):
            return plan
    raise AssertionError("unreachable budget")


@pytest.mark.parametrize("mac_share, weight_share", [(0.7, None), (0.9, 0.4), (0.3, None), (0.99, 0.99)])
def test_uniform_search_takes_the_least_even_cut_meeting_the_budgets(mac_share, weight_share):
    """The sensitive unit is cut like the others (the error does not steer), the counts are the same fraction of
    every unit, and they are the least such cut meeting both budgets, found here by enumeration."""
    stats, make_plan, cost, error = _problem(0)
    mac_budget = mac_share * cost([0, 0, 0])
    weight_budget = None if weight_share is None else weight_share * _weights([0, 0, 0])
    result = budget_uniform_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget)
    assert result.plan == _smallest_uniform_plan(mac_budget, weight_budget)
    assert cost(result.plan) <= mac_budget
    assert weight_budget is None or _weights(result.plan) <= weight_budget
    assert result.val_error_pct == pytest.approx(error(result.plan))
    assert result.path[-1]["pruned"] == result.plan and result.path[0]["pruned"] == [0, 0, 0]
    for s, threshold, pruned in zip(stats, result.thresholds, result.plan):
        assert int((s > threshold).sum()) == pruned


def test_uniform_search_refuses_an_unreachable_budget_and_needs_one():
    stats, make_plan, cost, error = _problem(0)
    floor = cost([n - 1 for n in SIZES])
    with pytest.raises(PruneError, match="no uniform fraction reaches the budget"):
        budget_uniform_search(stats, make_plan, cost, floor - 1.0, _weights, error)
    assert budget_uniform_search(stats, make_plan, cost, floor, _weights, error).plan == [n - 1 for n in SIZES]
    with pytest.raises(ValueError, match="search='uniform' spreads a budget"):
        CompressConfig(search="uniform")


# --- channel counts rounded to a multiple (``CompressConfig(round_to=...)``)
def _rounded(kept: int, n: int, round_to: int) -> int:
    return max(round_to, kept - kept % round_to) if n >= round_to else kept


@pytest.mark.parametrize("round_to", [4, 8])
@pytest.mark.parametrize("mac_share, weight_share", [(0.9, None), (0.8, None), (0.95, 0.6)])
def test_uniform_search_with_round_to_keeps_multiples_and_the_least_such_cut(round_to, mac_share, weight_share):
    """Every unit keeps a multiple of ``round_to`` (never fewer than it), and the plan is the least rounded even
    cut meeting both budgets, found here by enumerating the fractions in increasing order."""
    stats, make_plan, cost, error = _problem(0)
    mac_budget = mac_share * cost([0, 0, 0])
    weight_budget = None if weight_share is None else weight_share * _weights([0, 0, 0])
    result = budget_uniform_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget,
                                   round_to=round_to)
    kept = [n - p for n, p in zip(SIZES, result.plan)]
    assert all(k % round_to == 0 and k >= round_to for k in kept)
    fractions = sorted({(k, n) for n in SIZES for k in range(n + 1)}, key=lambda kn: (kn[0] / kn[1], kn))
    expected = None
    for k, n in fractions:
        plan = [m - _rounded(m - min(m - 1, k * m // n), m, round_to) for m in SIZES]
        if cost(plan) <= mac_budget and (weight_budget is None or _weights(plan) <= weight_budget):
            expected = plan
            break
    assert result.plan == expected
    for s, threshold, pruned in zip(stats, result.thresholds, result.plan):
        assert int((s > threshold).sum()) == pruned
    floor = sum(min(round_to, n) * c for n, c in zip(SIZES, UNIT_COST))  # every unit down to round_to groups
    with pytest.raises(PruneError, match="no uniform fraction reaches"):
        budget_uniform_search(stats, make_plan, cost, floor - 1.0, _weights, error, round_to=round_to)


def test_round_to_is_checked_and_needs_a_budget_search_that_counts_channels():
    for bad in (0, -8, True, 2.5, "8"):
        with pytest.raises(ValueError, match="round_to is a channel count"):
            CompressConfig(target_macs=2.0, search="uniform", round_to=bad)
    for search in ("global", "auto"):
        with pytest.raises(ValueError, match="search='uniform' or search='greedy'"):
            CompressConfig(target_macs=2.0, search=search, round_to=8)
    for search in ("uniform", "greedy"):
        assert CompressConfig(target_macs=2.0, search=search, round_to=8).round_to == 8


def test_a_rounded_step_goes_to_the_next_multiple_then_by_whole_blocks():
    """Enumerated by hand: 20 groups with blocks of 8 keep 16, then 8, and the next step would empty the unit;
    units smaller than the block, or without rounding, step group by group."""
    assert [20 - _advanced(20, p, 1, 8) for p in (0, 4, 12)] == [16, 8, 0]
    assert 20 - _advanced(20, 0, 2, 8) == 8
    assert 32 - _advanced(32, 0, 1, 8) == 24 and 32 - _advanced(32, 0, 3, 8) == 8
    assert _advanced(32, 0, 4, 8) == 32  # would keep 0: refused by the plan
    assert _advanced(6, 2, 1, 8) == 3 and _advanced(20, 5, 3, 1) == 8


@pytest.mark.parametrize("round_to", [4, 8])
@pytest.mark.parametrize("mac_share, weight_share", [(0.7, None), (0.8, 0.6)])
def test_greedy_search_with_round_to_keeps_multiples_and_meets_the_budgets(round_to, mac_share, weight_share):
    """Every unit keeps a multiple of ``round_to`` at every accepted step and at the end, the budgets are met,
    and the thresholds prune exactly the chosen counts; without rounding the same search keeps a count that is no
    multiple (so the rounding is what the first assertion sees)."""
    stats, make_plan, cost, error = _problem(0)
    mac_budget = mac_share * cost([0, 0, 0])
    weight_budget = None if weight_share is None else weight_share * _weights([0, 0, 0])
    result = budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget,
                                  round_to=round_to)
    for step in result.path:
        assert all((n - p) % round_to == 0 and n - p >= round_to for n, p in zip(SIZES, step["pruned"]))
    assert cost(result.plan) <= mac_budget
    assert weight_budget is None or _weights(result.plan) <= weight_budget
    for s, threshold, pruned in zip(stats, result.thresholds, result.plan):
        assert int((s > threshold).sum()) == pruned
    free = budget_greedy_search(stats, make_plan, cost, mac_budget, _weights, error, weight_budget=weight_budget)
    assert any((n - p) % round_to for n, p in zip(SIZES, free.plan))


@pytest.mark.parametrize("search", ["uniform", "greedy"])
def test_round_to_on_resnet20_keeps_multiples_of_eight_within_the_budget(search):
    """On the dependency-graph path every convolution of the cut ResNet-20 has a multiple of 8 output channels,
    and the MACs counted on the cut network meet the budget."""
    from bayescomp.data import load_dataset

    data = load_dataset("cifar10", val_size=200, train_subset=1000, test_subset=10)
    model = create_model("resnet20")
    bayes = _noisy(model, seed=2)
    shape = tuple(data.val.example(1).shape[1:])
    config = CompressConfig(target_macs=2.0, search=search, round_to=8, search_val_size=100)
    result = compress(bayes, data.val, config)
    convs = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.out_channels % 8 == 0 for c in convs)
    assert count_flops(result.model, shape) <= count_flops(model, shape) / 2.0
    assert any(c.out_channels < 16 for c in convs)  # the cut did remove channels
