"""The Bayesian priors as methods: every prior of :data:`bayescomp.priors.PRIORS` is registered here.

BC-GNJ / BC-GHS (Louizos, Ullrich, Welling 2017), Sparse VD (Molchanov et al. 2017) and Turbo-VBI (Xia, Tsang,
Lau 2023) share every hook: replace the layers (:func:`bayescomp.bayesify.bayesify`), train with the shared loop,
search thresholds on the posterior. What differs per prior is declared in :data:`PRIOR_TRAITS`; a prior without
an entry gets the defaults (no learning-rate scales, no extra flags).
"""

from __future__ import annotations

from dataclasses import is_dataclass, replace
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from bayescomp.bayesify import bayesify
from bayescomp.methods.base import Method, RunContext, register_method
from bayescomp.methods.finetune import search_and_compress
from bayescomp.priors import PRIORS
from bayescomp.priors.base import bayesian_layers
from bayescomp.priors.turbo_vbi import (
    disable_output_neuron_level, prime_fisher_evidence, record_output_positions, set_train_examples,
)


def _turbo_extras(model: nn.Module | None, ctx: RunContext) -> dict[str, Any]:
    """Turbo-VBI's report records the time of one module-B sweep (the message passing on the support)."""
    if model is None:
        return {}
    sweep = sum(layer.time_module_b_sweep() for _, layer in bayesian_layers(model))
    epochs = ctx.state["history"].epochs if "history" in ctx.state else []
    epoch_s = sum(e.get("epoch_s", 0.0) for e in epochs) / max(len(epochs), 1)
    return {"module_b_sweep_s": sweep, "epoch_s": epoch_s}


#: Per-prior declarations. ``post_training_settings``: the per-weight priors' deployed cut
#: (``prune_threshold``) is read only by ``compress``, so a run directory can be pruned again at another one.
#: ``lr_scales``: the parameters that decide which groups survive (GNJ: the group noise;
#: GHS: the log-normal scale factors, which live in log space and start far from where the prior pulls unneeded
#: groups) move ten times faster than the weights.
PRIOR_TRAITS: dict[str, dict[str, Any]] = {
    "gnj": {"lr_scales": {"z_log_sigma2": 10.0}, "group_lr_suffixes": ("z_log_sigma2",),
            "cli_options": ("clip_var",)},
    "ghs": {"lr_scales": {"scale_group_mu": 10.0, "scale_group_log_sigma2": 10.0, "scale_global_mu": 10.0},
            "group_lr_suffixes": ("scale_group_mu", "scale_group_log_sigma2", "scale_global_mu"),
            "cli_options": ("clip_var", "tau0")},
    "svd": {"aliases": ("sparse-vd",), "post_training_settings": ("prune_threshold",)},
    "turbo": {"aliases": ("turbo-vbi",), "report_extras": _turbo_extras,
              "post_training_settings": ("prune_threshold",)},
}


def with_post_training_settings(model: nn.Module, settings: Any, names: tuple[str, ...]) -> None:
    """Give every Bayesian layer of ``model`` the run's values of the post-training settings ``names``: a
    posterior trained (or read back) with other values is pruned as the run asks, not as it was trained. Each
    layer gets its own copy of its settings, so a model sharing them with another is left alone."""
    if not names:
        return
    values = {key: getattr(settings, key) for key in names}
    for _, layer in bayesian_layers(model):
        config = getattr(layer, "config", None)
        if is_dataclass(config) and all(hasattr(config, key) for key in names):
            layer.config = replace(config, **values)


def _prior_method(name: str) -> Method:
    spec = PRIORS[name]
    traits = dict(PRIOR_TRAITS.get(name, {}))
    traits["lr_scales"] = MappingProxyType(dict(traits.get("lr_scales", {})))

    def prepare(ctx: RunContext) -> nn.Module:
        model = bayesify(ctx.dense, name, ctx.settings, filter_fn=ctx.filter_fn, skip=ctx.skip)
        if getattr(ctx.settings, "neuron_support", False):  # Turbo-VBI: the classes have no neuron level
            record_output_positions(model, ctx.data.val.example())  # a neuron cost per MAC needs them
            disable_output_neuron_level(model, ctx.data.val.example())
            if getattr(ctx.settings, "neuron_evidence", "weights") == "fisher":  # its evidence is in nats over N
                set_train_examples(model, len(ctx.data.train))
                batches = ctx.data.train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0))
                prime_fisher_evidence(model, batches)
        return model

    post_training = tuple(traits.get("post_training_settings", ()))

    def compress(model: nn.Module, ctx: RunContext):
        with_post_training_settings(model, ctx.settings, post_training)
        return search_and_compress(model, ctx)

    return Method(name=name, config_cls=spec.config_cls, description=spec.description, needs="prior",
                  prepare=prepare, compress=compress, distributed=True, **traits)


for _name in sorted(PRIORS):
    register_method(_prior_method(_name))
