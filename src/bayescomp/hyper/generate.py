"""Generation: one hypernetwork pass for a context -> the physically smaller plain network, in milliseconds.

For a context the hypernetwork gives mu and log alpha of every scale. A group survives when log alpha is below
the compressor's threshold; the masks are closed under the neighbour rules (:func:`bayescomp.compress.masks.
close_plan`), the last layer keeps only the context's classes, and when the result spends more than ``budget``
times the dense network's multiply-accumulates, the threshold is lowered (groups go in order of log alpha) until
it fits. The posterior-mean scales are folded into the weights, W = diag(mu_out) W~ diag(mu_in), and the shared
shrinking path (:func:`bayescomp.compress.shrink.shrink`) builds the plain ``nn.Sequential``.

Bit widths: as BC does from its posterior (Louizos et al. 2017, Sec. 4), every layer gets the significand bits its
kept weights' variance under q(z | c) allows (:func:`weight_variances`, :func:`bayescomp.compress.precision.
layer_precisions`), and the generated network comes with a copy quantised to those bits. By default the shared
weights W~ have a posterior of their own (``weight_posterior``, see :mod:`bayescomp.hyper.model`), whose variance
counts as well, as in BC; with W~ a point estimate the variance is the scales' alone.
"""

from __future__ import annotations

import copy
import functools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bayescomp.compress.chain import build_chain
from bayescomp.compress import quantize_model
from bayescomp.compress.masks import PruneError, PruningPlan, close_plan
from bayescomp.compress.precision import BitWidths, LayerPrecision, layer_precisions
from bayescomp.compress.shrink import shrink
from bayescomp.compress.structure import prunable_modules
from bayescomp.data import TensorData
from bayescomp.hyper.context import Context, random_contexts, restrict
from bayescomp.hyper.model import HyperCompressor
from bayescomp.train import evaluate


class BudgetError(PruneError):
    """The budget is below the smallest network the hypernetwork can generate for the context."""


@dataclass
class Generated(BitWidths):
    """A generated network and how it came about."""

    model: nn.Sequential  # plain, eval mode; outputs the logits of ``context.classes`` in that order
    context: Context
    plan: PruningPlan
    threshold: float  # the log-alpha threshold used (below the compressor's when the budget forced it)
    flops: int  # multiply-accumulates per example (Linear + Conv2d)
    flops_fraction: float  # of the dense teacher's
    weights_kept: int
    generate_ms: float
    kept_architecture: list[int]
    precisions: list[LayerPrecision]  # per Linear/Conv2d layer of ``model``, from the posterior variance
    weights_dense: int  # the teacher's Linear/Conv2d weights, every class included

    @functools.cached_property
    def quantized_model(self) -> nn.Sequential:
        """``model`` with every layer's weights on its fixed-point grid (made on first use: generation stays fast
        for callers that only want the float network)."""
        quantized = quantize_model(self.model, self.precisions)
        quantized.classes = self.context.classes
        return quantized



