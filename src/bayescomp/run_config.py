"""What defines a run: :class:`RunConfig` (``bayescomp run``, saved as ``run.json``), :class:`ModelRunConfig`
(:func:`bayescomp.compress_model`), and the per-model training defaults they fill in.

Unset method settings (Bayesian schedule, fine-tuning, compression, the method's own options) are filled from the
method's declaration (:class:`bayescomp.methods.Method`) in one place, :func:`_fill_method_defaults`, so a run
record always holds every setting it ran with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bayescomp.compress import CompressConfig
from bayescomp.methods import Method, canonical_name, get_method, list_methods
from bayescomp.models import MODELS
from bayescomp.train import TrainConfig

#: Training defaults per model key (dense pre-training, Bayesian training); RESULTS.md records the settings
#: of every published run.
DEFAULT_SCHEDULES: dict[str, tuple[TrainConfig, TrainConfig]] = {
    "lenet300": (TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine"),
                 TrainConfig(epochs=30, lr=3e-3, lr_schedule="cosine", kl_warmup_epochs=2)),
    "lenet5": (TrainConfig(epochs=10, lr=1e-3, lr_schedule="cosine"),
               TrainConfig(epochs=30, lr=3e-3, lr_schedule="cosine", kl_warmup_epochs=2)),
    "resnet20": (TrainConfig(epochs=60, lr=1e-3, lr_schedule="cosine", weight_decay=1e-4, augment="crop_flip"),
                 TrainConfig(epochs=30, lr=1e-3, lr_schedule="cosine", kl_warmup_epochs=2, augment="crop_flip")),
    "resnet56": (TrainConfig(epochs=60, lr=1e-3, lr_schedule="cosine", weight_decay=1e-4, augment="crop_flip"),
                 TrainConfig(epochs=30, lr=1e-3, lr_schedule="cosine", kl_warmup_epochs=2, augment="crop_flip")),
    "vgg16": (TrainConfig(epochs=60, lr=1e-3, lr_schedule="cosine", weight_decay=5e-4),
              TrainConfig(epochs=60, lr=1e-4, lr_schedule="cosine", kl_warmup_epochs=5)),
}


#: Learning-rate multipliers of the Bayesian phase per method, as the methods declare them
#: (:attr:`bayescomp.methods.Method.lr_scales`).
DEFAULT_LR_SCALES: dict[str, dict[str, float]] = {
    name: dict(get_method(name).lr_scales) for name in list_methods() if get_method(name).lr_scales}


#: Settings that only affect what happens after Bayesian training; changing them reuses the trained posterior.
POST_TRAINING_FIELDS = {"compress", "finetune", "latency", "plots"}


@dataclass
class RunConfig:
    """Everything that defines a run; saved as ``run.json`` so the run can be repeated from its record."""

    model: str = "lenet300"
    data: str = "mnist"
    method: str = "gnj"
    seed: int = 0
    data_dir: str | None = None
    val_size: int = 5000
    train_subset: int | None = None
    test_subset: int | None = None
    dense: TrainConfig | None = None
    bayes: TrainConfig | None = None
    finetune: TrainConfig | None = None
    prior: dict[str, Any] = field(default_factory=dict)
    compress: CompressConfig = field(default_factory=CompressConfig)
    latency: bool = True
    plots: bool = True
    #: start from the dense weights shipped with the package (:mod:`bayescomp.models.pretrained`) instead of
    #: training the dense model; they were trained on one split, so the run must use the same split.
    pretrained: bool = False
    #: (height, width) every image of an image-folder ``data`` is resized to (``None``: all must share a size)
    image_size: list[int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, int) or self.val_size < 1:
            raise ValueError(f"--val-size must be an integer >= 1 (the threshold search and the per-epoch "
                             f"validation need examples), got {self.val_size!r}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(sorted(MODELS))}")
        self.method = canonical_name(self.method)
        method = get_method(self.method)
        dense, bayes = DEFAULT_SCHEDULES.get(self.model, (TrainConfig(), TrainConfig()))
        self.dense = _as(TrainConfig, self.dense) or TrainConfig(**{**asdict(dense), "seed": self.seed})
        _fill_method_defaults(self, method, bayes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(**d)


def _as(cls, value):
    return cls(**value) if isinstance(value, dict) else value


def _fill_method_defaults(config: Any, method: Method, bayes: TrainConfig) -> None:
    """The Bayesian, fine-tuning, compression and method settings of ``config`` that were left unset: ``bayes`` with
    the run's seed and the method's learning-rate scales, the method's default fine-tuning, its default settings."""
    config.bayes = _as(TrainConfig, config.bayes) or TrainConfig(
        **{**asdict(bayes), "seed": config.seed, "lr_scales": dict(method.lr_scales)})
    config.finetune = _as(TrainConfig, config.finetune) or TrainConfig(
        epochs=method.default_finetune_epochs, lr=1e-3, lr_schedule="cosine", seed=config.seed)
    config.compress = _as(CompressConfig, config.compress) or CompressConfig()
    config.prior = method.settings_dict(dict(config.prior) if config.prior else None)


@dataclass
class ModelRunConfig:
    """The settings :func:`compress_model` runs a method with (a :class:`RunConfig` without the zoo and data parts)."""

    method: str = "gnj"
    seed: int = 0
    bayes: TrainConfig | None = None
    finetune: TrainConfig | None = None
    compress: CompressConfig = field(default_factory=CompressConfig)
    prior: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method = canonical_name(self.method)
        method = get_method(self.method)
        default_bayes = TrainConfig(epochs=30, lr=3e-3, lr_schedule="cosine", kl_warmup_epochs=2)
        _fill_method_defaults(self, method, default_bayes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
