"""CIFAR ResNets of He et al. 2016 (Deep Residual Learning for Image Recognition, §4.2).

Layout: 3x3 stem conv with 16 filters, then 3 stages of n BasicBlocks with widths 16/32/64 (stride 2 at the start
of stages 2 and 3), global average pooling and a linear head; depth = 6n + 2. Shortcuts use option A (identity,
with stride-2 subsampling and zero-padded extra channels), so they have no parameters: ResNet-20/56/110 with
10 classes have 269,722 / 853,018 / 1,727,962 parameters (Table 6: 0.27M / 0.85M / 1.7M). The often-quoted
272,474 for ResNet-20 is the option-B count (1x1 projection conv + BN in the two downsampling blocks).

Depth-surgery code relies on the names used here: ``conv1``/``bn1`` (stem), ``layer1..3`` (nn.Sequential of
:class:`BasicBlock` with ``conv1, bn1, conv2, bn2, shortcut``) and ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels up to ``out_channels``.

    A module rather than a lambda so that models deep-copy and pickle (``torch.save(model)``).
    """

    def __init__(self, out_channels: int, stride: int = 2):
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        # Pad on both sides of the channel axis, as the common reference implementation does (16 -> 8+16+8).
        front = extra // 2
        return F.pad(x, (0, 0, 0, 0, front, extra - front))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ShortcutA(planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def pruning_ignored_layers(self) -> list[nn.Module]:
        """Layers whose output channels stay: the residual stream of every stage.

        Torch-Pruning cannot map channel indices through the option-A zero-padding, so the stream
        width (stem conv and every block's conv2) is kept; each block's inner channels are pruned.
        """
        return [self.conv1] + [b.conv2 for layer in (self.layer1, self.layer2, self.layer3) for b in layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def cifar_resnet20(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    return CifarResNet(3, num_classes, in_channels)


def cifar_resnet56(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    return CifarResNet(9, num_classes, in_channels)


def cifar_resnet110(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    return CifarResNet(18, num_classes, in_channels)
