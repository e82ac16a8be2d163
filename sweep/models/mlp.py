"""A plain multilayer perceptron on flattened inputs: the student of compressive MBN.

Zhang (arXiv 1503.06452) compresses MBN + k-means into "a DNN" from raw inputs to the cluster index; the
architecture is not given (METHODS.md §5: ours to design). Two hidden ReLU layers of ``WIDTH`` units are our
choice: on Fashion-MNIST, with MBN labelling the whole training split, widths 64 and 256 agree with MBN on
0.946 / 0.948 of held-out images and wider or deeper ones no better (``bench/mbn.py``, bench/README.md), and
a forward at batch 1 costs tens of microseconds against MBN's tens of milliseconds. Channel methods prune the
hidden units (Torch-Pruning groups each hidden Linear with the next one); the output layer is never pruned.
"""

from __future__ import annotations

from torch import nn

WIDTH = 256
DEPTH = 2  # hidden layers


class MLP(nn.Module):
    """Flatten, then ``depth`` × (Linear, ReLU) of ``width`` units, then a Linear head named ``fc``."""

    def __init__(self, num_classes: int, in_channels: int = 1, input_size: int = 28, width: int = WIDTH,
                 depth: int = DEPTH):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_channels * input_size * input_size
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def mlp(num_classes: int, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    return MLP(num_classes, in_channels, input_size)
