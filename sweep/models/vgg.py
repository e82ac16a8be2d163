"""VGG-16 with batch norm for 32x32 inputs: the 13 conv layers of configuration D (Simonyan & Zisserman 2015,
Very Deep Convolutional Networks, Table 1), each followed by BN and ReLU, then a single linear classifier, as is
usual for CIFAR (the 4096-wide ImageNet head would dominate the parameter count at 1x1 resolution)."""

from __future__ import annotations

import torch
from torch import nn

CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg=CFG_D, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, input_size
        for v in cfg:
            if v == "M":
                # Smaller inputs (28x28, 8x8) run out of resolution before the 5th pool: stop pooling at 1x1.
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c_in = v
        self.features = nn.Sequential(*layers)
        # Makes inputs larger than 32 work too; a no-op at 1x1.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16_bn(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    return VGG(CFG_D, num_classes, in_channels, input_size)
