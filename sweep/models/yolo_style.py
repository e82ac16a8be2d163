"""A YOLOv7-style classification net: a classification adaptation, not the detector.

Building blocks after Wang, Bochkovskiy & Liao, "YOLOv7: Trainable bag-of-freebies sets new
state-of-the-art for real-time object detectors", CVPR 2023, as written in the authors' model config
(``cfg/training/yolov7.yaml``, ``models/common.py``):

- ``Conv`` = Conv2d (no bias) + BatchNorm + SiLU.
- **ELAN** (§3.1, Fig. 2(c); the paper's E-ELAN adds group convs and shuffling, which the config does
  not use in YOLOv7 itself): two 1x1 convs of the input; a stack of four 3x3 convs on the second; the
  outputs of the first 1x1, the second 1x1 and every second 3x3 are concatenated (4 x hidden channels)
  and fused by a 1x1 conv. Hidden width = output / 4, as in the config (64 -> 256).
- **MP** downsampling: concat of (2x2 max-pool -> 1x1 conv) and (1x1 conv -> 3x3 stride-2 conv), each
  half the output channels.
- **SPPCSPC**: cv1 -> cv3 (3x3) -> cv4 gives x1; cat(x1, maxpool_5(x1), maxpool_9(x1), maxpool_13(x1))
  (stride 1, padding k//2) -> cv5 -> cv6 (3x3) gives y1; the CSP branch cv2 gives y2; cv7 fuses
  cat(y1, y2). Hidden width c_ = int(2 * c2 * e) with e = 0.5 (config defaults).

The classification adaptation: a shallow stem for 28x28/32x32 inputs (YOLOv7's stem downsamples 4x
for 640x640 images), two ELAN + MP stages, SPPCSPC, global average pooling and a Linear head instead of
the FPN/PAN neck and detection heads. Max-pools use ``ceil_mode`` so odd maps (7x7) keep both MP
branches the same size. With 1x28x28 inputs and 10 classes: ~0.7 M params, ~37 M MACs.

Every concatenation couples channels across branches (ELAN: 4 producers feed one fusion conv; SPPCSPC:
one producer appears in 4 slices of one concat), which is what concatenation-aware pruning exercises.
"""

from __future__ import annotations

import torch
from torch import nn

# SPP kernel sizes of SPPCSPC (YOLOv7 models/common.py: k=(5, 9, 13)).
SPP_KERNELS = (5, 9, 13)
# ELAN concatenates 4 tensors of the hidden width (config: Concat of [-1, -3, -5, -6]).
ELAN_PARTS = 4


class Conv(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + SiLU, 'same' padding."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class ELAN(nn.Module):
    """ELAN block: two 1x1 branches, four stacked 3x3 convs, concat of 4 taps, 1x1 fusion."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        h = c_out // ELAN_PARTS
        self.cv1 = Conv(c_in, h, 1)
        self.cv2 = Conv(c_in, h, 1)
        self.m = nn.ModuleList(Conv(h, h, 3) for _ in range(4))
        self.fuse = Conv(ELAN_PARTS * h, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x), self.cv2(x)
        c = self.m[1](self.m[0](b))
        d = self.m[3](self.m[2](c))
        return self.fuse(torch.cat([d, c, b, a], dim=1))


class MP(nn.Module):
    """MP downsampling: cat(maxpool -> 1x1, 1x1 -> 3x3 stride 2), each half of ``c_out``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        h = c_out // 2
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.cv1 = Conv(c_in, h, 1)
        self.cv2 = Conv(c_in, h, 1)
        self.cv3 = Conv(h, h, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cv3(self.cv2(x)), self.cv1(self.pool(x))], dim=1)


class SPPCSPC(nn.Module):
    """Spatial pyramid pooling (max-pools 5/9/13, stride 1) in a cross-stage-partial block."""

    def __init__(self, c_in: int, c_out: int, e: float = 0.5):
        super().__init__()
        c_ = int(2 * c_out * e)
        self.cv1 = Conv(c_in, c_, 1)
        self.cv2 = Conv(c_in, c_, 1)
        self.cv3 = Conv(c_, c_, 3)
        self.cv4 = Conv(c_, c_, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in SPP_KERNELS)
        self.cv5 = Conv((1 + len(SPP_KERNELS)) * c_, c_, 1)
        self.cv6 = Conv(c_, c_, 3)
        self.cv7 = Conv(2 * c_, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], dim=1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat([y1, y2], dim=1))


class YOLO7Cls(nn.Module):
    """stem (3x3, 3x3 s2) -> ELAN -> MP -> ELAN -> MP -> SPPCSPC -> global avg pool -> Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(32, 64, 128, 256, 64)):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(Conv(in_channels, w0, 3), Conv(w0, w1, 3, 2))
        self.stage1 = nn.Sequential(ELAN(w1, w2), MP(w2, w2))
        self.stage2 = nn.Sequential(ELAN(w2, w3), MP(w3, w3))
        self.spp = SPPCSPC(w3, w4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spp(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def yolo7_cls(num_classes: int, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """YOLOv7-style classifier (a classification adaptation; see the module docstring)."""
    return YOLO7Cls(num_classes, in_channels)
