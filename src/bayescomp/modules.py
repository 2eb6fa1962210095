"""Two tiny plain modules that let a compressed model stay a self-contained ``nn.Sequential``.

* :class:`Normalize` puts the input normalisation *inside* the model, so a shipped model takes raw images in
  [0, 1] and nobody has to remember the data set's mean and std.
* :class:`InputSelect` is what remains of a first Linear layer's pruned input pixels: instead of multiplying
  by all-zero weight columns, the compressed model reads only the surviving input features.

Both hold only buffers (no parameters), so they add nothing to the weight counts, and the packed file format
(:mod:`bayescomp.compress.packed`) knows how to store them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` for an ``N x C x ...`` input.

    The statistics are buffers shaped ``(1, C, 1, 1)`` (broadcast over any trailing dimensions), so they move
    with ``.to()`` and are saved in the state_dict; :attr:`mean` and :attr:`std` give them back as lists.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).flatten()
        std_t = torch.as_tensor(list(std), dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or mean_t.numel() != std_t.numel():
            raise ValueError(f"mean and std need the same non-zero length, got {mean_t.numel()} and "
                             f"{std_t.numel()}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean_", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std_", std_t.view(1, -1, 1, 1))

    @property
    def mean(self) -> list[float]:
        """The per-channel means as a list (for serialisation)."""
        return self.mean_.flatten().tolist()

    @property
    def std(self) -> list[float]:
        """The per-channel standard deviations as a list (for serialisation)."""
        return self.std_.flatten().tolist()

    @property
    def num_channels(self) -> int:
        return self.mean_.numel()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"Normalize expects N x {self.num_channels} x ..., got shape {tuple(x.shape)}")
        shape = (1, self.num_channels) + (1,) * (x.dim() - 2)
        return (x - self.mean_.view(shape)) / self.std_.view(shape)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean]}, std={[round(v, 4) for v in self.std]}"


class InputSelect(nn.Module):
    """Flatten the input (``start_dim=1``) and keep only the features at ``indices``.

    Used in front of a first Linear layer whose input pixels were pruned: the layer then has one input per
    surviving feature instead of ``in_features`` inputs. ``indices`` is stored as a long buffer.
    """

    def __init__(self, indices: Tensor, in_features: int) -> None:
        super().__init__()
        indices = torch.as_tensor(indices).detach().flatten().to(torch.long).cpu()
        in_features = int(in_features)
        if in_features <= 0:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= in_features):
            raise ValueError(f"indices must lie in [0, {in_features}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        self.in_features = in_features
        self.register_buffer("indices", indices)

    @property
    def out_features(self) -> int:
        return self.indices.numel()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"InputSelect expects {self.in_features} features per example, "
                             f"got {flat.shape[1]}")
        return flat.index_select(1, self.indices)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
