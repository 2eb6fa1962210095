"""Pretrained dense weights shipped with the package, checked by SHA-256 before use.

The papers compress *pretrained* networks (Louizos et al. 2017 initialise VGG from a trained model), and on a 2-core
CPU a dense ResNet-20 takes over an hour to train, so the zoo ships weights trained by ``benchmarks/pretrain.py``.
Each ``<model>_<data>.pt`` (a plain ``state_dict``, read with ``torch.load(weights_only=True)``: tensors only, no
code) sits beside a ``<model>_<data>.json`` manifest with its SHA-256, the command that made it, its validation and
test error and its training split. A file whose hash differs from its manifest is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are missing, corrupt, or do not fit the model."""


def manifest_path(model: str, data: str) -> Path:
    return WEIGHTS_DIR / f"{model}_{data}.json"


def available(model: str, data: str) -> bool:
    """Whether weights for ``model`` trained on ``data`` ship with the package."""
    return manifest_path(model, data).exists()


def list_pretrained() -> list[tuple[str, str]]:
    """(model, data) pairs that have shipped weights."""
    pairs = []
    for path in sorted(WEIGHTS_DIR.glob("*.json")):
        manifest = json.loads(path.read_text())
        pairs.append((manifest["model"], manifest["data"]))
    return pairs


def read_manifest(model: str, data: str) -> dict[str, Any]:
    path = manifest_path(model, data)
    if not path.exists():
        known = ", ".join(f"{m}/{d}" for m, d in list_pretrained()) or "none"
        raise PretrainedWeightsError(
            f"no pretrained weights for {model} on {data} (shipped: {known}); train them with "
            f"`python benchmarks/pretrain.py --model {model} --data {data}` or leave pretrained off")
    try:
        manifest = json.loads(path.read_text())
        manifest["sha256"], manifest["file"]
    except (ValueError, KeyError) as error:
        raise PretrainedWeightsError(f"pretrained manifest {path} is unreadable or lacks a field ({error})") from error
    return manifest


def load_pretrained_state(model: str, data: str) -> dict[str, torch.Tensor]:
    """The checked ``state_dict`` of ``model`` pretrained on ``data``."""
    manifest = read_manifest(model, data)
    weights = WEIGHTS_DIR / manifest["file"]
    if not weights.exists():
        raise PretrainedWeightsError(f"pretrained weights {weights} are missing (named by {manifest_path(model, data)})")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != manifest["sha256"]:
        raise PretrainedWeightsError(
            f"pretrained weights {weights} have SHA-256 {digest}, their manifest says {manifest['sha256']}: the "
            "file is corrupt or was replaced; restore it from the repository (git checkout -- <file>)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the file cannot be used
        raise PretrainedWeightsError(f"pretrained weights {weights} cannot be read ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"pretrained weights {weights} are not a state_dict of tensors")
    return state


def load_pretrained(module: nn.Module, model: str, data: str) -> nn.Module:
    """Copy the shipped weights into ``module`` (strict: every key and shape must match)."""
    state = load_pretrained_state(model, data)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise PretrainedWeightsError(
            f"pretrained weights for {model}/{data} do not fit this model (built with other classes or input "
            f"shape?): {error}") from error
    return module
