"""bayescomp: make neural networks small and fast with Bayesian compression.

One verb for any trained model: :func:`compress_model` (Bayesian training under a method's prior, the posterior's
threshold search, a physically smaller plain ``nn.Module``; ``result.save(path)``; :func:`load` brings it back).
The steps one by one: :func:`bayesify` -> :func:`fit` -> :func:`compress_posterior`. Methods are registered
(:func:`list_methods`).

The subpackages keep their names (``bayescomp.compress``, ``bayescomp.report``, ...); no function shadows one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from bayescomp.bayesify import bayesify
from bayescomp.compress import CompressConfig, CompressionResult, PruneError
from bayescomp.compress import compress as compress_posterior
from bayescomp.compress.packed import register_packable
from bayescomp.data import DataBundle, DataError, load_dataset
from bayescomp.data_sources import ImageFolder, StreamData, load_image_folder, make_bundle
from bayescomp.hooks import after_epoch, after_step, kl_loss
from bayescomp.models import MODELS, create_model
from bayescomp.magnitude import MagnitudeConfig, magnitude_compress, prune_and_finetune
from bayescomp.methods import Method, get_method, list_methods, register_method
from bayescomp.pipeline import RunConfig, compress_model, run
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


def load_report(run_dir: str | Path) -> dict:
    """The report dict of a finished run directory."""
    from bayescomp.report import load_report as _load_report

    return _load_report(run_dir)


__all__ = [
    "MODELS", "PRIORS", "CompressConfig", "CompressionResult", "DataBundle", "DataError", "GroupHSConfig",
    "GroupNJConfig", "MagnitudeConfig", "NonFiniteLossError", "PruneError", "SparseVDConfig", "TrainConfig", "TurboVBIConfig",
    "Method", "RunConfig", "after_epoch", "after_step", "bayesify", "compress_model", "compress_posterior",
    "create_model", "get_method", "list_methods", "register_method", "run", "evaluate", "fit", "kl_loss", "load",
    "load_dataset", "magnitude_compress", "ImageFolder", "StreamData", "load_image_folder", "make_bundle",
    "load_report", "prune_and_finetune", "register_packable",
]