def _group_keep(model: HyperCompressor, log_alpha: list[tuple[torch.Tensor | None, torch.Tensor | None]],
                threshold: float, classes: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    in_keep, out_keep = [], []
    for g, (a_in, a_out) in zip(model.groups, log_alpha):
        in_keep.append(torch.ones(g.in_size, dtype=torch.bool) if a_in is None else a_in < threshold)
        out_keep.append(torch.ones(g.out_size, dtype=torch.bool) if a_out is None else a_out < threshold)
    last = torch.zeros(model.groups[-1].out_size, dtype=torch.bool)
    last[list(classes)] = True
    out_keep[-1] = last
    return in_keep, out_keep


def plan_flops(model: HyperCompressor, plan: PruningPlan) -> tuple[int, int]:
    """(multiply-accumulates per example, weights) of the network a plan keeps."""
    flops = weights = 0
    for g, keep_in, keep_out in zip(model.groups, plan.in_keep, plan.out_keep):
        pairs = int(keep_in.sum()) * int(keep_out.sum()) * g.kernel
        weights += pairs
        flops += pairs * g.positions
    return flops, weights


def _plan(model, chain, log_alpha, threshold, context) -> PruningPlan:
    in_keep, out_keep = _group_keep(model, log_alpha, threshold, context.classes)
    return close_plan(chain, in_keep, out_keep, message=(
        f"at log-alpha threshold {threshold:.3g} the hypernetwork keeps nothing of this layer for classes "
        f"{list(context.classes)}; raise the threshold or the budget"))


def _protect_one_path(model: HyperCompressor, log_alpha):
    """A copy of the per-layer log alphas in which one connected path of units (the most certain unit of every
    interface) is marked -inf, so that lowering the threshold for a budget never disconnects the network."""
    out = [(None if a is None else a.clone(), None if b is None else b.clone()) for a, b in log_alpha]
    first_in = out[0][0]
    if first_in is not None:
        first_in[int(first_in.argmin())] = -math.inf
    for i in range(len(model.groups) - 1):
        a_out, a_next = out[i][1], out[i + 1][0]
        units = model.groups[i].out_size
        width = model.groups[i + 1].in_size // units
        score = torch.full((units,), -math.inf)
        if a_out is not None:
            score = torch.maximum(score, a_out)
        if a_next is not None:
            score = torch.maximum(score, a_next.view(units, width).min(dim=1).values)
        unit = int(score.argmin())
        if a_out is not None:
            a_out[unit] = -math.inf
        if a_next is not None:
            a_next[unit * width + int(a_next.view(units, width)[unit].argmin())] = -math.inf
    return out


def _fit_budget(model, chain, log_alpha, threshold, context, limit) -> tuple[PruningPlan, float]:
    """The plan at the highest threshold <= ``threshold`` whose compute is within ``limit`` (bisection over the
    sorted log alphas, so groups leave in order of log alpha; one path of units always stays)."""
    plan = _plan(model, chain, log_alpha, threshold, context)
    if plan_flops(model, plan)[0] <= limit:
        return plan, threshold
    log_alpha = _protect_one_path(model, log_alpha)
    values = torch.cat([a for pair in log_alpha for a in pair if a is not None])
    candidates = torch.unique(values[(values < threshold) & torch.isfinite(values)]).sort().values
    lo, hi, best = 0, len(candidates) - 1, None
    try:  # the protected path alone (threshold below every finite log alpha)
        floor = _plan(model, chain, log_alpha, -1e30, context)
        if plan_flops(model, floor)[0] <= limit:
            best = (floor, float(candidates[0]) if len(candidates) else threshold)
    except PruneError:
        pass
    while lo <= hi:  # feasible(k): keep the groups with log alpha <= candidates[k]; monotone in k
        mid = (lo + hi) // 2
        cut = float(torch.nextafter(candidates[mid], torch.tensor(math.inf)))
        try:
            trial = _plan(model, chain, log_alpha, cut, context)
            ok = plan_flops(model, trial)[0] <= limit
        except PruneError:
            ok = False
            trial = None
        if ok:
            best, lo = (trial, cut), mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise BudgetError(
            f"budget {context.budget:g} ({limit:,.0f} multiply-accumulates) is below the smallest network the "
            f"hypernetwork generates for classes {list(context.classes)}; raise the budget")
    return best


def budget_plan(model: HyperCompressor, log_alpha: torch.Tensor, context: Context,
                threshold: float = math.inf) -> tuple[PruningPlan, float]:
    """The plan generation would use for ``context`` given the log alphas (G,) of its scales: groups with log
    alpha below ``threshold``, then fewer until the budget holds. Used by generation and, with ``threshold=inf``
    (only the budget prunes), by budget-masked training."""
    chain = build_chain(model.net)
    return _fit_budget(model, chain, model.split(log_alpha.detach()), threshold, context,
                       context.budget * model.dense_flops())


def masked_scales(model: HyperCompressor, scales, plan: PruningPlan):
    """Scales with the plan's removed groups set to 0; sides without scales get the plan's 0/1 masks."""
    out = []
    for (z_in, z_out), keep_in, keep_out in zip(scales, plan.in_keep, plan.out_keep):
        z_in = keep_in.float() if z_in is None else z_in * keep_in
        z_out = keep_out.float() if z_out is None else z_out * keep_out
        out.append((z_in, z_out))
    return out


def _effective_teacher(model: HyperCompressor, mu_split) -> nn.Sequential:
    """A plain copy of the teacher whose weights are diag(mu_out) W~ diag(mu_in) and biases mu_out * b."""
    net = copy.deepcopy(model.net).eval()
    for module, (m_in, m_out) in zip([layer.module for layer in build_chain(net).layers], mu_split):
        spatial = (1,) * (module.weight.dim() - 2)
        with torch.no_grad():
            if m_in is not None:
                module.weight.mul_(m_in.view(1, -1, *spatial))
            if m_out is not None:
                module.weight.mul_(m_out.view(-1, 1, *spatial))
                if module.bias is not None:
                    module.bias.mul_(m_out)
    return net


@torch.no_grad()
def weight_variances(model: HyperCompressor, mu: torch.Tensor, log_sigma2: torch.Tensor) -> list[torch.Tensor]:
    """Var(W) of every weight of every layer (dense shapes, chain order) for one context's scale posterior
    (``mu``, ``log_sigma2``: (G,)). With W = z_out W~ z_in, independent Gaussian scales and W~ ~ N(m, s²)
    (s = 0 without ``weight_posterior``): Var(W) = (m² + s²)(mu_out² + sigma_out²)(mu_in² + sigma_in²) -
    m² mu_out² mu_in²; a side without scales is z = 1."""
    second, first2 = model.split(mu.pow(2) + log_sigma2.exp()), model.split(mu.pow(2))
    out = []
    for module, (a_in, a_out), (b_in, b_out), s2 in zip(prunable_modules(model.net), second, first2,
                                                         model.shared_weight_variances()):
        spatial = (1,) * (module.weight.dim() - 2)
        one = module.weight.new_ones(())
        a_in, b_in = (one, one) if a_in is None else (a_in.view(1, -1, *spatial), b_in.view(1, -1, *spatial))
        a_out, b_out = (one, one) if a_out is None else (a_out.view(-1, 1, *spatial), b_out.view(-1, 1, *spatial))
        m2 = module.weight.pow(2)
        second_w = m2 if s2 is None else m2 + s2
        out.append((second_w * a_out * a_in - m2 * b_out * b_in).clamp_min(0.0))
    return out


def _kept_variances(variances: list[torch.Tensor], plan: PruningPlan) -> list[torch.Tensor]:
    """The variances of the weights the plan keeps, laid out as the shrunk layers hold them (rows ``out_keep``,
    columns ``in_keep``, as :func:`bayescomp.compress.shrink.shrink` cuts every Linear/Conv2d weight)."""
    return [v[keep_out][:, keep_in] for v, keep_in, keep_out in zip(variances, plan.in_keep, plan.out_keep)]


@torch.no_grad()  # not inference_mode: the generated model must stay usable in autograd (fine-tuning)
def generate(model: HyperCompressor, classes, budget: float = 1.0, threshold: float | None = None,
             bits_reduce: str = "mean", min_bits: int = 1) -> Generated:
    """The compressed plain network for a context (see the module docstring). Deterministic: the posterior mean.
    ``bits_reduce`` and ``min_bits`` set the bit widths as for :class:`bayescomp.compress.CompressConfig`.

    Raises:
        ContextError: unknown, repeated or too few classes, or a budget outside (0, 1].
        BudgetError: the budget cannot be met for this context.
        ValueError: the compressor has no threshold yet (not calibrated) and none is given.
    """
    started = time.perf_counter()
    context = classes if isinstance(classes, Context) else Context.make(classes, model.num_classes, budget)
    if threshold is None:
        threshold = float(model.threshold)
        if math.isnan(threshold):
            raise ValueError("this hypernetwork has no generation threshold yet; calibrate it "
                             "(bayescomp.hyper.calibrate_threshold) or pass threshold=")
    was_training = model.training
    model.eval()
    try:
        mu, log_sigma2 = model.posterior(context.vector(model.num_classes).reshape(1, -1))
        mu, log_sigma2, log_alpha = mu[0], log_sigma2[0], model.log_alpha(mu, log_sigma2)[0]
        net = _effective_teacher(model, model.split(mu))
        chain = build_chain(net)
        plan, used = _fit_budget(model, chain, model.split(log_alpha), threshold, context,
                                 context.budget * model.dense_flops())
        small = shrink(chain, plan)
        variances = _kept_variances(weight_variances(model, mu, log_sigma2), plan)
    finally:
        model.train(was_training)
    precisions = layer_precisions(variances, [m.weight.detach() for m in prunable_modules(small)], bits_reduce,
                                  min_bits)
    flops, weights = plan_flops(model, plan)
    small.classes = context.classes  # plain attribute: output j is class classes[j]
    return Generated(small, context, plan, used, flops, flops / model.dense_flops(), weights,
                     1000.0 * (time.perf_counter() - started), plan.kept_architecture(chain), precisions,
                     model.dense_weights())


@torch.no_grad()
def masked_posterior_mean_logits(model: HyperCompressor, images: torch.Tensor, generated: Generated) -> torch.Tensor:
    """The hypernetwork's own posterior-mean network for the generated context, with the generated plan's masks
    applied to its scales, restricted to the context's classes (what the generated network must equal)."""
    model.eval()
    mu, _ = model.posterior(generated.context.vector(model.num_classes).reshape(1, -1))
    scales = masked_scales(model, model.split(mu[0]), generated.plan)
    return model.forward_with_scales(images, scales)[:, list(generated.context.classes)]


def context_error(model: nn.Module, data: TensorData, classes) -> float:
    """Error (%) of a generated network on the examples of its context's classes."""
    return evaluate(model, restrict(data, classes))["error_pct"]


@torch.no_grad()
def calibrate_threshold(model: HyperCompressor, val: TensorData, contexts: list[Context] | None = None,
                        grid: list[float] | None = None, tolerance_pct: float | None = None,
                        log=print) -> dict[str, Any]:
    """Choose the generation threshold on validation contexts and store it in ``model.threshold``.

    For each threshold of ``grid`` (log alpha), the mean validation error of the generated networks over the
    contexts is compared with that of the unpruned posterior-mean networks; the lowest threshold (most pruning)
    whose mean increase is within ``tolerance_pct`` points wins. Only validation data are used.
    """
    cfg = model.config
    tolerance = cfg.tolerance_pct if tolerance_pct is None else tolerance_pct
    contexts = contexts or random_contexts(cfg.calibration_contexts, model.num_classes,
                                           range(cfg.min_classes, min(5, model.num_classes) + 1), seed=12345)
    grid = sorted(grid or [x / 2 for x in range(-12, 9)], reverse=True)
    subsets = [restrict(val, c.classes) for c in contexts]
    model.eval()
    base = []
    for context, subset in zip(contexts, subsets):
        logits_err = 0
        for images, labels in subset.batches(1000):
            logits = model(images, context.vector(model.num_classes), sample=False)[:, list(context.classes)]
            logits_err += int((logits.argmax(1) != labels).sum())
        base.append(100.0 * logits_err / max(len(subset), 1))
    base_mean = statistics.fmean(base)
    rows, chosen = [], None
    for tau in grid:  # from mild to severe
        try:
            gens = [generate(model, c, threshold=tau) for c in contexts]
        except PruneError:
            rows.append({"threshold": tau, "val_error_pct": None, "weights_kept": None})
            break
        err = statistics.fmean(evaluate(g.model, s)["error_pct"] for g, s in zip(gens, subsets))
        weights = statistics.fmean(g.weights_kept for g in gens)
        rows.append({"threshold": tau, "val_error_pct": err, "weights_kept": weights})
        log(f"  threshold {tau:+.1f}: mean val error {err:.2f}% (unpruned {base_mean:.2f}%), "
            f"mean weights kept {weights:,.0f}")
        if err > base_mean + tolerance:
            break  # the chosen threshold is the last one before the first that breaks the tolerance
        chosen = tau
    if chosen is None:
        chosen = grid[0]
    model.threshold.fill_(chosen)
    model.train()
    return {"threshold": chosen, "base_val_error_pct": base_mean, "grid": rows, "contexts": len(contexts)}
