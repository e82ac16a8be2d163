"""A small CNN for tiny inputs (8x8 sklearn digits, 28x28 Fashion-MNIST): fast smoke tests and quick sweeps."""

from __future__ import annotations

from torch import nn

WIDTHS = (32, 64, 128)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks, max-pool between blocks while the map is >= 4 px, global avg pool, linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, input_size
        for i, c_out in enumerate(WIDTHS):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            # Pool only between blocks and only while the result stays >= 2 px, so 8x8 inputs go 8 -> 4 -> 2.
            if i < len(WIDTHS) - 1 and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def small_cnn(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    return SmallCNN(num_classes, in_channels, input_size)
