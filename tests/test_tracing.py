"""``bayescomp.tracing.output_layers``: the layer whose output the network returns, found by running it."""

from __future__ import annotations

import torch
from torch import nn

from bayescomp.tracing import output_layers


class TwoHeads(nn.Module):
    """Returns two heads; a Linear after them is called but its output is discarded."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head_a = nn.Linear(8, 3)
        self.head_b = nn.Linear(8, 2)
        self.unused = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        self.unused(h)
        return self.head_a(h), self.head_b(h)


def test_every_layer_whose_output_is_returned_is_found() -> None:
    model = TwoHeads()
    assert output_layers(model, torch.randn(2, 4)) == [model.head_a, model.head_b]


def test_a_layer_followed_by_an_activation_falls_back_to_the_last_one_called() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    assert output_layers(model, torch.randn(2, 4)) == [model[2]]


def test_kinds_restrict_the_search_and_nothing_called_gives_an_empty_list() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(2, 1, 4, 4)
    assert output_layers(model, x, (nn.Conv2d,)) == [model[0]]
    assert output_layers(model, x, (nn.LSTM,)) == []
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed
