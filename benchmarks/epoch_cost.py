"""Training cost of Bayesian epochs against the plain epoch of the same model (CPU, one process, interleaved).

For each model (LeNet-300-100 and LeNet-5-Caffe on MNIST, ResNet-20 on CIFAR-10) every variant runs the
library's own training loop (``bayescomp.train._train_epoch``: autocast wrapper, objective, fused Adam, the layers'
after-step constraints, the per-step ``.item()`` calls) for a fixed number of mini-batches of 128; the variants
take turns (round r runs every variant once) and each reports the median over rounds of its time per step,
extrapolated to seconds per epoch (steps per epoch x ms per step; said so in the JSON). Two clocks: the process
CPU time (``time.process_time``; robust to other jobs preempting this one on a shared machine, and equal to
the wall time on a quiet one with one thread) and the wall time.

Variants: plain fp32 / bf16 (and channels_last for conv nets); each method's default (what ``bayescomp run``
does by default: fused layers, ``--precision auto``, the config's z_sampling, default memory layout, and the
compiled step where ``--compile auto`` compiles it on a full 30-epoch run, :mod:`bayescomp.compiled_step`), the
same with the other step (eager where the default compiles, compiled where it does not; the compilation happens
in the untimed warm-up) and its fp32 variant; for BC-GNJ also the unfused autograd layers (the code path before the
fused Functions), z per example / per batch in fp32 and bf16 (eager), and on LeNet-300-100 the compiled bf16 step
with each ``z_sampling`` value (example, batch, auto); for BC-GNJ and BC-GHS one weight draw per
mini-batch (``weight_sampling="batch"``) with z per example / per batch; BC-GNJ's default with PyTorch's
normal generator instead of the compiled Philox kernel (``bayescomp.noise``); and the authors' reference GNJ
layers, re-implemented below from the published formulas (Louizos et al. 2017,
Eq. 6 posterior, local reparameterisation, KL of Molchanov et al. 2017 Eq. 14 for z and the closed-form Gaussian
KL for the weights, variance clipping) in plain autograd ops, float32.

    OMP_NUM_THREADS=1 python benchmarks/epoch_cost.py [--models lenet300,lenet5,resnet20] [--rounds R]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, this_command  # noqa: E402

from bayescomp import bayesify  # noqa: E402
from bayescomp.compiled_step import compile_pays, compiled_objective  # noqa: E402
from bayescomp.data import load_dataset  # noqa: E402
from bayescomp.models import create_model  # noqa: E402
from bayescomp.noise import effective_noise_source, set_noise_source  # noqa: E402
from bayescomp.objective import variational_loss  # noqa: E402
from bayescomp.pipeline import DEFAULT_LR_SCALES, git_commit  # noqa: E402
from bayescomp.priors import PRIORS  # noqa: E402
from bayescomp.priors.base import BayesianLayer, bayesian_layers  # noqa: E402
from bayescomp.train import (  # noqa: E402
    AutocastForward, TrainConfig, TrainingRun, _train_epoch, default_channels_last, make_optimizer, native_bf16,
    resolve_precision,
)

DATA = {"lenet300": "mnist", "lenet5": "mnist", "resnet20": "cifar10"}
STEPS = {"lenet300": 43, "lenet5": 10, "resnet20": 3}
#: Rounds per model unless ``--rounds`` says otherwise. LeNet-300-100's steps are short and noisy: with 5 rounds the
#: same configuration listed twice came out 16 % apart in one run (docs/limits.md, "z shared by the mini-batch"),
#: and its rounds are cheap.
ROUNDS = {"lenet300": 15, "lenet5": 5, "resnet20": 5}
K1, K2, K3 = 0.63576, 1.87320, 1.48695
FULL_RUN_STEPS = 30 * 430  # a default 30-epoch MNIST run: what "auto" step compilation is decided on


# ---------------------------------------------------------------- the reference GNJ layers (from the formulas)
class _RefGNJ(BayesianLayer):
    """q(z) = N(z_mu, z_var), q(w | z) = N(z mu, z² sigma²); one z per example, drawn on the inputs (Linear) or the
    outputs (Conv2d); KL = sum_groups KL_approx(log alpha) + sum_weights KL(N(mu, sigma²) || N(0, 1)).
    A ``BayesianLayer`` only so that the library's loop collects its KL and calls its clipping after each step."""

    def _setup(self, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> None:
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_logvar = nn.Parameter(torch.full_like(weight, -9.0) + 0.01 * torch.randn_like(weight))
        self.z_mu = nn.Parameter(1.0 + 0.01 * torch.randn(groups))
        self.z_logvar = nn.Parameter(-9.0 + 0.01 * torch.randn(groups))
        self.bias_mu = nn.Parameter(bias.detach().clone())
        self.bias_logvar = nn.Parameter(torch.full_like(bias, -9.0))

    def sample_z(self, batch: int) -> torch.Tensor:
        eps = torch.randn(batch, self.z_mu.numel())
        return self.z_mu + eps * torch.exp(0.5 * self.z_logvar)

    @staticmethod
    def sample(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        log_var = var.log()
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)

    def kl_divergence(self) -> torch.Tensor:
        log_alpha = self.z_logvar - torch.log(self.z_mu.pow(2) + 1e-8)
        kl = -(K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * torch.log1p(torch.exp(-log_alpha)) - K1).sum()
        for mu, logvar in ((self.weight_mu, self.weight_logvar), (self.bias_mu, self.bias_logvar)):
            kl = kl + (-0.5 * logvar + 0.5 * (logvar.exp() + mu.pow(2)) - 0.5).sum()
        return kl

    def apply_constraints(self) -> None:
        with torch.no_grad():
            self.weight_logvar.clamp_(max=math.log(0.2))
            self.bias_logvar.clamp_(max=math.log(0.2))


class RefLinearGNJ(_RefGNJ):
    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self._setup(layer.weight, layer.bias, layer.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = x * self.sample_z(x.shape[0])
        mean = F.linear(xz, self.weight_mu, self.bias_mu)
        var = F.linear(xz.pow(2), self.weight_logvar.exp(), self.bias_logvar.exp())
        return self.sample(mean, var)


class RefConv2dGNJ(_RefGNJ):
    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__()
        self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
        self._setup(layer.weight, bias, layer.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.conv2d(x, self.weight_mu, self.bias_mu, **self.conv)
        var = F.conv2d(x.pow(2), self.weight_logvar.exp(), self.bias_logvar.exp(), **self.conv)
        return self.sample(mean, var) * self.sample_z(x.shape[0])[:, :, None, None]


def reference_model(plain: nn.Module) -> nn.Module:
    model = copy.deepcopy(plain)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, RefLinearGNJ(child))
            elif isinstance(child, nn.Conv2d):
                setattr(parent, name, RefConv2dGNJ(child))
    return model


class _ChannelsLast(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


# ---------------------------------------------------------------- variants and timing
def variants(model_name: str, plain: nn.Module) -> dict[str, dict]:
    """name -> {model, precision, method, layout}; ``default`` rows are what ``bayescomp run`` does by default."""
    auto = resolve_precision("auto")
    conv = model_name != "lenet300"
    out = {"plain fp32": dict(model=plain, precision="fp32"), "plain bf16": dict(model=plain, precision="bf16")}
    if conv:
        out["plain bf16 channels_last"] = dict(model=plain, precision="bf16", layout="cl")
        out["plain fp32 channels_last"] = dict(model=plain, precision="fp32", layout="cl")
    default_layout = "cl" if default_channels_last(plain, "cpu", auto) else None
    for method in PRIORS:
        bayes = bayesify(plain, method)
        compiled = compile_pays(bayes, FULL_RUN_STEPS)  # what "auto" does on a full-length run
        out[f"{method} default ({auto}{', channels_last' if default_layout else ''}"
            f"{', compiled step' if compiled else ''})"] = dict(
            model=bayes, precision="auto", method=method, layout=default_layout, compiled=compiled)
        other = "eager step" if compiled else "compiled step"
        out[f"{method} {auto}{', channels_last' if default_layout else ''}, {other}"] = dict(
            model=bayesify(plain, method), precision="auto", method=method, layout=default_layout,
            compiled=not compiled)
        out[f"{method} fp32"] = dict(model=bayesify(plain, method), precision="fp32", method=method)
    out["gnj with torch.randn noise (the Philox kernel off)"] = dict(
        model=bayesify(plain, "gnj"), precision="auto", method="gnj", layout=default_layout, noise="torch")
    unfused = bayesify(plain, "gnj")
    for _, layer in bayesian_layers(unfused):
        layer.fused = False
    out["gnj unfused fp32 (previous code path)"] = dict(model=unfused, precision="fp32", method="gnj")
    for z in ("example", "batch"):
        for precision in ("fp32", "bf16"):
            key = f"gnj z per {z} {precision}"
            out[key] = dict(model=bayesify(plain, "gnj", {"z_sampling": z}), precision=precision, method="gnj")
    if not conv:  # compiled steps; a shared z scales the weight's columns, so the first layer skips its input gradient
        for z in ("example", "batch", "auto"):
            out[f"gnj z_sampling={z} bf16, compiled step"] = dict(
                model=bayesify(plain, "gnj", {"z_sampling": z}), precision="bf16", method="gnj", compiled=True)
    for method in ("gnj", "ghs"):  # one weight draw per mini-batch (weight_sampling="batch"), z per example / batch
        for z in ("example", "batch"):
            for precision in ("fp32", "bf16") if method == "gnj" else ("fp32",):
                key = f"{method} weights per batch, z per {z} {precision}"
                out[key] = dict(model=bayesify(plain, method, {"z_sampling": z, "weight_sampling": "batch"}),
                                precision=precision, method=method)
    if conv:  # NHWC in float32 too (the default uses it with bf16 only)
        out["gnj fp32 channels_last"] = dict(model=bayesify(plain, "gnj"), precision="fp32", method="gnj", layout="cl")
        out["gnj weights per batch, z per example fp32 channels_last"] = dict(
            model=bayesify(plain, "gnj", {"weight_sampling": "batch"}), precision="fp32", method="gnj", layout="cl")
    if default_layout:
        out[f"gnj {auto} NCHW (the default before NHWC Bayesian layers)"] = dict(
            model=bayesify(plain, "gnj"), precision="auto", method="gnj")
    out["gnj authors' layers (re-implemented) fp32"] = dict(model=reference_model(plain), precision="fp32",
                                                             method="reference")
    return out


def _prepare(spec: dict) -> None:
    model = copy.deepcopy(spec["model"])
    if spec.get("layout") == "cl":
        model = model.to(memory_format=torch.channels_last)
    config = TrainConfig(epochs=1, lr=1e-3, lr_scales=dict(DEFAULT_LR_SCALES.get(spec.get("method"), {})))
    forward: nn.Module = model
    if spec.get("layout") == "cl":
        forward = _ChannelsLast(forward)
    if resolve_precision(spec["precision"]) == "bf16":
        forward = AutocastForward(forward, "cpu")
    spec.update(model=model, config=config, forward=forward, optimizer=make_optimizer(model, config))


def time_steps(spec: dict, data: SimpleNamespace, n_train: int, steps: int) -> tuple[float, float, float]:
    """(CPU s, wall s, mean loss) of ``steps`` training steps through the library's epoch loop."""
    set_noise_source(spec.get("noise", "auto"))
    if spec.get("compiled") and "step" not in spec:  # made (and compiled) in the untimed warm-up block
        spec["step"] = compiled_objective(spec["forward"], variational_loss, spec["model"], n_train)
    cpu, wall = time.process_time(), time.perf_counter()
    run = TrainingRun(spec["model"], data, spec["config"], spec["optimizer"], variational_loss, spec["forward"],
                      n_train=n_train, steps=steps, compiled=spec.get("step"))
    record = _train_epoch(run, 0)
    return time.process_time() - cpu, time.perf_counter() - wall, record["loss"]


def measure(model_name: str, rounds: int, steps: int, batch: int, skip: tuple[str, ...] = ()) -> dict:
    data = load_dataset(DATA[model_name])
    torch.manual_seed(0)
    plain = create_model(model_name, data.num_classes, data.input_shape, data.mean, data.std)
    specs = {name: spec for name, spec in variants(model_name, plain).items()
             if name == "plain fp32" or not any(word in name for word in skip)}
    for spec in specs.values():
        _prepare(spec)
    subset = SimpleNamespace(train=data.train.subset(steps * batch, seed=1))
    n_train = len(data.train)
    per_epoch = math.ceil(n_train / batch)
    times = {name: {"cpu": [], "wall": [], "loss": []} for name in specs}
    warmup = {}
    for name, spec in specs.items():  # warm-up: one block each, not in the medians (a compiled step compiles here)
        warmup[name] = time_steps(spec, SimpleNamespace(train=data.train.subset(2 * batch, seed=2)), n_train, 2)[1]
    for r in range(rounds):
        for name, spec in specs.items():
            cpu, wall, loss = time_steps(spec, subset, n_train, steps)
            times[name]["cpu"].append(cpu / steps)
            times[name]["wall"].append(wall / steps)
            times[name]["loss"].append(loss)
        print(f"{model_name}: round {r + 1}/{rounds} done", flush=True)
    rows = {}
    plain_cpu = statistics.median(times["plain fp32"]["cpu"])
    plain_wall = statistics.median(times["plain fp32"]["wall"])
    for name, t in times.items():
        cpu, wall = statistics.median(t["cpu"]), statistics.median(t["wall"])
        rows[name] = {"ms_per_step_cpu": 1000 * cpu, "ms_per_step_wall": 1000 * wall,
                      "s_per_epoch_cpu": cpu * per_epoch, "s_per_epoch_wall": wall * per_epoch,
                      "ratio_to_plain_fp32_cpu": cpu / plain_cpu, "ratio_to_plain_fp32_wall": wall / plain_wall,
                      "ms_per_step_cpu_all": [1000 * v for v in t["cpu"]], "last_loss": t["loss"][-1],
                      "warmup_wall_s": warmup[name]}
    return {"model": model_name, "data": DATA[model_name], "batch_size": batch, "steps_per_measurement": steps,
            "rounds": rounds, "steps_per_epoch": per_epoch, "n_train": n_train,
            "epoch_extrapolated": "s_per_epoch = median ms/step over rounds x steps_per_epoch (fixed number of "
                                  "steps per measurement, not whole epochs)",
            "warmup": "warmup_wall_s: wall time of the untimed first 2 steps, compilation included for a compiled "
                      "step (the inductor cache may hold an earlier compilation of the same graph)", "variants": rows}


def markdown(results: list[dict], header: dict) -> str:
    lines = [f"Training cost per epoch, CPU, {header['threads']} thread(s), batch 128, torch {header['torch']}, "
             f"native bf16: {header['native_bf16']} (auto -> {header['auto_precision']}), noise: "
             f"{header.get('noise_source', 'torch')}. {header['note']}", ""]
    for res in results:
        warm = all("warmup_wall_s" in row for row in res["variants"].values())
        lines += [f"### {res['model']} / {res['data']} ({res['rounds']} rounds x {res['steps_per_measurement']} "
                  f"steps, extrapolated to {res['steps_per_epoch']} steps/epoch)", "",
                  "| variant | s/epoch (CPU) | x plain fp32 (CPU) | s/epoch (wall) | x plain fp32 (wall) |"
                  + (" first 2 steps, s (wall, compilation included) |" if warm else ""),
                  "|---|---|---|---|---|" + ("---|" if warm else "")]
        for name, row in res["variants"].items():
            lines.append(f"| {name} | {row['s_per_epoch_cpu']:.2f} | {row['ratio_to_plain_fp32_cpu']:.2f}x | "
                         f"{row['s_per_epoch_wall']:.2f} | {row['ratio_to_plain_fp32_wall']:.2f}x |"
                         + (f" {row['warmup_wall_s']:.1f} |" if warm else ""))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet300,lenet5,resnet20")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for every model (default: 15 for "
                                                                    "lenet300, 5 for the conv nets)")
    parser.add_argument("--steps", type=str, default="", help="model=steps,... overrides (default 43/10/3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma-separated words: variants whose name contains one are not "
                                                   "run (e.g. bf16 on a CPU without native bf16); plain fp32 always is")
    parser.add_argument("--out", default="epoch_cost")
    parser.add_argument("--note", default="Variants interleaved; ratios are within one run.",
                        help="how the machine was loaded while measuring (recorded with the figures)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = dict(STEPS, **{k: int(v) for k, v in (p.split("=") for p in args.steps.split(",") if p)})
    skip = tuple(word for word in args.skip.split(",") if word)
    header = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
              "auto_precision": resolve_precision("auto"),
              "noise_source": effective_noise_source(), "command": this_command(), "git_commit": git_commit(),
              "note": args.note, "skipped": list(skip)}
    out = output_stem(args.out)
    results = [measure(m, args.rounds or ROUNDS[m], steps[m], 128, skip) for m in args.models.split(",")]
    print(markdown(results, header))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**header, "results": results}, indent=2))
    out.with_suffix(".md").write_text(markdown(results, header))


def output_stem(out: str) -> Path:
    """Where ``--out`` writes (``.json`` and ``.md`` appended): a bare name goes to ``benchmarks/results``, a path
    (``benchmarks/results/x``, ``/tmp/x``) is taken as it is. Resolved before the measurement, so a typo costs
    nothing."""
    path = Path(out)
    return RESULTS / out if path.parent == Path(".") else path


if __name__ == "__main__":
    main()
