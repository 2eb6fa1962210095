"""LeNet-300-100 and LeNet-5-Caffe, the MNIST networks of Table 1 in Louizos et al. (2017) and Molchanov et al. (2017).

LeNet-300-100: fully connected 784-300-100-10 with ReLU.
LeNet-5-Caffe: conv 20 (5x5) -> max-pool 2 -> conv 50 (5x5) -> max-pool 2 -> FC 800-500 -> FC 500-10, ReLU after
each hidden layer (no padding, so the flattened conv output is 50 x 4 x 4 = 800 on 28 x 28 inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bayescomp.models import register_model
from bayescomp.modules import Normalize


@register_model("lenet300", default_data="mnist", description="LeNet-300-100 (784-300-100-10, ReLU)")
def lenet300(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> nn.Sequential:
    in_features = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(
        Normalize(mean, std),
        nn.Flatten(),
        nn.Linear(in_features, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@register_model("lenet5", default_data="mnist", description="LeNet-5-Caffe (conv 20-50 5x5, FC 800-500-10)")
def lenet5(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> nn.Sequential:
    channels, height, width = input_shape
    flat_h, flat_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(channels, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * flat_h * flat_w, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )
