"""The surface classifier network and its compute cost.

This module owns the architecture: a plain stack of 3x3 convolutions with BatchNorm and ReLU,
downsampling by stride 2, for one 256x320 gray input image. There are no depthwise or grouped
convolutions, which the tract inference engine runs slowly on x86. The head concatenates global
max pooling (so a defect covering a few pixels still dominates a channel) with global average
pooling (the overall look of the surface) and maps them to one logit per label.

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

STAGES = ((12, 2), (24, 2), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2))
"""(output channels, stride) of each 3x3 convolution, in order."""


class SurfaceNet(nn.Module):
    """Five-class surface classifier: (N, 1, 256, 320) normalised images to (N, 5) logits."""

    def __init__(self, stages: tuple[tuple[int, int], ...] = STAGES, classes: int = len(LABELS)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width, stride in stages:
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
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
        """Logits and the per-cell defect-presence logits (N, 1, H/32, W/32), for training."""
        features = self.features(x)
        return self._classify(features), self.defect_map(features)

    def _classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the last feature map through max and average pooling."""
        pooled = torch.cat([self.max_pool(features), self.avg_pool(features)], dim=1)
        return self.classifier(torch.flatten(pooled, 1))


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
