"""The training step replayed as one CUDA graph, for small networks whose GPU steps are bound by launch latency.

Measured on one NVIDIA H200 (``benchmarks/results/device_rows_lenet5_h200.md``): a BC-GNJ LeNet-5 step took about
11 ms in eager PyTorch, alone or ten processes at once, so a 200-epoch run needed ~17 minutes whatever the GPU.
The step is hundreds of tiny kernels, each launched from Python. A CUDA graph records them once and replays the
whole step (forward, objective, backward, fused Adam, the layers' constraints) with one launch.

What the graph needs, and how :func:`bayescomp.train.fit` (``cuda_graphs=True``) provides it:

* fixed input buffers: every full mini-batch is copied into them; the last, smaller batch of an epoch runs
  eagerly on the same parameters;
* no host synchronisation inside the step: the loss, NLL and KL are read after the replay (one transfer a step),
  and the KL warm-up weight is a device tensor written before each replay;
* Adam with ``capturable=True`` (its step count on the device); the learning rate is a constant of the graph, so
  the step is captured again at the start of every epoch, after the schedule has moved;
* layers whose forward, KL and ``apply_constraints`` are pure tensor code (``graph_safe = True`` on the layer
  class: BC-GNJ, BC-GHS, Sparse VD and plain layers; Turbo-VBI's message passing is not).

The random draws of the layers come from the CUDA generator's Philox stream, which advances with every replay,
so each step draws new noise as in eager mode. The NaN guard reads the replayed loss: unlike the eager loop, the
step that produced a non-finite loss has already been applied in memory, but the checkpoint of the last completed
epoch is untouched, so nothing on disk is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bayescomp.priors.base import bayesian_layers

#: eager steps (on a side stream, as PyTorch asks) before the first capture: they initialise Adam's state and the
#: libraries' workspaces; they are ordinary training steps on the epoch's first mini-batches
WARMUP_STEPS = 3


def graph_unsafe_layers(model: nn.Module) -> list[str]:
    """Names of the Bayesian layers whose step cannot be captured (no ``graph_safe = True`` on their class)."""
    return [name for name, layer in bayesian_layers(model) if not getattr(type(layer), "graph_safe", False)]


class GraphedStep:
    """One training step on a fixed-shape mini-batch, captured as a CUDA graph and replayed.

    ``objective(outputs, labels, model, n_train, kl_scale) -> (loss, nll, kl)`` as in :func:`bayescomp.train.fit`;
    ``after_step()`` runs after the optimiser step (inside the graph).
    """

    def __init__(self, model: nn.Module, forward: nn.Module, objective: Any, optimizer: torch.optim.Optimizer,
                 after_step: Callable[[], None], n_train: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.model, self.forward, self.objective = model, forward, objective
        self.optimizer, self.after_step, self.n_train = optimizer, after_step, n_train
        self.images = torch.empty_like(images)
        self.labels = torch.empty_like(labels)
        self.kl_scale = torch.ones((), device=images.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        self.warmups = 0  # eager warm-up steps taken so far

    def fits(self, images: torch.Tensor) -> bool:
        """Whether a batch has the captured shape (the last batch of an epoch may not)."""
        return images.shape == self.images.shape

    def _body(self) -> torch.Tensor:
        loss, nll, kl = self.objective(self.forward(self.images), self.labels, self.model, self.n_train,
                                       self.kl_scale)
        loss.backward()
        self.optimizer.step()
        self.after_step()
        return torch.stack([loss.detach(), nll.detach(), kl.detach().to(loss.dtype)])

    def _load(self, images: torch.Tensor, labels: torch.Tensor, kl_scale: float) -> None:
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.kl_scale.fill_(kl_scale)

    def warm_up(self, images: torch.Tensor, labels: torch.Tensor, kl_scale: float) -> torch.Tensor:
        """An eager training step on a side stream (PyTorch's recipe before a first capture)."""
        self._load(images, labels, kl_scale)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            values = self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.warmups += 1
        return values

    def capture(self) -> None:
        """Record the step (again: the learning rate is a constant of the graph). Nothing runs here."""
        self.graph, self.output = None, None  # frees the previous graph's memory pool first
        self.optimizer.zero_grad(set_to_none=True)  # backward then allocates the gradients in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self._body()
        self.graph = graph

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, kl_scale: float) -> torch.Tensor:
        """Replay the step on this batch; returns (loss, nll, kl) as a device tensor."""
        self._load(images, labels, kl_scale)
        self.graph.replay()
        return self.output
