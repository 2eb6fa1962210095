"""Turbo-VBI: structured Bayesian compression with a three-layer prior (Xia, Tsang, Lau, IEEE TSP 2023).

Prior (reconstruction): w_n | rho_n ~ N(0, 1/rho_n); rho_n | s_n ~ Gamma(a, b) if the support s_n = 1 (active: a broad
slab) else Gamma(a_bar, b_bar) (inactive: a narrow spike at zero); s ~ a Markov random field over the layer's
weight grid (rows = output neurons, columns = inputs; a conv weight (out, in, kh, kw) is its GEMM matrix
(out, in*kh*kw), so a filter is a row and a kernel slice a run of kh*kw neighbours). The MRF makes active weights
cluster in runs and blocks, and whole rows (neurons) go empty together.

Inference alternates two modules (Turbo-VBI):

* **module A** (variational inference): the **w-step** is ordinary training of q(w) = N(mu, sigma²) (local
  reparameterisation) with the KL to N(0, 1/E[rho_n]), i.e. a per-weight learned weight decay; the **rho-** and
  **s-steps** are closed form (:mod:`bayescomp.priors.turbo_updates`) and produce the posterior support pi~_n;
* **module B** (:mod:`bayescomp.priors.support_mrf`): sum-product loopy BP on the grid. A sends B its extrinsic
  evidence logit pi~ - logit pi; B returns the new prior pi_n (everything the MRF says about s_n except A's own
  evidence at n).

The hyper-parameter steps run every ``update_every`` optimiser steps (or once per epoch), inside the trainer's
after-step hook, so they are checkpointed with the layer (buffers) and a resumed run continues exactly.

The weights' natural scale differs by layer and network, so by default the precisions are set relative to the
RMS of the layer's starting (pre-trained) weights (``weight_scale="rms"``): the slab's mean precision is
1 / (slab_std * rms)², the spike's 1 / (spike_std * rms)². The reference demo's absolute values (a = b = 1,
a_bar = 1, b_bar = 0.01) correspond to ``weight_scale="absolute", slab_std=1, spike_std=0.1``. This scaling, the
structured q(rho, s) and all default values are our choices (the paper's could not be read: UNVERIFIED).

Compression: weight n is kept iff pi~_n > 0.5 (the posterior support); a neuron/filter whose weights are all
pruned is removed by the shared structured path (its group statistic is the smallest -logit pi~ over its weights).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from bayescomp.priors.base import (
    BayesianConv2d, BayesianLayer, BayesianLinear, PerWeightGaussian, PriorSpec, register_prior,
)
from bayescomp.priors.support_mrf import MarkovGridPrior, grid_bp
from bayescomp.priors.turbo_updates import (
    GammaPair,
    expected_precision,
    mean_field_evidence,
    mean_field_rho_step,
    structured_posteriors,
)
from bayescomp.tracing import output_layers

_EPS = 1e-8
NEURON_COST_UNITS = ("weight", "mac")  # what TurboVBIConfig.neuron_cost is charged per
NEURON_EVIDENCE = ("weights", "fisher")  # what a neuron's belief hears besides its prior (TurboVBIConfig)


@dataclass
class TurboVBIConfig:
    """Options of Turbo-VBI, saved with every run.

    Args:
        slab_std: the active component's prior std, 1/sqrt(a/b), in units of ``weight_scale``.
        spike_std: the inactive component's prior std, 1/sqrt(a_bar/b_bar), in the same units.
        a_active, a_inactive: Gamma shapes a and a_bar (1 in the reference demo); small shapes give heavy-tailed
            (Student-t) weight priors, large ones nearly Gaussian components.
        weight_scale: ``"rms"`` (the layer's starting weight RMS) or ``"absolute"`` (1).
        p01, p11, p_start: MRF transition probabilities P(active | inactive neighbour), P(active | active
            neighbour) and a chain's start probability (see :class:`MarkovGridPrior`), along the rows (a neuron's
            or filter's inputs) and, unless overridden, along the columns.
        p01_vertical, p11_vertical: the transition probabilities along the columns (across output neurons), when
            they should differ (e.g. stronger coupling along rows favours whole neurons on or off).
        factorization: ``"structured"`` q(rho, s) = q(s) q(rho | s) or ``"mean_field"`` q(rho) q(s) (reference demo).
        convention: ``"real"`` VB constants (+1/2, E[w²]/2) or the reference demo's ``"complex"`` (+1, E[w²]).
        update_every: optimiser steps between Turbo iterations (rho-, s-step and module B); 0 = once per epoch.
        exchanges: A <-> B message exchanges per Turbo iteration.
        bp_iterations, bp_damping, bp_tol: loopy-BP sweeps per exchange (warm-started from the last messages),
            damping of the message updates, and the convergence tolerance on the messages (log-odds).
        init_log_sigma2: initial log sigma² of the weights (near-deterministic start from the pre-trained net),
            lowered to the ``sigma_clip`` bound where that is smaller.
        sigma_clip: upper bound on every weight's posterior std, as a multiple of the spike's std (the analogue
            of BC's ``clip_var``; ``None``: no bound). Without it, the posterior std of a weight the data do not
            need grows to the slab's std, so E[w²] = mu² + sigma² looks like a slab weight's and the support
            locks at "active" although mu -> 0 (measured on LeNet-300-100: nothing pruned, sigma ~ 1 RMS). With
            the bound, a weight whose mean has shrunk below the spike's scale is declared inactive.
        train_clip: zero the weights with pi~ <= 0.5 in the training forward as well (off: the spike shrinks them).
        threshold: keep weight n iff -logit pi~_n < threshold (0: pi~ > 0.5).
        prune_threshold: the deployed network's threshold on -logit pi~, when it should differ from ``threshold``
            (which ``train_clip`` applies in training); None: ``threshold``. A post-training setting: changing it
            reuses a trained posterior, so it can be chosen on the validation split.
        neuron_support: add the neuron level to module B: one support variable per output neuron / filter (grid
            row), on with prior probability ``p_neuron``, that forces its whole row off when it is off, so a
            filter switches off as a whole (:mod:`bayescomp.priors.support_mrf`; our reconstruction, UNVERIFIED).
        p_neuron: the neuron level's prior P(neuron on); an empty row is 1/p_neuron times more likely a priori.
            Off by default: on LeNet-5/MNIST (8 Bayesian epochs, one seed; benchmarks/results/turbo_neuron_*.md)
            p_neuron = 1e-4 removed a few more conv2 filters and fc neurons than the same schedule without it
            (20-21-233-65 vs 20-24-245-84) at about the same validation error, far from BC-GNJ's 8-12 filters;
            too small and too short a measurement to change what the committed Turbo rows were run with.
        neuron_cost: nats per weight of a row subtracted from its neuron's prior log-odds (with ``neuron_support``):
            logit P(neuron on) = logit p_neuron - neuron_cost * fan-in, so a neuron stays on only while its
            weights' combined evidence for being active exceeds neuron_cost per weight it could keep. A plain
            p_neuron is negligible against the evidence of hundreds of weights; the cost scales with the row.
            Our reconstruction (UNVERIFIED); 0 (off) by default.
        neuron_cost_per: what ``neuron_cost`` is charged for. ``"weight"`` (default): per weight of the row (its
            fan-in), a description-length price. ``"mac"``: per multiply-accumulate the neuron spends on one
            example, fan-in x output positions (1 for a Linear layer, H_out x W_out for a Conv2d), so a filter
            pays for its compute; CPU latency follows the filters a model keeps (docs/limits.md), and a conv1 row
            of 25 weights that runs at 576 positions costs like a 14,400-weight row. The positions are measured
            by one forward pass (:func:`record_output_positions`, run by the method's prepare hook). Our choice
            (UNVERIFIED).
        neuron_cost_warmup_epochs: raise ``neuron_cost`` linearly over the first epochs (epoch e, counted from 1,
            is charged e / warmup of it; 0: the full cost from the start), as the KL is warmed up. Why: at the
            start the rows' evidence is still that of the dense network, so a price that the trained survivors
            could pay switches a whole layer off in the first epoch (LeNet-5, 0.02 nats per MAC); a ramp was meant
            to let the surviving filters take over from those the cost removes first. Measured (LeNet-5, 6-epoch
            ramp; benchmarks/results/turbo_neuron_lenet5_mnist_ramp.md): it only delayed that collapse to epoch 5,
            and at 0.015 kept more conv1 filters than the constant 0.01. Our choice (UNVERIFIED); off by default.
        neuron_evidence: what a neuron's belief hears besides its prior. ``"weights"`` (default): only its row's
            weight supports, i.e. the weights' sizes against the spike and the slab; a 25-weight conv1 row can
            show at most ~250-350 nats that way, whatever the data need from it (docs/limits.md).
            ``"fisher"`` adds the data's own evidence: the training NLL the network would lose without the
            neuron, by a second-order Taylor expansion in the neuron's output with the empirical Fisher
            information for the Hessian (LeCun et al. 1990's saliency; per unit as Molchanov et al. 2017's Taylor
            criterion and Theis et al. 2018's Fisher pruning): with a_r the row's output minus its bias and g the
            gradient of example b's NLL, delta_b = sum over positions of a_r g, and ΔNLL_r = N (E_b[delta_b²] / 2
            - E_b[delta_b]), N the training-set size (:func:`set_train_examples`; the pipeline sets it). Checked
            against the loss of actually zeroing each filter of a small trained CNN (same ranking, 0.4-0.85x its
            size). It is accumulated from the training steps' own outputs and gradients (backward hooks, nothing
            extra is run; before training the pipeline primes it with one pass over 20 mini-batches,
            :func:`prime_fisher_evidence`), read at every Turbo iteration and added to the neuron's log-odds as a
            unary factor.
            A neuron the data lean on then survives a MAC price that its weights' evidence alone could not pay,
            and a switched-off neuron, whose output has shrunk, shows no data evidence. Not in the paper: a
            collapsed (Laplace-style) estimate of log p(D | t_r = 1) - log p(D | t_r = 0) where mean-field VB
            sees the data only through q(w); ours (UNVERIFIED). It assumes the loss is the mean NLL over the
            mini-batch (the library's objective). Needs ``neuron_support``. Measured on LeNet-5 with a price per
            MAC (benchmarks/results/turbo_neuron_lenet5_mnist_fisher*.md): filters now go one by one instead
            of a whole layer at once, but no price kept the error at 1.0 % with fewer conv1 filters than
            BC-GNJ's 8 (0.93 % with 11-10 filters after 8 epochs; 1.46 % with 11-7 after 30), so it is off by
            default.
    """

    slab_std: float = 3.0
    spike_std: float = 0.01
    a_active: float = 1.0
    a_inactive: float = 1.0
    weight_scale: str = "rms"
    p01: float = 0.1
    p11: float = 0.8
    p_start: float = 0.3
    p01_vertical: float | None = None
    p11_vertical: float | None = None
    factorization: str = "structured"
    convention: str = "real"
    update_every: int = 100
    exchanges: int = 1
    bp_iterations: int = 10
    bp_damping: float = 0.3
    bp_tol: float = 1e-3
    init_log_sigma2: float = -10.0
    sigma_clip: float | None = 1.0
    train_clip: bool = False
    threshold: float = 0.0
    prune_threshold: float | None = None
    neuron_support: bool = False
    p_neuron: float = 0.1
    neuron_cost: float = 0.0
    neuron_cost_per: str = "weight"
    neuron_cost_warmup_epochs: int = 0
    neuron_evidence: str = "weights"
    name: str = "turbo"

    def __post_init__(self) -> None:
        if self.factorization not in ("structured", "mean_field"):
            raise ValueError(f"factorization must be 'structured' or 'mean_field', got {self.factorization!r}")
        if self.convention not in ("real", "complex"):
            raise ValueError(f"convention must be 'real' or 'complex', got {self.convention!r}")
        if self.weight_scale not in ("rms", "absolute"):
            raise ValueError(f"weight_scale must be 'rms' or 'absolute', got {self.weight_scale!r}")
        if not 0 < self.spike_std < self.slab_std:
            raise ValueError(f"need 0 < spike_std < slab_std, got {self.spike_std} and {self.slab_std}")
        if min(self.a_active, self.a_inactive) <= 0:
            raise ValueError("the Gamma shapes a_active and a_inactive must be positive")
        if self.sigma_clip is not None and self.sigma_clip <= 0:
            raise ValueError(f"sigma_clip must be positive or None, got {self.sigma_clip}")
        if self.update_every < 0 or self.exchanges < 1 or self.bp_iterations < 1:
            raise ValueError("update_every must be >= 0, exchanges and bp_iterations >= 1")
        if self.neuron_cost_per not in NEURON_COST_UNITS:
            raise ValueError(f"neuron_cost_per must be one of {', '.join(map(repr, NEURON_COST_UNITS))},"
                             f" got {self.neuron_cost_per!r}")
        if self.neuron_evidence not in NEURON_EVIDENCE:
            raise ValueError(f"neuron_evidence must be one of {', '.join(map(repr, NEURON_EVIDENCE))},"
                             f" got {self.neuron_evidence!r}")
        if self.neuron_evidence == "fisher" and not self.neuron_support:
            raise ValueError("neuron_evidence='fisher' needs neuron_support=True (it is evidence on the neurons)")
        if self.neuron_cost_warmup_epochs < 0:
            raise ValueError(f"neuron_cost_warmup_epochs must be >= 0, got {self.neuron_cost_warmup_epochs}")
        if not 0.0 < self.p_neuron < 1.0:
            raise ValueError(f"p_neuron must be a probability in the open interval (0, 1), got {self.p_neuron}")
        if self.prune_threshold is not None:
            self.prune_threshold = float(self.prune_threshold)
        self.mrf()  # validates the probabilities

    @property
    def deploy_threshold(self) -> float:
        """The threshold of the pruned network: ``prune_threshold``, else ``threshold``."""
        return self.threshold if self.prune_threshold is None else self.prune_threshold

    def mrf(self) -> MarkovGridPrior:
        return MarkovGridPrior(p01=self.p01, p11=self.p11, p_start=self.p_start, p01_vertical=self.p01_vertical,
                               p11_vertical=self.p11_vertical, p_neuron=self.p_neuron if self.neuron_support else None,
                               neuron_cost=self.neuron_cost)


class _TurboMixin(PerWeightGaussian):
    """Parameters, closed-form hyper-parameter steps and module B, shared by the Linear and the Conv2d layer."""

    def _init_posterior(self, weight: torch.Tensor, bias: torch.Tensor | None, cfg: TurboVBIConfig) -> None:
        self.config = cfg
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_log_sigma2 = nn.Parameter(torch.full_like(self.weight_mu, cfg.init_log_sigma2))
        if bias is not None:
            self.bias_mu = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias_mu", None)
        grid = self.weight_mu.detach().reshape(self.weight_mu.shape[0], -1)
        self.register_buffer("support_log_odds", torch.zeros_like(grid))  # logit pi~ (posterior support)
        self.register_buffer("prior_log_odds", torch.zeros_like(grid))  # logit pi (module B's message to A)
        self.register_buffer("precision_mean", torch.ones_like(grid))  # E[rho]
        self.register_buffer("precision_log_mean", torch.zeros_like(grid))  # E[ln rho]
        self.register_buffer("bp_messages", torch.zeros(cfg.mrf().message_count, *grid.shape))
        if cfg.neuron_support:  # log-odds q(neuron on) per grid row, module B's neuron marginal
            self.register_buffer("neuron_log_odds", torch.zeros(grid.shape[0]))
        # False on a layer whose rows are the network's outputs (the classes): no neuron level there; not saved:
        # the method's prepare hook sets it again before a checkpoint is loaded
        self.register_buffer("neuron_level", torch.tensor(cfg.neuron_support), persistent=False)
        self.output_positions = 1  # outputs per example and row (H_out x W_out for a conv); record_output_positions
        if cfg.neuron_support and cfg.neuron_cost_per == "mac":  # kept current by every forward (own loops too)
            self.register_forward_hook(_note_output_positions)
        self.register_buffer("weight_scale", torch.ones(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        if cfg.neuron_cost_warmup_epochs > 0:  # only then: older checkpoints keep loading
            self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))
        if cfg.neuron_evidence == "fisher":  # only then, as above
            rows = grid.shape[0]
            self.register_buffer("neuron_data_evidence", torch.zeros(rows))  # ΔNLL_r in nats, last estimate
            self.register_buffer("fisher_sum", torch.zeros(rows, dtype=torch.float64))  # sum_b delta_b²
            self.register_buffer("gradient_sum", torch.zeros(rows, dtype=torch.float64))  # sum_b delta_b
            self.register_buffer("fisher_examples", torch.zeros((), dtype=torch.long))
            self.register_buffer("train_examples", torch.zeros((), dtype=torch.long))  # N (set_train_examples)
            self.register_forward_hook(_watch_output_for_fisher)
        self.module_b_seconds = 0.0  # wall time spent in module B (not saved)
        self.module_b_calls = 0
        self.reset_hyperparameters()

    def _load_means(self, layer: nn.Module) -> BayesianLayer:
        super()._load_means(layer)
        self.reset_hyperparameters()
        return self

    # --- module A: closed-form steps ---------------------------------------------------------------------------
    def gamma_pair(self) -> GammaPair:
        cfg, scale = self.config, float(self.weight_scale)
        return GammaPair(a=cfg.a_active, b=cfg.a_active * (cfg.slab_std * scale) ** 2,
                         a_bar=cfg.a_inactive, b_bar=cfg.a_inactive * (cfg.spike_std * scale) ** 2)

    def second_moment(self) -> torch.Tensor:
        """E_q[w²] = mu² + sigma² on the layer's grid (detached)."""
        mu = self.weight_mu.detach()
        return (mu.square() + self.weight_log_sigma2.detach().exp()).reshape(self.support_log_odds.shape)

    @torch.no_grad()
    def reset_hyperparameters(self) -> None:
        """Weight scale from the current means, support and messages back to the MRF prior, then one iteration."""
        scale = self.weight_mu.detach().square().mean().sqrt() if self.config.weight_scale == "rms" else 1.0
        self.weight_scale.fill_(max(float(scale), _EPS))
        self._clip_sigma()
        self.bp_messages.zero_()
        prior = grid_bp(torch.zeros_like(self.support_log_odds), self.mrf(), self.config.bp_iterations * 5,
                        self.config.bp_damping, self.config.bp_tol, neuron_evidence=self._neuron_evidence())
        self.prior_log_odds.copy_(prior.extrinsic_log_odds)
        self.support_log_odds.copy_(prior.extrinsic_log_odds)
        self._store_neurons(prior)
        self.turbo_update()

    def mrf(self) -> MarkovGridPrior:
        """This layer's support prior: the config's, without the neuron level where it is switched off."""
        prior = self.config.mrf()
        if not bool(self.neuron_level):
            return replace(prior, p_neuron=None)
        cost = prior.neuron_cost * self.neuron_cost_ramp()
        if self.config.neuron_cost_per == "mac":  # fan-in x positions = MACs per example of one row
            cost *= self.output_positions
        return replace(prior, neuron_cost=cost)

    def neuron_cost_ramp(self) -> float:
        """The share of ``neuron_cost`` charged in the current epoch: min(1, epoch / warm-up), epoch from 1."""
        warmup = self.config.neuron_cost_warmup_epochs
        return 1.0 if warmup == 0 else min(1.0, (int(self.epochs_done) + 1) / warmup)

    @torch.no_grad()
    def disable_neuron_level(self) -> None:
        """No neuron level on this layer (its rows are the network's outputs, which must all stay): module B
        runs the plain grid, and the hyper-parameters restart from it."""
        if not bool(self.neuron_level):
            return
        self.neuron_level.fill_(False)
        self.bp_messages = self.bp_messages.new_zeros((self.mrf().message_count, *self.support_log_odds.shape))
        self.neuron_log_odds.fill_(float("inf"))
        self.reset_hyperparameters()

    def _store_neurons(self, result) -> None:
        if result.neuron_log_odds is not None:
            self.neuron_log_odds.copy_(result.neuron_log_odds)

    def _neuron_evidence(self) -> torch.Tensor | None:
        """The data's evidence on each neuron (``neuron_evidence="fisher"``), else None."""
        if self.config.neuron_evidence != "fisher" or not bool(self.neuron_level):
            return None
        return self.neuron_data_evidence

    @torch.no_grad()
    def _accumulate_fisher(self, output: torch.Tensor, grad: torch.Tensor) -> None:
        """Add this step's delta_b and delta_b² per row (``neuron_evidence="fisher"``). ``grad`` is the gradient of
        the mini-batch's mean loss, so example b's own NLL gradient is batch x grad."""
        a, g = output.detach().float(), grad.detach().float()
        if self.bias_mu is not None:
            bias = self.bias_mu.detach().float()
            a = a - (bias.view(1, -1, *([1] * (a.dim() - 2))) if self.group_dim == "out" else bias)
        if self.group_dim == "out":  # conv (B, C, H, W): sum over positions
            delta = (a * g).flatten(2).sum(-1)
        else:  # Linear (B, ..., out): an example's tokens together
            delta = (a * g).reshape(a.shape[0], -1, a.shape[-1]).sum(1)
        batch = delta.shape[0]
        delta = (delta * batch).double()
        self.gradient_sum += delta.sum(0)
        self.fisher_sum += delta.square().sum(0)
        self.fisher_examples += batch

    @torch.no_grad()
    def _read_fisher(self) -> None:
        """Turn the accumulated delta_b into ΔNLL_r = N (E_b[delta_b²] / 2 - E_b[delta_b]) and start a new window."""
        if self.config.neuron_evidence != "fisher" or int(self.fisher_examples) == 0:
            return
        n = int(self.train_examples)
        if n <= 0:
            raise ValueError("TurboVBIConfig(neuron_evidence='fisher') needs the training-set size: call "
                             "bayescomp.priors.turbo_vbi.set_train_examples(model, len(train_set)) before "
                             "training (bayescomp.run does)")
        seen = int(self.fisher_examples)
        self.neuron_data_evidence.copy_(n * (0.5 * self.fisher_sum - self.gradient_sum) / seen)
        self.fisher_sum.zero_()
        self.gradient_sum.zero_()
        self.fisher_examples.zero_()

    @torch.no_grad()
    def turbo_update(self) -> None:
        """One Turbo-VBI iteration: ``exchanges`` rounds of (rho-step, s-step) -> module B -> new prior, then the
        precisions E[rho], E[ln rho] that the next w-steps use."""
        self._read_fisher()
        cfg, pair, x = self.config, self.gamma_pair(), self.second_moment()
        structured = cfg.factorization == "structured"
        if structured:
            active, inactive, evidence = structured_posteriors(x, pair, cfg.convention)
        for _ in range(cfg.exchanges):
            if not structured:
                shape, rate = mean_field_rho_step(x, torch.sigmoid(self.support_log_odds), pair, cfg.convention)
                evidence = mean_field_evidence(shape, rate, pair)
            started = time.perf_counter()
            result = grid_bp(evidence, self.mrf(), cfg.bp_iterations, cfg.bp_damping, cfg.bp_tol, self.bp_messages,
                             neuron_evidence=self._neuron_evidence())
            self.module_b_seconds += time.perf_counter() - started
            self.module_b_calls += 1
            self.bp_messages.copy_(result.messages)
            self.prior_log_odds.copy_(result.extrinsic_log_odds)
            self.support_log_odds.copy_(result.extrinsic_log_odds + evidence)
            self._store_neurons(result)
        support = torch.sigmoid(self.support_log_odds)
        if structured:
            e_rho, e_log_rho = expected_precision(support, active, inactive)
        else:
            e_rho, e_log_rho = expected_precision(support, mean_field_rho_step(x, support, pair, cfg.convention))
        self.precision_mean.copy_(e_rho)
        self.precision_log_mean.copy_(e_log_rho)

    @torch.no_grad()
    def _clip_sigma(self) -> None:
        if self.config.sigma_clip is not None:
            bound = 2 * torch.log(self.config.sigma_clip * self.config.spike_std * self.weight_scale)
            self.weight_log_sigma2.clamp_(max=float(bound))

    @torch.no_grad()
    def time_module_b_sweep(self, repeats: int = 5) -> float:
        """Median seconds of one loopy-BP sweep (all four message directions) on this layer's grid."""
        evidence = torch.zeros_like(self.support_log_odds)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            grid_bp(evidence, self.mrf(), 1, self.config.bp_damping, 0.0, self.bp_messages)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    def apply_constraints(self) -> None:
        """After every optimiser step: clip the weight variances, count the step, and run a Turbo iteration every
        ``update_every`` steps."""
        self._clip_sigma()
        self.steps += 1
        every = self.config.update_every
        if every > 0 and int(self.steps) % every == 0:
            self.turbo_update()

    def on_epoch_end(self) -> None:
        if self.config.neuron_cost_warmup_epochs > 0:
            self.epochs_done += 1
        if self.config.update_every == 0:
            self.turbo_update()

    # --- the layer interface -----------------------------------------------------------------------------------
    def support_probability(self) -> torch.Tensor:
        """pi~ = q(s = 1) per weight, shaped like the weight."""
        return torch.sigmoid(self.support_log_odds).reshape(self.weight_mu.shape)

    @torch.no_grad()
    def weight_keep_mask(self) -> torch.Tensor:
        """Keep weight n iff -logit pi~_n < the deployed threshold (pi~ > 0.5 by default)."""
        return (-self.support_log_odds < self.config.deploy_threshold).reshape(self.weight_mu.shape)

    @torch.no_grad()
    def _train_keep_mask(self) -> torch.Tensor:
        """The mask ``train_clip`` applies in training: the training ``threshold``, whatever is deployed."""
        return (-self.support_log_odds < self.config.threshold).reshape(self.weight_mu.shape)

    def group_log_alpha(self) -> torch.Tensor:
        """Per neuron (Linear input) or filter (Conv2d output), the smallest -logit pi~ over its weights: a group
        is below the threshold iff one of its weights is kept, so empty groups go with the structured path."""
        stat = -self.support_log_odds.reshape(self.weight_mu.shape)
        if self.group_dim == "in":
            return stat.amin(dim=0)
        return stat.flatten(1).amin(dim=1)

    def kl_divergence(self) -> torch.Tensor:
        """E_q(rho, s)[KL(q(w) || N(0, 1/rho))] summed over weights: the part of the KL that depends on the trained
        parameters (the rho and s terms are maximised in closed form and are constants of the w-step)."""
        e_rho = self.precision_mean.reshape(self.weight_mu.shape)
        e_log_rho = self.precision_log_mean.reshape(self.weight_mu.shape)
        log_sigma2 = self.weight_log_sigma2
        second = self.weight_mu.square() + log_sigma2.exp()
        return 0.5 * (e_rho * second - e_log_rho - log_sigma2 - 1.0).sum()


def _output_positions(layer: "_TurboMixin", out: torch.Tensor) -> int:
    """Outputs per example and grid row of ``layer``'s output ``out`` (H_out x W_out for a Conv2d)."""
    return out.numel() // (out.shape[0] * layer.support_log_odds.shape[0])


def _note_output_positions(layer: "_TurboMixin", args, out: torch.Tensor) -> None:
    layer.output_positions = _output_positions(layer, out)


def _watch_output_for_fisher(layer: "_TurboMixin", args, out: torch.Tensor) -> None:
    """Forward hook (``neuron_evidence="fisher"``): on a training step, hand the output and its gradient to the
    layer's Fisher accumulator when the backward pass reaches it."""
    if layer.training and not layer.deterministic and out.requires_grad and bool(layer.neuron_level):
        seen = out.detach()  # not ``out`` itself: its hook would hold it in a reference cycle
        out.register_hook(lambda grad: layer._accumulate_fisher(seen, grad))


@torch.enable_grad()
def prime_fisher_evidence(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          max_batches: int = 20) -> int:
    """Give the ``neuron_evidence="fisher"`` layers a first estimate before training: forward and backward passes
    of the mean cross-entropy over up to ``max_batches`` (images, labels) mini-batches at the starting weights (no
    optimiser step; gradients are cleared), then one Turbo iteration of each such layer. Without it the first
    iterations would meet a neuron price with no data evidence yet and could switch the neurons off before the
    data are heard. Returns the number of examples seen."""
    layers = _fisher_layers(model)
    if not layers:
        return 0
    training, seen = model.training, 0
    model.train()
    try:
        for k, (images, labels) in enumerate(batches):
            if k >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            seen += len(labels)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(training)
    for layer in layers:
        layer.turbo_update()
    return seen


def _fisher_layers(model: nn.Module) -> list["_TurboMixin"]:
    """The Turbo-VBI layers of ``model`` whose neurons hear the data's evidence (``neuron_evidence="fisher"``)."""
    return [m for m in model.modules() if isinstance(m, _TurboMixin) and m.config.neuron_evidence == "fisher"]


def set_train_examples(model: nn.Module, n: int) -> int:
    """Tell every Turbo-VBI layer with ``neuron_evidence="fisher"`` the training-set size N (its evidence is
    N (E_b[delta_b²] / 2 - E_b[delta_b]) nats); returns how many layers were told."""
    if n <= 0:
        raise ValueError(f"the training-set size must be positive, got {n}")
    layers = _fisher_layers(model)
    for layer in layers:
        layer.train_examples.fill_(int(n))
    return len(layers)


@torch.no_grad()
def record_output_positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Set every Turbo-VBI layer's ``output_positions`` (outputs per example and row: H_out x W_out for a Conv2d,
    1 for a Linear on flat inputs) from one forward pass on ``example``, restart module B on the layers whose
    neuron prior depends on it (``neuron_cost_per="mac"``), and return the positions by layer name."""
    layers = {m: n for n, m in model.named_modules() if isinstance(m, _TurboMixin)}
    seen: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args, out: torch.Tensor) -> None:
        seen[module] = _output_positions(module, out)

    before = {layer: layer.output_positions for layer in layers}  # a layer's own hook may update it in the pass
    handles = [m.register_forward_hook(hook) for m in layers]
    training = model.training
    try:
        model.eval()
        model(example)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    for layer, positions in seen.items():
        changed = before[layer] != positions
        layer.output_positions = positions
        if changed and bool(layer.neuron_level) and layer.config.neuron_cost_per == "mac":
            layer.reset_hyperparameters()
    return {layers[m]: p for m, p in seen.items()}


def disable_output_neuron_level(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Switch the neuron level off on the Turbo-VBI layers whose output is the network's output (their rows are
    the classes, which the structured path never removes) and return their names. Found by one forward pass on
    ``example`` (the layers whose output tensor is returned; else the last Turbo layer called); layers already
    without a neuron level are left as they are and not named."""
    layers = {m: n for n, m in model.named_modules() if isinstance(m, _TurboMixin)}
    if not any(bool(m.neuron_level) for m in layers):
        return []
    training = model.training
    try:
        model.eval()
        direct = output_layers(model, example, (_TurboMixin,))
    finally:
        model.train(training)
    chosen = [m for m in direct if bool(m.neuron_level)]
    for layer in chosen:
        layer.disable_neuron_level()
    return [layers[m] for m in chosen]


class LinearTurboVBI(_TurboMixin, BayesianLinear):
    """Bayesian ``nn.Linear`` under the Turbo-VBI prior; its support grid is the weight matrix (out x in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: TurboVBIConfig | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        template = nn.Linear(in_features, out_features, bias)
        self._init_posterior(template.weight, template.bias, config or TurboVBIConfig())


    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prior=turbo"


class Conv2dTurboVBI(_TurboMixin, BayesianConv2d):
    """Bayesian ``nn.Conv2d`` under the Turbo-VBI prior; its support grid is the GEMM matrix (out x in*kh*kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, config: TurboVBIConfig | None = None):
        super().__init__()
        template = self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._init_posterior(template.weight, template.bias, config or TurboVBIConfig())


    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, prior=turbo")


register_prior(PriorSpec(
    name="turbo",
    config_cls=TurboVBIConfig,
    from_linear=LinearTurboVBI.from_linear,
    from_conv2d=Conv2dTurboVBI.from_conv2d,
    description="Turbo-VBI: three-layer prior with an MRF support for regular sparsity (Xia et al. 2023)",
))
