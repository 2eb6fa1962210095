"""ResNet-20/56 for CIFAR-10 (He et al. 2016, Sec. 4.2): a 3x3 stem conv with 16 filters, three stages of ``n``
basic blocks with 16, 32 and 64 filters (stride 2 at the first block of stages 2 and 3), global average pooling
and one Linear layer; depth = 6n + 2 (n = 3: ResNet-20, n = 9: ResNet-56).

Where a block changes the shape, the shortcut is a 1x1 convolution with batch norm (the paper's option B), not the
zero-padded identity (option A): a projection is an ordinary prunable layer, so every tensor that meets at an
addition can lose the same channels. The models are not ``nn.Sequential`` chains; compressing them goes through
the dependency-graph path (:mod:`bayescomp.compress.graph`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bayescomp.models import register_model
from bayescomp.modules import Normalize


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of depth 6n+2; inputs in [0, 1] (normalised by the first module), logits out."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, channels = [], widths[0]
        for stage, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, 2 if (stage > 0 and b == 0) else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _builder(blocks_per_stage: int):
    def build(num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
              mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)) -> CifarResNet:
        return CifarResNet(blocks_per_stage, num_classes, input_shape[0], mean, std)

    return build


resnet20 = register_model("resnet20", default_data="cifar10",
                          description="ResNet-20 for CIFAR-10 (3 stages x 3 basic blocks, 16-32-64)")(_builder(3))
resnet56 = register_model("resnet56", default_data="cifar10",
                          description="ResNet-56 for CIFAR-10 (3 stages x 9 basic blocks, 16-32-64)")(_builder(9))
