"""bayescomp: make neural networks small and fast with Bayesian compression.

Pipeline: plain model -> :func:`bayesify` -> :func:`fit` -> :func:`compress` -> small plain ``nn.Module``
-> packed file (:func:`load` brings it back).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from bayescomp.bayesify import bayesify
from bayescomp.compress import CompressConfig, CompressionResult, PruneError, compress
from bayescomp.compress.packed import register_packable
from bayescomp.data import DataBundle, DataError, load_dataset
from bayescomp.hooks import after_epoch, after_step, kl_loss
from bayescomp.models import MODELS, create_model
from bayescomp.magnitude import MagnitudeConfig, magnitude_compress, prune_and_finetune
from bayescomp.priors import PRIORS, GroupHSConfig, GroupNJConfig, SparseVDConfig, TurboVBIConfig
from bayescomp.train import NonFiniteLossError, TrainConfig, evaluate, fit

__version__ = "0.1.0"


def load(path: str | Path, classes: Sequence[type[nn.Module]] = ()) -> nn.Module:
    """Load a compressed model file (``.bcz``) as a plain ``nn.Module`` in eval mode.

    The model takes images scaled to [0, 1] (N x C x H x W) and returns logits; its input normalisation is
    part of the model. Loading never imports code named in the file: a model of your own classes (not a zoo
    model) loads only when you pass them, ``load(path, classes=[MyNet])``, or :func:`register_packable` them.
    """
    from bayescomp.compress.packed import load_packed

    model, _ = load_packed(path, classes=classes)
    return model


def report(run_dir: str | Path) -> dict:
    """The report dict of a finished run directory."""
    from bayescomp.report import load_report

    return load_report(run_dir)


__all__ = [
    "MODELS", "PRIORS", "CompressConfig", "CompressionResult", "DataBundle", "DataError", "GroupHSConfig",
    "GroupNJConfig", "MagnitudeConfig", "NonFiniteLossError", "PruneError", "SparseVDConfig", "TrainConfig", "TurboVBIConfig",
    "after_epoch", "after_step", "bayesify", "compress", "create_model", "evaluate", "fit", "kl_loss", "load",
    "load_dataset", "magnitude_compress",
    "prune_and_finetune", "register_packable", "report",
]
