"""Automatic per-layer thresholds: prune as much as the validation error allows.

Louizos et al. set thresholds per layer by inspecting log-alpha histograms. We automate the choice with a greedy
search on the validation split (never the test set): starting from "keep everything", each round proposes, for
every layer, to drop its next ``step`` groups with the largest log alpha, and accepts the proposal that removes
the most weights while the masked model's validation error stays within ``tolerance_pct`` points of the unpruned
model's. A layer whose proposal fails halves its step and is frozen when even one group cannot go.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from bayescomp.compress.chain import Chain
from bayescomp.compress.masks import PruneError, PruningPlan, masked, propagate


@dataclass
class SearchResult:
    thresholds: list[float]
    plan: PruningPlan
    val_error_pct: float
    base_val_error_pct: float
    path: list[dict[str, float]] = field(default_factory=list)  # accepted steps: weights_kept, val_error_pct


def thresholds_for_counts(stats: list[torch.Tensor], pruned: list[int]) -> list[float]:
    """Thresholds that prune exactly the ``pruned[l]`` groups with the largest statistic in each layer."""
    out = []
    for s, k in zip(stats, pruned):
        ordered = torch.sort(s, descending=True).values
        if k <= 0:
            out.append(float(ordered[0]) + 1.0)
        elif k >= len(ordered):
            out.append(float(ordered[-1]) - 1.0)
        else:
            out.append(0.5 * (float(ordered[k - 1]) + float(ordered[k])))
    return out


def _rounded(n: int, round_to: int) -> bool:
    """Whether a unit of ``n`` groups keeps multiples of ``round_to`` (units smaller than it are not rounded)."""
    return round_to > 1 and n >= round_to


def _advanced(n: int, pruned: int, step: int, round_to: int = 1) -> int:
    """The pruned count of a unit of ``n`` groups after ``step`` more: groups, or, where the unit is rounded,
    blocks of ``round_to`` (the kept count goes down to the next multiple, then by whole blocks); ``n`` where the
    step would leave fewer than ``round_to`` groups, i.e. the proposal empties the unit and is refused."""
    if not _rounded(n, round_to):
        return min(n, pruned + step)
    kept = round_to * (math.ceil((n - pruned) / round_to) - step)
    return n - kept if kept >= round_to else n


def _propose(make_plan: Callable[[list[int]], Any], pruned: list[int], i: int, step: int,
             n_groups: list[int], round_to: int = 1) -> tuple[list[int], Any | None]:
    """Counts with unit ``i`` advanced by ``step`` (:func:`_advanced`), and their plan (``None`` where it would
    empty a unit)."""
    trial = list(pruned)
    trial[i] = _advanced(n_groups[i], pruned[i], step, round_to)
    try:
        return trial, make_plan(trial)
    except PruneError:
        return trial, None


def greedy_search(
    stats: list[torch.Tensor],
    make_plan: Callable[[list[int]], Any],
    weights_kept: Callable[[Any], int],
    error: Callable[[Any], float],
    tolerance_pct: float,
    initial_fraction: float = 0.125,
    log: Callable[[str], None] | None = None,
    describe: Callable[[Any], str] = lambda plan: "",
) -> SearchResult:
    """The greedy search over any grouping: ``stats[l]`` ranks the groups of unit ``l`` (a layer of a chain, or a
    coupled channel group of a graph), ``make_plan(pruned)`` builds the plan that drops the ``pruned[l]`` groups
    with the largest statistic in each unit (raising :class:`PruneError` if that empties something),
    ``error(plan)`` is its validation error."""
    n_groups = [len(s) for s in stats]
    pruned = [0] * len(stats)
    plan = make_plan(pruned)
    base = error(plan)
    budget = base + tolerance_pct
    steps = [max(1, math.ceil(initial_fraction * n)) for n in n_groups]
    frozen = [n == 0 for n in n_groups]
    current_error, kept = base, weights_kept(plan)
    path = [{"weights_kept": kept, "val_error_pct": base, "pruned": list(pruned)}]
    while not all(frozen):
        best = None
        for i in range(len(stats)):
            if frozen[i]:
                continue
            trial, trial_plan = _propose(make_plan, pruned, i, steps[i], n_groups)
            trial_error = math.inf if trial_plan is None else error(trial_plan)
            if trial_error <= budget:
                gain = kept - weights_kept(trial_plan)
                if best is None or gain > best[0]:
                    best = (gain, i, trial, trial_plan, trial_error)
            elif steps[i] > 1:
                steps[i] = max(1, steps[i] // 2)
            else:
                frozen[i] = True
        if best is None:
            continue
        _, i, pruned, plan, current_error = best
        kept = weights_kept(plan)
        path.append({"weights_kept": kept, "val_error_pct": current_error, "pruned": list(pruned)})
        if pruned[i] >= n_groups[i]:
            frozen[i] = True
        if log:
            log(f"  search: {describe(plan)}  weights {kept}  val err {current_error:.2f}%")
    return SearchResult(thresholds_for_counts(stats, pruned), plan, current_error, base, path)


def _shared_threshold_candidates(stats: list[torch.Tensor]) -> list[float]:
    """Ascending thresholds, one just below each distinct finite statistic, then one above all (keep everything)."""
    pooled = torch.unique(torch.cat([s.double().flatten() for s in stats]))
    pooled = pooled[torch.isfinite(pooled)]
    return [float(v) - 1e-9 for v in pooled.tolist()] + [float(pooled.max()) + 1.0]


def global_threshold_search(
    stats: list[torch.Tensor],
    make_plan: Callable[[list[float]], Any],
    weights_kept: Callable[[Any], int],
    error: Callable[[Any], float],
    tolerance_pct: float,
    log: Callable[[str], None] | None = None,
    describe: Callable[[Any], str] = lambda plan: "",
) -> SearchResult:
    """One threshold shared by every unit, the lowest (most pruning) whose validation error stays within
    ``tolerance_pct`` points of the unpruned model's, found by bisection over the pooled statistics (about
    log2(groups) evaluations instead of the greedy search's rounds x units; used for deep networks with many coupled
    groups). Assumes the error grows as the threshold falls, which holds closely for group log alpha."""
    candidates = _shared_threshold_candidates(stats)
    base_plan = make_plan([candidates[-1]] * len(stats))
    base = error(base_plan)
    budget = base + tolerance_pct
    path = [{"weights_kept": weights_kept(base_plan), "val_error_pct": base, "threshold": candidates[-1]}]
    lo, hi, best = 0, len(candidates) - 1, (len(candidates) - 1, base_plan, base)  # hi is known acceptable
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            plan = make_plan([candidates[mid]] * len(stats))
        except PruneError:
            lo = mid + 1
            continue
        trial = error(plan)
        path.append({"weights_kept": weights_kept(plan), "val_error_pct": trial, "threshold": candidates[mid]})
        if log:
            log(f"  search: threshold {candidates[mid]:.3f}  {describe(plan)}  weights {weights_kept(plan)}  "
                f"val err {trial:.2f}%")
        if trial <= budget:
            hi, best = mid, (mid, plan, trial)
        else:
            lo = mid + 1
    index, plan, current = best
    path.sort(key=lambda p: -p["weights_kept"])
    return SearchResult([candidates[index]] * len(stats), plan, current, base, path)


def _budgets_text(budget: float, weight_budget: float | None) -> str:
    """``the budget of 20,406,592``, ``... and 90,299 weights`` or ``the budget of 90,299 weights`` for errors."""
    parts = [] if math.isinf(budget) else [f"{budget:,.0f}"]
    if weight_budget is not None:
        parts.append(f"{weight_budget:,.0f} weights")
    return "the budget of " + " and ".join(parts)


def budget_threshold_search(
    stats: list[torch.Tensor],
    make_plan: Callable[[list[float]], Any],
    cost: Callable[[Any], float],
    budget: float,
    weights_kept: Callable[[Any], int],
    error: Callable[[Any], float],
    log: Callable[[str], None] | None = None,
    describe: Callable[[Any], str] = lambda plan: "",
    weight_budget: float | None = None,
) -> SearchResult:
    """One threshold shared by every unit, the highest (least pruning) whose plan costs at most ``budget`` (e.g.
    multiply-accumulates), by bisection over the pooled statistics: pruning to a compute budget, the way structured
    pruning tools take a target ratio, with the posterior deciding *which* groups go. The validation error is
    measured along the way (``path``) but does not steer the choice. With ``weight_budget`` the plan must also
    keep at most that many weights (both shrink as the threshold falls, so bisection still finds the highest
    threshold meeting both).

    Raises:
        PruneError: even the most pruning that leaves every unit a group costs more than ``budget`` (or keeps more
            than ``weight_budget`` weights).
    """
    candidates = _shared_threshold_candidates(stats)
    base_plan = make_plan([candidates[-1]] * len(stats))
    base = error(base_plan)
    path = [{"weights_kept": weights_kept(base_plan), "val_error_pct": base, "threshold": candidates[-1],
             "cost": cost(base_plan)}]
    probes: dict[int, tuple[Any, float] | None] = {}

    def probe(i: int) -> tuple[Any, float] | None:
        if i not in probes:
            try:
                plan = make_plan([candidates[i]] * len(stats))
            except PruneError:
                probes[i] = None
            else:
                probes[i] = (plan, cost(plan))
        return probes[i]

    def within(found: tuple[Any, float]) -> bool:
        return found[1] <= budget and (weight_budget is None or weights_kept(found[0]) <= weight_budget)

    lo, hi = 0, len(candidates) - 1  # the answer, if any, lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        found = probe(mid)
        if found is None or within(found):  # an emptied unit lies below any feasible threshold
            lo = mid
        else:
            hi = mid - 1
    found = probe(lo)
    if found is None or not within(found):
        feasible = [p for p in probes.values() if p is not None]
        cheapest = min((p[1] for p in feasible), default=path[0]["cost"])
        lightest = min((weights_kept(p[0]) for p in feasible), default=path[0]["weights_kept"])
        raise PruneError(f"no shared threshold reaches {_budgets_text(budget, weight_budget)}: the most pruning that leaves every layer a "
                         f"group still costs {cheapest:,.0f} and keeps {lightest:,} weights")
    plan, spent = found
    trial = error(plan)
    path.append({"weights_kept": weights_kept(plan), "val_error_pct": trial, "threshold": candidates[lo],
                 "cost": spent})
    if log:
        log(f"  budget search: threshold {candidates[lo]:.3f}  {describe(plan)}  cost {spent:,.0f} "
            f"(budget {budget:,.0f})  val err {trial:.2f}%")
    return SearchResult([candidates[lo]] * len(stats), plan, trial, base, path)


BUDGET_ORDERS = ("joint", "weights_first", "macs_first")  # how budget_greedy_search counts two budgets' savings


def budget_greedy_search(
    stats: list[torch.Tensor],
    make_plan: Callable[[list[int]], Any],
    cost: Callable[[Any], float],
    budget: float,
    weights_kept: Callable[[Any], int],
    error: Callable[[Any], float],
    initial_fraction: float = 0.125,
    log: Callable[[str], None] | None = None,
    describe: Callable[[Any], str] = lambda plan: "",
    weight_budget: float | None = None,
    order: str = "joint",
    round_to: int = 1,
) -> SearchResult:
    """Per-unit counts chosen greedily until the plan costs at most ``budget``: each round proposes, for every unit,
    dropping its next ``step`` groups (largest statistic first) and accepts the proposal whose validation error
    rises least per unit of cost removed (ties: the larger saving). With ``weight_budget`` the plan must also keep
    at most that many weights; a proposal's saving is then the sum of the fractions of the starting cost and of
    the starting weights it removes, each counted only while its budget is unmet, so the search first goes where
    both shrink and, once one budget is met, serves the other. The posterior ranks the groups *within* a unit;
    the validation split decides how the cut is spread *across* units, which one shared threshold leaves to the
    posterior's scale per layer (measured on ResNet-20: a shared log-alpha threshold empties some inner
    convolutions while the residual channels stay whole). The greedy allocation follows NetAdapt (Yang et al.,
    ECCV 2018) with the posterior's ranking in place of weight norms. ``make_plan(pruned)`` is as in
    :func:`greedy_search`; a unit whose next step would empty it halves its step, then stops.

    ``order`` says how two budgets share a step's saving (see :data:`BUDGET_ORDERS`): ``"joint"`` (above),
    ``"weights_first"`` (only the weights count until their budget is met, then only the cost, the MACs in every
    caller) or ``"macs_first"``.
    ``round_to`` > 1: every unit of at least ``round_to`` groups keeps a multiple of it (never fewer), its steps
    counted in blocks of ``round_to`` groups, as :func:`uniform_counts` rounds the uniform search.
    On a CNN the joint count overshoots the cost: cuts of the early layers save MACs and almost no weights, so once
    the MAC budget is met the weight budget still has to be met in the late layers, whose cuts remove MACs as well
    (measured on ResNet-20 at 2x MACs and 3x weights: 2.92x MACs). Serving the weights first cuts the early
    layers only where that is the cheapest way to the weights, and meets the MAC budget on the way or with what is
    left (the same posterior: 2.50x MACs, the MAC phase never needed; fine-tuned, 10.09 % test error against the
    joint cut's 10.32 %, 10.04 % validation against 9.46 %). Our choice, not from a paper.

    Raises:
        PruneError: every unit is down to its last group and the plan still costs more than ``budget``.
    """
    if order not in BUDGET_ORDERS:
        raise ValueError(f"unknown budget order {order!r}; use {', '.join(BUDGET_ORDERS)}")
    n_groups = [len(s) for s in stats]
    pruned = [0] * len(stats)
    plan = make_plan(pruned)
    base = current = error(plan)
    spent = cost(plan)
    steps = [max(1, math.ceil(initial_fraction * n / (round_to if _rounded(n, round_to) else 1))) for n in n_groups]
    frozen = [n == 0 for n in n_groups]
    weights = weights_kept(plan)
    path = [{"weights_kept": weights, "val_error_pct": base, "cost": spent, "pruned": list(pruned)}]
    cost_scale, weight_scale = max(spent, 1e-12), max(weights, 1)

    def unmet(spent: float, weights: int) -> tuple[bool, bool]:
        return spent > budget, weight_budget is not None and weights > weight_budget

    def saving(trial_cost: float, trial_weights: int) -> float:
        """Fractions of the starting cost / weights this step removes, each while its budget is unmet (and, for an
        ordered search, while the budget served first is unmet, that budget's alone)."""
        over_cost, over_weights = unmet(spent, weights)
        if order == "weights_first" and over_weights:
            over_cost = False
        elif order == "macs_first" and over_cost:
            over_weights = False
        return (over_cost * (spent - trial_cost) / cost_scale
                + over_weights * (weights - trial_weights) / weight_scale)

    while any(unmet(spent, weights)):
        best, changed = None, False  # changed: a step was halved or a unit frozen this round
        for i in range(len(stats)):
            if frozen[i]:
                continue
            trial, trial_plan = _propose(make_plan, pruned, i, steps[i], n_groups, round_to)
            if trial_plan is None:
                if steps[i] > 1:
                    steps[i] = max(1, steps[i] // 2)
                else:
                    frozen[i] = True
                changed = True
                continue
            trial_cost, trial_weights = cost(trial_plan), weights_kept(trial_plan)
            if trial_cost >= spent and trial_weights >= weights:  # these groups cost nothing (e.g. their consumer
                frozen[i], changed = True, True                    # is already gone): never a way to a budget
                continue
            saved = saving(trial_cost, trial_weights)
            if saved <= 0:  # saves only what is not counted now (a budget already met, or served second)
                continue
            trial_error = error(trial_plan)
            key = ((trial_error - current) / saved, -saved)
            if best is None or key < best[0]:
                best = (key, trial, trial_plan, trial_error, trial_cost, trial_weights)
        if best is None:
            if changed and not all(frozen):
                continue  # a step was halved; propose again
            raise PruneError(f"no plan reaches {_budgets_text(budget, weight_budget)}: the most pruning that leaves every unit a group still "
                             f"costs {spent:,.0f} and keeps {weights:,} weights")
        _, pruned, plan, current, spent, weights = best
        path.append({"weights_kept": weights, "val_error_pct": current, "cost": spent, "pruned": list(pruned)})
        if log:
            limit = "" if weight_budget is None else f", weights {weights:,} (budget {weight_budget:,.0f})"
            log(f"  budget search: {describe(plan)}  cost {spent:,.0f} (budget {budget:,.0f}){limit}  "
                f"val err {current:.2f}%")
    return SearchResult(thresholds_for_counts(stats, pruned), plan, current, base, path)


def uniform_counts(n_groups: list[int], fraction: Fraction, round_to: int = 1) -> list[int]:
    """Groups pruned per unit when every unit gives up ``fraction`` of its groups (rounded down, exactly: the
    fraction is rational; at least one group kept; units without groups stay at zero).

    ``round_to``: a unit of at least ``round_to`` groups keeps a multiple of it (the count rounded down, never
    below ``round_to``), as Torch-Pruning's ``round_to`` does, because CPU and GPU kernels process channels in
    vector-width blocks and a remainder costs nearly a whole block (``benchmarks/channel_widths.py``)."""
    pruned = []
    for n in n_groups:
        kept = n - min(max(n - 1, 0), math.floor(fraction * n))
        if _rounded(n, round_to):
            kept = max(round_to, kept - kept % round_to)
        pruned.append(n - kept)
    return pruned


def budget_uniform_search(
    stats: list[torch.Tensor],
    make_plan: Callable[[list[int]], Any],
    cost: Callable[[Any], float],
    budget: float,
    weights_kept: Callable[[Any], int],
    error: Callable[[Any], float],
    log: Callable[[str], None] | None = None,
    describe: Callable[[Any], str] = lambda plan: "",
    weight_budget: float | None = None,
    round_to: int = 1,
) -> SearchResult:
    """The same fraction of every unit's groups, the smallest fraction whose plan costs at most ``budget`` (and
    keeps at most ``weight_budget`` weights), by bisection; the posterior ranks the groups *within* a unit. With
    ``round_to`` > 1 every unit keeps a multiple of it (:func:`uniform_counts`). This
    is the uniform per-layer ratio of structured pruning tools (Torch-Pruning's ``MetaPruner`` default), so the
    posterior's ranking can be compared with theirs, or used with their allocation, at equal MACs. The validation
    error is measured for the chosen plan but does not steer it. Our option, not the paper's: measured on
    ResNet-20/CIFAR-10, Torch-Pruning's uniform ratio at 2.90x fewer MACs fine-tuned to 9.52 % test error where
    the greedy allocation's 2.16x cut reached 10.19 % (docs/limits.md).

    Raises:
        PruneError: even the most pruning that leaves every unit a group misses a budget.
    """
    n_groups = [len(s) for s in stats]
    keep_all = make_plan([0] * len(stats))
    base = error(keep_all)
    path = [{"weights_kept": weights_kept(keep_all), "val_error_pct": base, "cost": cost(keep_all),
             "pruned": [0] * len(stats)}]
    probes: dict[tuple[int, ...], tuple[Any, float, int] | None] = {}

    def probe(fraction: Fraction) -> tuple[Any, float, int] | None:
        counts = tuple(uniform_counts(n_groups, fraction, round_to))
        if counts not in probes:
            try:
                plan = make_plan(list(counts))
            except PruneError:
                probes[counts] = None
            else:
                probes[counts] = (plan, cost(plan), weights_kept(plan))
        return probes[counts]

    def within(found: tuple[Any, float, int] | None) -> bool:
        return found is not None and found[1] <= budget and (weight_budget is None or found[2] <= weight_budget)

    # the counts change only at fractions k / n, so the least pruning meeting the budgets is one of them
    fractions = sorted({Fraction(k, n) for n in n_groups if n for k in range(n + 1)})
    if not within(probe(fractions[-1])):
        found = probe(fractions[-1])
        spent, kept = (path[0]["cost"], path[0]["weights_kept"]) if found is None else found[1:]
        raise PruneError(f"no uniform fraction reaches {_budgets_text(budget, weight_budget)}: the most pruning that "
                         f"leaves every unit a group still costs {spent:,.0f} and keeps {kept:,} weights")
    lo, hi = 0, len(fractions) - 1  # within(fractions[hi]) holds; find the first index that does
    while lo < hi:
        mid = (lo + hi) // 2
        if within(probe(fractions[mid])):
            hi = mid
        else:
            lo = mid + 1
    pruned = uniform_counts(n_groups, fractions[hi], round_to)
    plan, spent, kept = probe(fractions[hi])
    trial = error(plan)
    path.append({"weights_kept": kept, "val_error_pct": trial, "cost": spent, "pruned": list(pruned),
                 "fraction": float(fractions[hi])})
    if log:
        log(f"  uniform budget search: {float(fractions[hi]):.3f} of each unit's groups  {describe(plan)}  "
            f"cost {spent:,.0f} (budget {budget:,.0f})  val err {trial:.2f}%")
    return SearchResult(thresholds_for_counts(stats, pruned), plan, trial, base, path)


def sweep_global_thresholds(chain: Chain, stats: list[torch.Tensor], evaluators: dict[str, Callable[[], float]],
                            grid: list[float]) -> list[dict[str, float]]:
    """Error against compression along one threshold shared by all layers (for the trade-off plot)."""
    dense_weights = PruningPlan.keep_all(chain).weights_kept(chain)
    curve = []
    for threshold in grid:
        try:
            plan = propagate(chain, [s < threshold for s in stats])
        except PruneError:
            continue
        point = {"threshold": float(threshold), "weights_kept": plan.weights_kept(chain)}
        point["compression_architecture"] = dense_weights / point["weights_kept"]
        with masked(chain, plan):
            for name, fn in evaluators.items():
                point[f"{name}_error_pct"] = fn()
        curve.append(point)
    return curve
