"""The method protocol and its registry: what a compression method declares, and the hooks the pipeline calls.

A method is one file that builds a :class:`Method` and passes it to :func:`register_method` (the pattern of timm's
``register_model`` and torchao's config-type -> handler table). The pipeline (:mod:`bayescomp.pipeline`), the CLI,
the report and the tests look methods up here and never name one: adding a method is one file plus one import line
in :mod:`bayescomp.methods` (see ``docs/adding-a-method.md``).

The pipeline calls the hooks in this order, all with one :class:`RunContext`::

    model = method.prepare(ctx)            # dense -> what is trained (Bayesian layers, a density twin, a copy)
    history = method.train(model, ctx)     # default: the shared training loop (bayescomp.train.fit)
    result = method.compress(model, ctx)   # -> CompressionResult (small plain model, masks, bits)
    [shared fine-tuning of result.model when method.finetune_after_compress and epochs > 0]
    report.update(method.report_extras(model, ctx))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from bayescomp.data import DataBundle
from bayescomp.train import TrainHistory, fit
from bayescomp.validate import check_config_values

#: What a method trains: Bayesian layers of a prior, a density-propagating twin, or the plain network itself.
NEEDS = ("prior", "density", "none")


@dataclass
class RunContext:
    """Everything a method's hooks may read or record during one run (instead of long parameter lists)."""

    config: Any  # bayescomp.pipeline.RunConfig
    data: DataBundle
    dense: nn.Module
    run_dir: Path | None  # None: no checkpoints (compress_model without a run directory)
    settings: Any  # the method's config dataclass
    log: Callable[..., Any] = print
    progress: bool = True
    device: str | None = None
    amp: bool = False
    cuda_graphs: bool = False  # replay the Bayesian training step as a CUDA graph (fit(cuda_graphs=True))
    metadata: dict[str, Any] = field(default_factory=dict)  # extra fields of the compressed file's metadata
    extras: dict[str, Any] = field(default_factory=dict)  # extra report fields
    state: dict[str, Any] = field(default_factory=dict)  # a method's private state between its hooks
    #: which Linear/Conv2d layers a prior's ``prepare`` makes Bayesian (:func:`bayescomp.bayesify.bayesify`)
    filter_fn: Callable[[nn.Module, str], bool] | None = None
    skip: tuple[str, ...] = ()  # qualified module names ``prepare`` leaves untouched


def shared_training(model: nn.Module, ctx: RunContext, objective: Any = None) -> TrainHistory:
    """The default ``train`` hook: the library's one training loop on the Bayesian schedule, checkpointed."""
    checkpoint = None if ctx.run_dir is None else ctx.run_dir / "bayes.ckpt"
    return fit(model, ctx.data, ctx.config.bayes, checkpoint_path=checkpoint, progress=ctx.progress,
               log=ctx.log, device=ctx.device, amp=ctx.amp, objective=objective, cuda_graphs=ctx.cuda_graphs)


def _no_extras(model: nn.Module | None, ctx: RunContext) -> dict[str, Any]:
    return {}


def _no_description(report: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class Method:
    """A registered compression method.

    Args:
        name: the key used by ``RunConfig.method`` and ``bayescomp run --method``.
        config_cls: its settings dataclass (saved in ``run.json`` as ``prior``).
        description: one line for ``--help`` and the docs.
        needs: ``"prior"`` (Bayesian layers), ``"density"`` (a mean/covariance-propagating twin) or ``"none"``.
        prepare: dense model -> the model that is trained.
        compress: trained model -> :class:`~bayescomp.compress.CompressionResult`.
        train: training hook; default :func:`shared_training`.
        aliases: other accepted names.
        lr_scales: learning-rate multipliers by parameter-name suffix in the Bayesian phase (``TrainConfig``).
        group_lr_suffixes: the parameters ``--group-lr-scale`` speeds up (empty: the option does not apply).
        cli_options: fields of ``config_cls`` that have their own ``bayescomp run`` flag.
        default_finetune_epochs: fine-tuning epochs after pruning unless the caller says otherwise.
        finetune_after_compress: whether the pipeline's shared fine-tuning applies to ``result.model``.
        post_training_settings: fields of ``config_cls`` read only after training (by ``compress``): changing them
            in a run directory reuses its trained model instead of refusing the directory.
        distributed: whether the method supports data-parallel training (``--nproc > 1``).
        posterior_in_report: whether the trained model is a posterior whose trade-off curve the report draws.
        report_extras: extra report fields after compression.
        describe: extra markdown lines of the report.
    """

    name: str
    config_cls: type
    description: str
    needs: str
    prepare: Callable[[RunContext], nn.Module]
    compress: Callable[[nn.Module, RunContext], Any]
    train: Callable[[nn.Module, RunContext], TrainHistory] = shared_training
    aliases: tuple[str, ...] = ()
    lr_scales: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    group_lr_suffixes: tuple[str, ...] = ()
    cli_options: tuple[str, ...] = ()
    default_finetune_epochs: int = 0
    finetune_after_compress: bool = True
    post_training_settings: tuple[str, ...] = ()
    distributed: bool = False
    posterior_in_report: bool = True
    report_extras: Callable[[nn.Module | None, RunContext], dict[str, Any]] = _no_extras
    describe: Callable[[Mapping[str, Any]], list[str]] = _no_description

    def __post_init__(self) -> None:
        if self.needs not in NEEDS:
            raise ValueError(f"method {self.name!r}: needs must be one of {NEEDS}, got {self.needs!r}")
        if not is_dataclass(self.config_cls):
            raise TypeError(f"method {self.name!r}: config_cls must be a dataclass")
        unknown = set(self.post_training_settings) - {f.name for f in fields(self.config_cls)}
        if unknown:
            raise ValueError(f"method {self.name!r}: post_training_settings {sorted(unknown)} are not fields of "
                             f"{self.config_cls.__name__}")

    def make_settings(self, options: Mapping[str, Any] | Any | None = None) -> Any:
        """The settings dataclass from ``None`` (defaults), a dict of fields, or an instance, values checked."""
        if options is None:
            return self.config_cls()
        if isinstance(options, self.config_cls):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"settings of method {self.name!r} must be {self.config_cls.__name__} or a dict, got "
                            f"{type(options).__name__}")
        check_config_values(self.config_cls, dict(options), "option")
        return self.config_cls(**options)

    def settings_dict(self, options: Mapping[str, Any] | Any | None = None) -> dict[str, Any]:
        return asdict(self.make_settings(options))


METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (its name and aliases must be new)."""
    for key in (method.name, *method.aliases):
        if key in METHODS or key in _ALIASES:
            raise ValueError(f"a method named {key!r} is already registered")
    METHODS[method.name] = method
    _ALIASES.update({alias: method.name for alias in method.aliases})
    return method


def unregister_method(name: str) -> None:
    """Remove a method (tests register toy methods and take them away again)."""
    method = METHODS.pop(name)
    for alias in method.aliases:
        _ALIASES.pop(alias, None)


def canonical_name(name: str) -> str:
    """The registered name for ``name`` or one of its aliases; ``ValueError`` listing the known names otherwise."""
    if name in METHODS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise ValueError(f"unknown method/prior {name!r}; known: {', '.join(method_keys())}")


def get_method(name: str) -> Method:
    return METHODS[canonical_name(name)]


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(METHODS)


def method_keys() -> list[str]:
    """Every accepted ``--method`` value: names and aliases."""
    return sorted([*METHODS, *_ALIASES])
