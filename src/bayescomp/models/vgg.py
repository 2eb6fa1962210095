"""VGG-16 for CIFAR-10 as used by Bayesian Compression (Louizos et al. 2017) and Sparse VD:
13 conv(3x3)+BatchNorm+ReLU layers with max-pools, then FC 512 -> ReLU -> FC 10 (32 x 32 inputs)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bayescomp.models import register_model
from bayescomp.modules import Normalize

VGG16_CHANNELS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


@register_model("vgg16", default_data="cifar10", description="VGG-16 (13 conv+BN, FC 512, FC 10)")
def vgg16(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> nn.Sequential:
    channels, height, width = input_shape
    layers: list[nn.Module] = [Normalize(mean, std)]
    for item in VGG16_CHANNELS:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU()]
            channels = int(item)
    layers += [
        nn.Flatten(),
        nn.Linear(channels * height * width, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    ]
    return nn.Sequential(*layers)
