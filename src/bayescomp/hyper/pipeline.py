"""The two jobs of ``bayescomp hyper``: train a compressor into a run directory, and generate a network from it.

``train_run`` reuses the pipeline's cached dense teacher, trains the hypernetwork (resumable), calibrates the
generation threshold on validation contexts and writes ``hyper.pt`` and ``train.json``. ``generate_run`` makes
the network for one context and writes the packed model, ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bayescomp.data import DataBundle
from bayescomp.hyper.context import Context, restrict
from bayescomp.hyper.generate import Generated, calibrate_threshold, generate
from bayescomp.hyper.model import HyperCompressor, HyperConfig
from bayescomp.hyper.train import (
    DEFAULT_HYPER_LR_SCALES, load_hypernetwork, save_hypernetwork, train_hypernetwork,
)
from bayescomp.train import TrainConfig, evaluate, seed_everything


@dataclass
class HyperRunConfig:
    """Everything that defines a hypernetwork training run (saved as ``hyper_run.json``)."""

    model: str = "lenet5"
    data: str = "mnist"
    seed: int = 0
    data_dir: str | None = None
    val_size: int = 5000
    train_subset: int | None = None
    test_subset: int | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=30, lr=3e-3, lr_schedule="cosine", kl_warmup_epochs=2, lr_scales=dict(DEFAULT_HYPER_LR_SCALES)))
    hyper: HyperConfig = field(default_factory=HyperConfig)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if isinstance(self.hyper, dict):
            self.hyper = HyperConfig(**self.hyper)


def _run_config(config: HyperRunConfig):
    from bayescomp.pipeline import RunConfig

    return RunConfig(model=config.model, data=config.data, method="gnj", seed=config.seed, data_dir=config.data_dir,
                     val_size=config.val_size, train_subset=config.train_subset, test_subset=config.test_subset,
                     latency=False, plots=False)


def load_run_data(config: HyperRunConfig) -> DataBundle:
    from bayescomp.pipeline import load_data

    return load_data(_run_config(config))


def train_run(config: HyperRunConfig, run_dir: str | Path, log=print, progress: bool = True,
              restart: bool = False) -> HyperCompressor:
    """Train, calibrate and save a compressor into ``run_dir`` (resumes an interrupted run with the same settings).

    Raises:
        RunDirLockedError: another live process trains into ``run_dir``.
    """
    from bayescomp.runlock import run_dir_lock

    with run_dir_lock(run_dir, log):  # one writer per run directory
        return _train_run(config, Path(run_dir), log, progress, restart)


def _train_run(config: HyperRunConfig, run_dir: Path, log, progress: bool, restart: bool) -> HyperCompressor:
    from bayescomp.pipeline import dense_model

    record = run_dir / "hyper_run.json"
    current = json.loads(json.dumps(asdict(config)))
    if record.exists() and not restart and json.loads(record.read_text()) != current:
        raise ValueError(f"{run_dir} holds a hypernetwork run with other settings (see {record}); choose another "
                         "--run-dir or pass --restart")
    if restart:
        for name in ("hyper.ckpt", "hyper.ckpt.prev", "hyper.pt"):
            (run_dir / name).unlink(missing_ok=True)
    record.write_text(json.dumps(current, indent=2))
    started = time.perf_counter()
    data = load_run_data(config)
    teacher = dense_model(_run_config(config), data, log, progress)
    teacher_error = evaluate(teacher, data.test)["error_pct"]
    log(f"teacher {config.model} test error {teacher_error:.2f}%; training the hypernetwork "
        f"({config.train.epochs} epochs)")
    seed_everything(config.seed)
    model = HyperCompressor(teacher, data.num_classes, data.input_shape, config.hyper)
    history = train_hypernetwork(model, data, config.train, run_dir / "hyper.ckpt", progress, log)
    if config.hyper.threshold is None:
        log("calibrating the generation threshold on validation contexts")
        calibration = calibrate_threshold(model, data.val, log=log)
    else:
        calibration = {"threshold": config.hyper.threshold}
    metadata = {"model": config.model, "data": config.data, "mean": list(data.mean), "std": list(data.std),
                "class_names": list(data.class_names), "teacher_test_error_pct": teacher_error}
    save_hypernetwork(model, run_dir / "hyper.pt", metadata)
    summary = {"config": current, "history": history, "calibration": calibration,
               "teacher_test_error_pct": teacher_error, "train_s": time.perf_counter() - started,
               "command": " ".join(sys.argv)}
    (run_dir / "train.json").write_text(json.dumps(summary, indent=2))
    log(f"saved {run_dir / 'hyper.pt'} (threshold {calibration['threshold']:g})")
    return model


def generated_report(model: HyperCompressor, generated: Generated, data: DataBundle, teacher=None,
                     latency: bool = True) -> dict[str, Any]:
    """Accuracy on the context's test classes (float and at its bit widths), size, bits, compute, time and
    (optionally) latency of a generated net."""
    from bayescomp import measure

    context = generated.context
    test = restrict(data.test, context.classes)
    report: dict[str, Any] = {
        "classes": list(context.classes), "class_names": [data.class_names[c] for c in context.classes],
        "budget": context.budget, "test_examples": len(test),
        "test_error_pct": evaluate(generated.model, test)["error_pct"],
        "threshold": generated.threshold, "kept_architecture": "-".join(map(str, generated.kept_architecture)),
        "weights_dense": model.dense_weights(), "weights_kept": generated.weights_kept,
        "compression_weights": model.dense_weights() / max(generated.weights_kept, 1),
        "flops_dense": model.dense_flops(), "flops": generated.flops, "flops_fraction": generated.flops_fraction,
        "flops_counted": measure.count_flops(generated.model, tuple(data.input_shape)),
        "parameters": measure.count_parameters(generated.model), "generate_ms": generated.generate_ms,
        "bits_per_layer": generated.bits_per_layer, "compression_bits": generated.compression_bits,
        "test_error_pct_quantized": evaluate(generated.quantized_model, test)["error_pct"],
    }
    if teacher is not None:
        logits_error = evaluate(_cut_teacher(teacher, context.classes), test)["error_pct"]
        report["teacher_test_error_pct_on_context"] = logits_error
        if latency:
            from bayescomp.report import measure_latency_pair

            report["latency_ms"] = measure_latency_pair(teacher, generated.model, tuple(data.input_shape))
    return report


def _cut_teacher(teacher, classes):
    """The dense teacher with its output restricted to ``classes`` (what the generated net is compared with)."""
    import copy

    import torch
    from torch import nn

    cut = copy.deepcopy(teacher).eval()
    last = [m for m in cut.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    index = torch.as_tensor(list(classes))
    with torch.no_grad():
        last.weight = nn.Parameter(last.weight[index].clone())
        if last.bias is not None:
            last.bias = nn.Parameter(last.bias[index].clone())
    if isinstance(last, nn.Linear):
        last.out_features = len(index)
    return cut


def generate_run(hyper_path: str | Path, classes, budget: float, out_dir: str | Path, log=print,
                 latency: bool = True, data_dir: str | None = None) -> dict[str, Any]:
    """Generate the network for a context from a saved compressor; write compressed.bcz (the network at its bit
    widths) and the report."""
    from bayescomp.compress import save_quantized
    from bayescomp.measure import state_dict_size_bytes
    from bayescomp.pipeline import dense_model
    from bayescomp.report import render_generated_markdown

    model = load_hypernetwork(hyper_path)
    run_dir = Path(hyper_path) if Path(hyper_path).is_dir() else Path(hyper_path).parent
    config = HyperRunConfig(**json.loads((run_dir / "hyper_run.json").read_text()))
    if data_dir is not None:
        config.data_dir = data_dir
    context = Context.make(classes, model.num_classes, budget)
    generated = generate(model, context)
    data = load_run_data(config)
    teacher = dense_model(_run_config(config), data, log=lambda *_: None, progress=False)
    report = generated_report(model, generated, data, teacher, latency)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["file_bytes"] = save_quantized(generated.quantized_model, generated.precisions, out_dir / "compressed.bcz",
                                          {"classes": list(context.classes), "budget": context.budget,
                                           "hypernetwork": str(hyper_path), "kind": "hyper-generated",
                                           "bits_per_layer": generated.bits_per_layer})
    report["dense_file_bytes"] = state_dict_size_bytes(teacher)
    report.update(model_key=config.model, data=config.data, command=" ".join(sys.argv))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(render_generated_markdown(report))
    return report
