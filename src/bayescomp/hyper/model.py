"""The conditional Bayesian hypernetwork (Nguyen et al., ECML-PKDD 2021), as reconstructed in the research digest.

Every Linear/Conv2d layer of a pretrained plain network keeps its weight W~ (shared by all contexts, initialised
from the teacher) and gains scales on both sides, the input-output group factorisation:

    W = diag(z_out) W~ diag(z_in)      (Conv2d: z_in per input channel, z_out per filter; the bias is scaled by
                                        z_out, so a filter whose scale is 0 outputs exactly 0)

The last layer has no output scales: its outputs are the classes, which the context selects. A small MLP, the
hypernetwork, maps a context (multi-hot classes, log budget; :class:`~bayescomp.hyper.context.Context`) to the
posterior q(z | c) = N(mu(c), sigma²(c)) of every scale, under the log-uniform prior of BC-GNJ; log alpha =
log sigma² - log mu² decides which groups survive, as in Louizos et al. (2017).

Choices marked UNVERIFIED (only the paper's abstract was available, arXiv 2205.06404), each an option of
:class:`HyperConfig`:

* W~ has BC-GNJ's weight posterior by default, q(W~) = N(W~, sigma²) per weight with KL to N(0, 1) (the
  non-centred form of p(w | z) = N(0, z²)), shared by all contexts: its variance is what sets BC's bit widths.
  ``weight_posterior=False`` keeps W~ a point estimate (the "deterministic W~ initialised from the teacher"
  variant of the reconstruction), so the scales carry all the uncertainty. The log-uniform KL depends only on
  log alpha, so it is invariant to trading scale between W~ and z.
* The budget b weights the KL by ``b ** -budget_power`` (b = 1: the BC-GNJ objective), and generation caps the
  generated network's multiply-accumulates at ``b`` times the dense network's.
* ``factorization`` offers ``"input_output"`` (the paper's), ``"input"`` (BC-GNJ's one scale per input) and
  ``"output"`` for ablations.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bayescomp.compress.chain import _leaves, build_chain
from bayescomp.noise import standard_normal, standard_normal_like
from bayescomp.priors.group_nj import kl_log_uniform_approx, kl_standard_normal

_EPS = 1e-8
FACTORIZATIONS = ("input_output", "input", "output")


@dataclass
class HyperConfig:
    """Options of the conditional hypernetwork (saved with it).

    Args:
        hidden: width of the hypernetwork's hidden layers.
        depth: hidden layers of the hypernetwork (ReLU).
        init_log_sigma2: initial log-variance of every scale (BC reference: -9); the means start at 1, so the
            untrained compressor is the teacher.
        max_log_sigma2: upper bound on the scales' log-variances (sigma <= 1 at 0). A pruned group needs a large
            log alpha = log sigma² - log mu², which a small mean gives; without the bound a context-dependent
            head can raise sigma instead and the sampled scales blow the logits up (measured: loss 1e9).
        factorization: ``"input_output"`` (scales on both sides of every layer, the paper's factorisation),
            ``"input"`` or ``"output"`` (one side only; for ablations). UNVERIFIED exact form.
        budget_power: the KL of a context with budget b is weighted by ``b ** -budget_power``. UNVERIFIED.
        budget_masking: in training, a context with budget b < 1 runs the network generation would give it at
            that budget (groups removed in order of log alpha until its multiply-accumulates fit; no threshold),
            so the shared weights learn to work when the budget cuts deep. UNVERIFIED (our addition). On by
            default: on LeNet-5/MNIST it cut the error at budget 0.1 from 2.7-5.2 % to 1.5-1.6 % and made the
            budget-1 networks smaller (``benchmarks/results/lenet5_mnist_hyper*.json``, both variants).
        budget_min: training budgets are drawn log-uniformly from [budget_min, 1] ...
        full_budget_share: ... except this share of training contexts, which get budget 1.
        min_classes, max_classes: training contexts have a uniform number of classes in this range
            (``max_classes=None``: all classes).
        threshold: log-alpha threshold of generation (keep a group if log alpha < threshold); ``None`` until
            :func:`bayescomp.hyper.generate.calibrate_threshold` sets it from validation contexts.
        tolerance_pct: the calibration keeps the mean validation error within this many points of the unpruned
            posterior mean's, over the calibration contexts.
        calibration_contexts: how many random validation contexts the calibration uses.
        weight_posterior: give every shared weight W~ a Gaussian posterior N(W~, sigma²) (BC-GNJ's, Louizos et
            al. 2017, Eq. 6: q(w~) Gaussian, KL to N(0, 1)), trained with local reparameterisation. The weights
            are shared by all contexts, so their KL enters once per training set (KL / N_train, not weighted by
            the budget). Generation still uses the posterior mean; the bit widths then count both variances.
            UNVERIFIED whether the paper has it (our addition). On by default: against an unconditional BC-GNJ
            model trained for the same epochs and cut to each context's validation error, the generated networks
            were no larger in 50 of 50 contexts, in weights and with bits, on MNIST and Fashion-MNIST and on both
            seeds tried; without it they won on weights but lost with bits in 26-35 of 50
            (``benchmarks/results/hyper_equal_error_lenet5_*``, docs/limits.md).
        weight_clip_var: upper bound on those weight variances (BC-GNJ's ``clip_var``).
    """

    hidden: int = 256
    depth: int = 2
    init_log_sigma2: float = -9.0
    max_log_sigma2: float = 0.0
    factorization: str = "input_output"
    budget_power: float = 1.0
    budget_masking: bool = True
    budget_min: float = 0.05
    full_budget_share: float = 0.5
    min_classes: int = 2
    max_classes: int | None = None
    threshold: float | None = None
    tolerance_pct: float = 0.3
    calibration_contexts: int = 20
    weight_posterior: bool = True
    weight_clip_var: float = 0.2

    def __post_init__(self) -> None:
        if self.factorization not in FACTORIZATIONS:
            raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {self.factorization!r}")
        if self.min_classes < 2:
            raise ValueError(f"min_classes must be at least 2, got {self.min_classes}")
        if not 0 < self.budget_min <= 1:
            raise ValueError(f"budget_min must be in (0, 1], got {self.budget_min}")


@dataclass(frozen=True)
class LayerGroups:
    """Where a layer's scales sit in the hypernetwork's output vector (``None``: that side has no scales)."""

    kind: str  # "linear" or "conv"
    in_size: int
    out_size: int
    in_slice: slice | None
    out_slice: slice | None
    kernel: int  # weights per (input, output) pair: kh * kw for Conv2d, 1 for Linear
    positions: int  # output positions per example (H_out * W_out for Conv2d, 1 for Linear)


class HyperCompressor(nn.Module):
    """A teacher network with context-generated group scales; see the module docstring.

    Args:
        teacher: a trained plain ``nn.Sequential`` of the zoo's kind (Linear/Conv2d chains; see
            :func:`bayescomp.compress.chain.build_chain`). It is copied, not changed.
        num_classes: classes of the data set (the teacher's outputs).
        input_shape: C x H x W of one example (for the compute accounting).
    """

    def __init__(self, teacher: nn.Sequential, num_classes: int, input_shape: tuple[int, int, int],
                 config: HyperConfig | None = None) -> None:
        super().__init__()
        self.config = config or HyperConfig()
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.net = copy.deepcopy(teacher).train()
        chain = build_chain(self.net)  # raises UnsupportedModelError naming an unsupported module
        self._prunable = tuple(layer.module for layer in chain.layers)  # not registered again: already in net
        if chain.layers[-1].out_size != num_classes:
            raise ValueError(f"the teacher's last layer has {chain.layers[-1].out_size} outputs, expected "
                             f"{num_classes} (one per class)")
        positions = self._output_positions(chain)
        groups, offset = [], 0
        last = len(chain.layers) - 1
        for i, layer in enumerate(chain.layers):
            has_in = self.config.factorization in ("input_output", "input")
            has_out = self.config.factorization in ("input_output", "output") and i != last
            in_slice = slice(offset, offset + layer.in_size) if has_in else None
            offset += layer.in_size if has_in else 0
            out_slice = slice(offset, offset + layer.out_size) if has_out else None
            offset += layer.out_size if has_out else 0
            kernel = 1 if layer.kind == "linear" else math.prod(layer.module.kernel_size)
            groups.append(LayerGroups(layer.kind, layer.in_size, layer.out_size, in_slice, out_slice, kernel,
                                      positions[i]))
        self.groups = groups
        self.num_groups = offset
        layers: list[nn.Module] = []
        width = num_classes + 1
        for _ in range(self.config.depth):
            layers += [nn.Linear(width, self.config.hidden), nn.ReLU()]
            width = self.config.hidden
        self.body = nn.Sequential(*layers)
        self.head_mu = nn.Linear(width, self.num_groups)
        self.head_log_sigma2 = nn.Linear(width, self.num_groups)
        with torch.no_grad():  # start at the teacher: mu = 1, log sigma² = init, for every context
            self.head_mu.weight.zero_()
            self.head_mu.bias.zero_()
            self.head_log_sigma2.weight.zero_()
            self.head_log_sigma2.bias.fill_(self.config.init_log_sigma2)
        #: log sigma² of each prunable layer's W~ (``weight_posterior``), in chain order; empty otherwise
        self.weight_log_sigma2 = nn.ParameterList(
            [nn.Parameter(torch.full_like(layer.module.weight, self.config.init_log_sigma2))
             for layer in chain.layers] if self.config.weight_posterior else [])
        self.register_buffer("threshold", torch.tensor(
            float("nan") if self.config.threshold is None else float(self.config.threshold)))

    # ----------------------------------------------------------------------------------------------- structure
    def _output_positions(self, chain) -> list[int]:
        sizes: dict[int, int] = {}
        hooks = [layer.module.register_forward_hook(
            lambda m, a, out, i=i: sizes.__setitem__(i, int(out[0, 0].numel()) if out.dim() == 4 else 1))
            for i, layer in enumerate(chain.layers)]
        try:
            with torch.no_grad():
                self.net.eval()(torch.zeros(1, *self.input_shape))
        finally:
            for hook in hooks:
                hook.remove()
            self.net.train()
        return [sizes[i] for i in range(len(chain.layers))]

    def prunable(self) -> list[nn.Module]:
        """The teacher's Linear/Conv2d layers in order (their weights are the shared W~)."""
        return list(self._prunable)

    def dense_flops(self) -> int:
        """Multiply-accumulates of the dense teacher for one example (Linear and Conv2d layers)."""
        return sum(g.in_size * g.out_size * g.kernel * g.positions for g in self.groups)

    def dense_weights(self) -> int:
        return sum(g.in_size * g.out_size * g.kernel for g in self.groups)

    # ----------------------------------------------------------------------------------------------- posterior
    def posterior(self, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and log-variances of all scales for context vectors (n x (num_classes + 1)) -> (n x G) each."""
        hidden = self.body(contexts)
        return 1.0 + self.head_mu(hidden), self.head_log_sigma2(hidden).clamp(max=self.config.max_log_sigma2)

    @staticmethod
    def log_alpha(mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
        return log_sigma2 - torch.log(mu.pow(2) + _EPS)

    def kl_divergence(self, mu: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
        """KL(q(z | c) || log-uniform) summed over the scales (Molchanov et al. 2017 approximation, as BC-GNJ)."""
        return kl_log_uniform_approx(self.log_alpha(mu, log_sigma2)).sum(-1)

    def shared_weight_variances(self) -> list[torch.Tensor | None]:
        """sigma² of every layer's W~ (clipped at ``weight_clip_var``), or ``None`` per layer without a posterior."""
        if not self.config.weight_posterior:
            return [None] * len(self.groups)
        bound = math.log(self.config.weight_clip_var)
        return [p.clamp(max=bound).exp() for p in self.weight_log_sigma2]

    def weight_kl(self) -> torch.Tensor:
        """Sum of KL(N(W~, sigma²) || N(0, 1)) over the shared weights (0 without a weight posterior)."""
        if not self.config.weight_posterior:
            return torch.zeros(())
        bound = math.log(self.config.weight_clip_var)
        return sum(kl_standard_normal(module.weight, p.clamp(max=bound))
                   for module, p in zip(self.prunable(), self.weight_log_sigma2))

    def split(self, values: torch.Tensor) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Per layer (input scales, output scales) views of a (..., G) tensor (``None`` where a side has none)."""
        return [(None if g.in_slice is None else values[..., g.in_slice],
                 None if g.out_slice is None else values[..., g.out_slice]) for g in self.groups]

    # ------------------------------------------------------------------------------------------------- forward
    def forward_with_scales(self, x: torch.Tensor, scales: list[tuple[torch.Tensor | None, torch.Tensor | None]],
                            sample_weights: bool = False) -> torch.Tensor:
        """Logits of all classes with the given scales (each (G_side,) or per example (B, G_side)); with
        ``sample_weights`` (training, ``weight_posterior`` only) each layer's pre-activation is drawn from its
        Gaussian marginal over W~ (local reparameterisation), otherwise W~ is its posterior mean."""
        index = 0
        variances = self.shared_weight_variances() if sample_weights else [None] * len(self.groups)
        for _, module in _leaves(self.net):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                z_in, z_out = scales[index]
                spatial = (1, 1) if isinstance(module, nn.Conv2d) else ()
                if z_in is not None:
                    x = x * z_in.reshape(*(z_in.shape[:-1] or (1,)), -1, *spatial)
                x = module(x) if variances[index] is None else _local_reparameterisation(module, x, variances[index])
                if z_out is not None:
                    x = x * z_out.reshape(*(z_out.shape[:-1] or (1,)), -1, *spatial)
                index += 1
            else:
                x = module(x)
        return x

    def forward(self, x: torch.Tensor, context: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Logits of all classes for one context vector; ``sample`` draws the scales per example (training)."""
        mu, log_sigma2 = self.posterior(context.reshape(1, -1))
        if sample:
            z = mu + standard_normal(x.shape[0], mu.shape[-1], device=x.device) * (0.5 * log_sigma2).exp()
        else:
            z = mu[0]
        return self.forward_with_scales(x, self.split(z), sample_weights=sample)

    def extra_repr(self) -> str:
        return (f"groups={self.num_groups}, factorization={self.config.factorization}, "
                f"threshold={float(self.threshold):.3g}")


def _local_reparameterisation(module: nn.Module, x: torch.Tensor, weight_var: torch.Tensor) -> torch.Tensor:
    """A draw of ``module``'s output with W ~ N(module.weight, weight_var) per weight: mean x W^T + b, variance
    x² var^T (Kingma et al. 2015, Sec. 2.3; the bias is the teacher's, deterministic)."""
    if isinstance(module, nn.Linear):
        mean, var = module(x), F.linear(x.square(), weight_var)
    else:
        mean = module(x)
        var = F.conv2d(x.square(), weight_var, None, module.stride, module.padding, module.dilation, module.groups)
    return mean + var.add(_EPS).sqrt() * standard_normal_like(mean)
