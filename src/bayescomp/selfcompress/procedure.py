"""Self-compression (Carannante, Dera, Rasool, Bouaynaya, MLSP 2020) as a method of the common pipeline.

A density-propagating twin of the dense network is trained with the paper's Gaussian-likelihood ELBO (or the
cross-entropy variant); then, layer by layer, the kernels/units with the smallest posterior-mean Frobenius norm
(or SNR) are deleted as long as the validation error stays within ``tolerance_pct`` points of the trained model's,
the smaller network is retrained briefly, and this repeats until a round deletes nothing. The result is mapped back
onto the dense layer shapes so that the shared shrinking path (:func:`bayescomp.magnitude.magnitude_compress`)
builds the physically smaller plain model and its report; the kept kernels' posterior variances travel with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from bayescomp.data import DataBundle
from bayescomp.selfcompress.layers import density_from_plain
from bayescomp.selfcompress.objective import cross_entropy_loss, gaussian_elbo_loss
from bayescomp.selfcompress.prune import kernel_norms, kernel_snr, remove_kernels
from bayescomp.train import TrainConfig, evaluate, fit


@dataclass
class SelfCompressionConfig:
    """Options of self-compression, saved with every run.

    Args:
        covariance: ``"diag"`` (scales to LeNet-5 and VGG) or ``"full"`` (per-channel full covariance, as the paper;
            memory grows with the square of the feature map and is guarded).
        likelihood: ``"gaussian"`` (the paper's ELBO with the predictive covariance) or ``"cross_entropy"``.
        criterion: ``"norm"`` (Frobenius norm of the kernel's posterior mean: the paper's) or ``"snr"``.
        tolerance_pct: allowed validation-error increase, in points, over the trained model's.
        retrain_epochs: epochs of retraining after each round of deletions.
        max_rounds: upper bound on delete-and-retrain rounds.
        rho_init: initial rho of the weight variances softplus(rho). The authors' TF2 code starts at -2.2; with that
            start the Gaussian likelihood first absorbs errors in the predictive variance and the means barely learn
            (measured, see benchmarks/self_compression_cnn1.py), so we start near-deterministic.
        kl_weight: multiplies KL / N_train in the loss; ``None`` = 0.01 N_train, the authors' TF2 factor 0.01 per
            example (UNVERIFIED for the paper).
    """

    covariance: str = "diag"
    likelihood: str = "gaussian"
    criterion: str = "norm"
    tolerance_pct: float = 0.5
    retrain_epochs: int = 1
    max_rounds: int = 10
    rho_init: float = -10.0
    kl_weight: float | None = None
    name: str = "self"

    def __post_init__(self) -> None:
        if self.covariance not in ("diag", "full") or self.likelihood not in ("gaussian", "cross_entropy") \
                or self.criterion not in ("norm", "snr"):
            raise ValueError("covariance must be diag|full, likelihood gaussian|cross_entropy, criterion norm|snr; "
                             f"got {self.covariance!r}, {self.likelihood!r}, {self.criterion!r}")

    def objective(self, n_train: int):
        base = gaussian_elbo_loss if self.likelihood == "gaussian" else cross_entropy_loss
        weight = self.kl_weight if self.kl_weight is not None else 0.01 * n_train

        def loss(out, labels, model, n, scale):
            return base(out, labels, model, n, scale * weight)

        return loss


def density_twin(dense: nn.Sequential, config: SelfCompressionConfig) -> nn.Sequential:
    """The density-propagating network of ``dense`` (means from its weights), ending in the softmax."""
    model = density_from_plain(nn.Sequential(*copy.deepcopy(list(dense)), nn.Softmax(dim=1)), config.rho_init)
    model.default_mode = config.covariance
    return model


def weight_layers(model: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(model) if hasattr(m, "weight_mu") or isinstance(m, (nn.Linear, nn.Conv2d))]


def _largest_removal(model, index: int, order: torch.Tensor, data: DataBundle, budget: float) -> int:
    """Most kernels (smallest statistic first) removable within the budget, by bisection over the count."""
    def ok(count: int) -> bool:
        keep = torch.ones(order.numel(), dtype=torch.bool)
        keep[order[:count]] = False
        return evaluate(remove_kernels(model, index, keep), data.val)["error_pct"] <= budget

    lo, hi = 0, order.numel() - 1  # at least one kernel stays
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def self_compress(model: nn.Sequential, data: DataBundle, config: SelfCompressionConfig, retrain: TrainConfig,
                  log=print) -> tuple[nn.Sequential, list[torch.Tensor], list[dict]]:
    """Delete-and-retrain rounds over every weight layer but the last; returns the smaller model, the kept output
    indices of every weight layer (in the dense numbering) and a record of the rounds."""
    indices = weight_layers(model)
    kept = [torch.arange(model[i].weight_mu.shape[0]) for i in indices]
    budget = evaluate(model, data.val)["error_pct"] + config.tolerance_pct
    rounds: list[dict] = []
    for round_index in range(config.max_rounds):
        removed_total = 0
        for position, index in enumerate(indices[:-1]):
            stat = kernel_norms(model, index) if config.criterion == "norm" else kernel_snr(model, index)
            order = torch.argsort(stat)
            count = _largest_removal(model, index, order, data, budget)
            if count:
                keep = torch.ones(order.numel(), dtype=torch.bool)
                keep[order[:count]] = False
                model = remove_kernels(model, index, keep)
                kept[position] = kept[position][keep]
                removed_total += count
        if not removed_total:
            break
        if config.retrain_epochs:
            before = copy.deepcopy(model)
            fit(model, data, retrain, progress=False, log=lambda *_: None, objective=config.objective(len(data.train)))
            if evaluate(model, data.val)["error_pct"] > budget:  # retraining must not undo the tolerance
                model = before
                log("  retraining left the validation error above the budget; keeping the model before it")
        val = evaluate(model, data.val)["error_pct"]
        rounds.append({"round": round_index + 1, "removed": removed_total, "val_error_pct": val,
                       "kept": [int(k.numel()) for k in kept]})
        log(f"  self-compression round {round_index + 1}: removed {removed_total}, kept {rounds[-1]['kept']}, "
            f"val err {val:.2f}%")
    return model, kept, rounds


def dense_shaped_posterior_mean(dense: nn.Sequential, small: nn.Sequential, kept: list[torch.Tensor]) -> nn.Sequential:
    """``dense`` with the small model's posterior means written at the kept positions and zeros elsewhere, so the
    shared shrinking path removes exactly the deleted kernels (their rows and the next layer's columns)."""
    out = copy.deepcopy(dense).eval()
    plain_layers = weight_layers(out)
    small_layers = weight_layers(small)
    previous: torch.Tensor | None = None
    with torch.no_grad():
        for position, (i, j) in enumerate(zip(plain_layers, small_layers)):
            target, source = out[i], small[j]
            weight = torch.zeros_like(target.weight)
            rows = kept[position]
            if previous is None:
                cols = torch.arange(target.weight.shape[1])
            else:
                width = target.weight.shape[1] // out[plain_layers[position - 1]].weight.shape[0]
                cols = (previous[:, None] * width + torch.arange(width)[None, :]).reshape(-1)
            weight[rows[:, None], cols[None, :]] = source.weight_mu.detach()
            target.weight.copy_(weight)
            if target.bias is not None:
                target.bias.zero_()
                target.bias[rows] = source.bias.detach()
            previous = rows
    return out


def variance_head(small: nn.Sequential) -> list[list[float]]:
    """Per weight layer, the kept kernels' posterior weight variances softplus(rho) (saved with the file)."""
    return [small[i].sigma2.detach().tolist() for i in weight_layers(small)]


def load_with_uncertainty(path) -> nn.Sequential:
    """A self-compressed file (``--method self``) as a density-propagating network: its plain posterior-mean layers
    plus the saved kernel variances, so that ``model(x)`` returns the predictive mean and covariance (Moments)."""
    from bayescomp.compress.packed import load_packed

    plain, metadata = load_packed(path)
    if "variance_head" not in metadata:
        raise ValueError(f"{path} holds no variance head; only files written by --method self have one")
    model = density_from_plain(nn.Sequential(*plain, nn.Softmax(dim=1)))
    layers = weight_layers(model)
    if len(layers) != len(metadata["variance_head"]):
        raise ValueError(f"{path}: {len(metadata['variance_head'])} variance entries for {len(layers)} layers")
    with torch.no_grad():
        for index, variances in zip(layers, metadata["variance_head"]):
            sigma2 = torch.as_tensor(variances, dtype=model[index].weight_rho.dtype)
            model[index].weight_rho.copy_(torch.log(torch.expm1(sigma2)))  # softplus^-1
    return model.eval()
