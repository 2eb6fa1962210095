"""A compiled training step: forward, objective and KL traced once by ``torch.compile`` (inductor) for the CPU.

Why: on a small network the Bayesian step is bound by the number of operator calls, not by arithmetic. A BC-GNJ
step of LeNet-300-100 makes ~445 top-level ATen calls against 48 for the plain step (profiled, docs/limits.md),
and its 18 bf16 matrix products alone take about one plain step. Compiled, the step's elementwise work (group
scales and their KL, the local-reparameterisation sampling, the weight KL, and all their gradients) becomes a
few generated C++ loops around the products, which stay library calls; the noise still comes from
:mod:`bayescomp.noise` (an opaque operator, so the compiled and the eager step draw from the same source). Inside
the compiled region the layers take their plain autograd ops (``BayesianLayer._fused_training``): the compiler
derives the backward and fuses it itself. The optimiser step (fused Adam) and the layers' constraints stay eager.

Modes (:func:`set_step_compilation`, ``BAYESCOMP_COMPILE``, ``bayescomp run --compile``):

* ``"off"``: eager steps (the fused Functions of :mod:`bayescomp.priors.fused`).
* ``"on"``: compile wherever it applies (CPU, one process, no CUDA graphs, a C++ compiler for inductor).
* ``"auto"`` (default): ``"on"`` only where it was measured to pay (see :func:`compile_pays`).

Compilation takes seconds, once per run and batch shape (measured on this project's 2-core machine: about 10 s for
LeNet-300-100 with a cold compiler cache, 1-6 s for the LeNets and 8-14 s for ResNet-20 with a warm one); the
smaller last batch of an epoch runs eagerly, so it costs no second compilation.
"""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bayescomp.priors.base import bayesian_layers
from bayescomp.validate import check_choice, choice_from_env

COMPILE_MODES = ("auto", "on", "off")
#: "auto" compiles a run with at least this many optimiser steps: compilation costs up to ~10 s, a compiled
#: LeNet-300-100 step saves ~3 ms (1 thread), so below a few thousand steps it does not pay back.
AUTO_MIN_STEPS = 5000
_mode = {"name": None}


def check_compile_mode(name: str) -> str:
    return check_choice(name, COMPILE_MODES, "step compilation")


def set_step_compilation(name: str) -> None:
    """Choose ``"auto"``, ``"on"`` or ``"off"`` for this process (see the module docstring)."""
    _mode["name"] = check_compile_mode(name)


def requested_step_compilation() -> str:
    """The mode asked for: :func:`set_step_compilation`'s, else ``$BAYESCOMP_COMPILE``, else ``"auto"``."""
    if _mode["name"] is None:
        _mode["name"] = choice_from_env("BAYESCOMP_COMPILE", COMPILE_MODES, "step compilation")
    return _mode["name"]


def unavailable_reason(device_type: str, distributed: bool, cuda_graphs: bool) -> str | None:
    """Why a training step cannot be compiled here (``None``: it can)."""
    if device_type != "cpu":
        return f"it is measured and supported on the CPU only (training on {device_type})"
    if distributed:
        return "data-parallel steps are not compiled"
    if cuda_graphs:
        return "CUDA graphs replace it"
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        return "inductor needs a C++ compiler (c++, g++ or clang++) and none was found"
    return None


def compile_pays(model: nn.Module, total_steps: int) -> bool:
    """``"auto"``'s rule: compile Bayesian networks without convolutions whose run has at least
    :data:`AUTO_MIN_STEPS` optimiser steps. Convolutional networks stay eager: compiled, LeNet-5's step was slower
    for some priors and faster for others, ResNet-20's about a tenth faster in every measurement
    (benchmarks/results/epoch_cost_*compiled*.md); ``"on"`` compiles them."""
    has_bayes = any(True for _ in bayesian_layers(model))
    return has_bayes and not has_conv(model) and total_steps >= AUTO_MIN_STEPS


