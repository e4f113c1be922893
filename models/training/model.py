"""The surface classifier network and its compute cost.

This module owns the architecture: a plain stack of 3x3 convolutions with BatchNorm and ReLU,
downsampling by stride 2, for one 256x320 gray input image. There are no depthwise or grouped
convolutions, which the tract inference engine runs slowly on x86. `STAGES` is the shipped
model's (1.0.0); `SurfaceNet` takes any kernel, stride and padding per stage, which is how the
faster candidates in RESULTS.md ("Towards a faster network") were trained. The head
concatenates global max pooling (so a defect covering a few pixels still dominates a channel)
with global average pooling (the overall look of the surface) and maps them to one logit per
label.

During training a 1x1 convolution on the last feature map also predicts, per cell, whether a
defect lies there. Supervising it with the defect's position tells the network where to look,
which global pooling alone learns only slowly. It is a training aid: `forward` does not use it
and the exported graph does not contain it.
"""

import torch
from torch import nn

from defects import LABELS

INPUT_SHAPE = (1, 1, 256, 320)
"""The model's input shape, NCHW."""

STAGES = ((12, 3, 2, 1), (24, 3, 2, 1), (32, 3, 2, 1), (32, 3, 1, 1), (64, 3, 2, 1), (64, 3, 1, 1), (128, 3, 2, 1))
"""(output channels, kernel size, stride, padding) of each convolution, in order: the shipped
model's. `factory.py --init` reads a bundle's own layout from its graph, so it also takes a
network trained with other stages."""


class SurfaceNet(nn.Module):
    """Surface classifier: (N, channels, 256, 320) normalised images to (N, classes) logits."""

    def __init__(
        self, stages: tuple[tuple[int, int, int, int], ...] = STAGES, classes: int = len(LABELS), channels: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width, kernel, stride, padding in stages:
            layers += [
                nn.Conv2d(channels, width, kernel, stride=stride, padding=padding, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * channels, classes)
        self.defect_map = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, one per label in `LABELS` order."""
        return self._classify(self.features(x))

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the per-cell defect-presence logits (N, 1, rows, cols) of the last
        feature map, for training."""
        features = self.features(x)
        return self._classify(features), self.defect_map(features)

    def _classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the last feature map through max and average pooling."""
        pooled = torch.cat([self.max_pool(features), self.avg_pool(features)], dim=1)
        return self.classifier(torch.flatten(pooled, 1))


def min_input_side(stages: tuple[tuple[int, int, int, int], ...] = STAGES) -> int:
    """The smallest input height and width the stages leave at least one output pixel for."""
    side = 1
    for _, kernel, stride, padding in reversed(stages):
        side = max(1, (side - 1) * stride + kernel - 2 * padding)
    return side


def count_macs(model: nn.Module, shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Multiply-accumulates of one inference of `model` on an input of `shape` (convs and linears)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * module.in_channels // module.groups * kernel

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(shape))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return total


if __name__ == "__main__":
    net = SurfaceNet()
    parameters = sum(p.numel() for p in net.parameters())
    print(f"SurfaceNet: {count_macs(net) / 1e6:.1f} M multiply-accumulates, {parameters} parameters")
