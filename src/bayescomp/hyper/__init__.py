"""Conditional compression with a Bayesian hypernetwork (Nguyen et al., ECML-PKDD 2021).

Train once (:func:`train_hypernetwork`), then ``generate(compressor, classes=[0, 3, 7], budget=0.2).model`` returns a
small plain network for that context in milliseconds, without retraining (``.quantized_model``: the same at the
bit widths its scales' posterior variance allows).
"""

from bayescomp.hyper.context import Context, ContextError, parse_classes, random_contexts, restrict
from bayescomp.hyper.generate import (
    BudgetError, Generated, calibrate_threshold, context_error, generate, masked_posterior_mean_logits,
    weight_variances,
)
from bayescomp.hyper.model import HyperCompressor, HyperConfig
from bayescomp.hyper.train import (
    DEFAULT_HYPER_LR_SCALES, load_hypernetwork, save_hypernetwork, train_hypernetwork,
)

__all__ = [
    "DEFAULT_HYPER_LR_SCALES", "BudgetError", "Context", "ContextError", "Generated", "HyperCompressor",
    "HyperConfig", "calibrate_threshold", "context_error", "generate", "load_hypernetwork",
    "masked_posterior_mean_logits", "parse_classes", "random_contexts", "restrict", "save_hypernetwork",
    "train_hypernetwork", "weight_variances",
]