def has_conv(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution, plain or Bayesian (anything with ``out_channels`` and ``kernel_size``)."""
    return any(isinstance(m, nn.Conv2d) or hasattr(m, "out_channels") and hasattr(m, "kernel_size")
               for m in model.modules())


def decide(model: nn.Module, device_type: str, distributed: bool, cuda_graphs: bool, total_steps: int,
           requested: bool | str | None, log: Callable[[str], Any]) -> bool:
    """Whether :func:`bayescomp.train.fit` compiles this run's step; ``requested``: True/False, a mode, or None
    (the process mode). A run asked for ``"on"`` that cannot compile says why and trains eagerly."""
    mode = requested_step_compilation() if requested is None else (
        check_compile_mode(requested) if isinstance(requested, str) else ("on" if requested else "off"))
    if mode == "off":
        return False
    reason = unavailable_reason(device_type, distributed, cuda_graphs)
    if reason is not None:
        if mode == "on":
            log(f"compiled step: {reason}; training eagerly")
        return False
    return mode == "on" or compile_pays(model, total_steps)


def compiled_objective(forward: nn.Module, objective: Any, model: nn.Module, n_train: int,
                       log: Callable[[str], Any] = print) -> Callable[[torch.Tensor, torch.Tensor, float], tuple]:
    """``(images, labels, kl_scale) -> (loss, nll, kl)``: the objective of ``forward(images)``, compiled for a fixed
    batch shape (``dynamic=False``: static shapes give the tightest loops; a new shape compiles anew).

    If a compiled call fails (the compiler or its toolchain breaks here, for the forward or the backward graph:
    both are compiled at the first call) and the same step succeeds eagerly, the run logs the reason once and
    continues eagerly: a training run is not lost to a compiler problem. An error the eager step raises too is the
    model's own and is raised as it is."""

    for _, layer in bayesian_layers(model):  # an instance attribute from the start, as evaluation leaves it: the
        layer.deterministic = bool(layer.deterministic)  # graph's guard then holds across epochs (no recompile)

    def step_objective(images: torch.Tensor, labels: torch.Tensor, kl_scale: torch.Tensor):
        return objective(forward(images), labels, model, n_train, kl_scale)

    # A code object of its own for every call: dynamo keeps compiled graphs per code object, with a limit of 8, so
    # the runs of one process (each model, each candidate of a search) would otherwise share that limit and, past
    # it, silently train eagerly.
    step_objective = types.FunctionType(step_objective.__code__.replace(), step_objective.__globals__,
                                        step_objective.__name__, None, step_objective.__closure__)
    compiled = torch.compile(step_objective, dynamic=False)

    state = {"compiled": True, "first": True}

    def run(images: torch.Tensor, labels: torch.Tensor, kl_scale: float):
        # the KL weight changes every step during warm-up: a tensor input, not a constant of the graph
        scale = torch.tensor(float(kl_scale))
        if state["compiled"]:
            try:
                if not state["first"]:
                    return compiled(images, labels, scale)
                # AOTAutograd lowers the backward at the first backward call, outside this guard; lowered here
                # with the forward, a compiler failure in the backward falls back like one in the forward
                with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                    values = compiled(images, labels, scale)
                state["first"] = False
                return values
            except Exception as error:  # noqa: BLE001 - decided below by whether the eager step works
                values = step_objective(images, labels, scale)  # raises the model's own error, if it has one
                state["compiled"] = False
                log(f"compiled step: compilation failed ({failure_reason(error)[:300]}); training eagerly")
                return values
        return step_objective(images, labels, scale)

    return run


def failure_reason(error: BaseException) -> str:
    """One line saying why: the error's type and first line, and those of the error at the root of its chain
    (dynamo wraps a backend's error, whose message is the useful part, in ``BackendCompilerFailed``)."""
    def first_line(e: BaseException) -> str:
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__

    root, seen = error, {id(error)}
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        root = inner
    return first_line(error) if root is error else f"{first_line(error)} {first_line(root)}"
