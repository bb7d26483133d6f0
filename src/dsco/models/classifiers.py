"""Classifiers by name from one registry (the same names in CLI, config and results)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import DscoError


def _instance_norm(c: int) -> nn.Module:
    return nn.GroupNorm(c, c, affine=True)  # instance norm that also works at 1x1


class ConvNet(nn.Module):
    """The distillation field's ConvNet: depth x [conv3x3(width), norm, ReLU, avgpool2], linear.

    The norm is instance norm (the field's choice); `norm=nn.BatchNorm2d` gives the BatchNorm variant most
    users train, whose running statistics expose a set whose low-level statistics differ from real images'.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, depth: int = 3, width: int = 128,
                 norm: Callable[[int], nn.Module] = _instance_norm):
        super().__init__()
        layers, c, s = [], in_channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), norm(width), nn.ReLU(inplace=True)]
            if s >= 2:
                layers.append(nn.AvgPool2d(2))
                s //= 2
            c = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * s * s, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _resnet(in_channels: int, num_classes: int, image_size: int, layers: list[int], norm) -> nn.Module:
    """torchvision ResNet with a 3x3 stem for small images."""
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, layers, num_classes=num_classes, norm_layer=norm)
    small = image_size <= 64
    net.conv1 = nn.Conv2d(in_channels, 64, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False)
    if small:
        net.maxpool = nn.Identity()
    return net


class APBlock(nn.Module):
    """IDC's ResNetAP block: conv3x3 -> norm -> ReLU -> AvgPool(stride) -> conv3x3 -> norm, plus the shortcut
    (conv1x1 -> AvgPool(stride) -> norm where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False), norm(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout)
        self.pool = nn.AvgPool2d(stride) if stride != 1 else nn.Identity()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
                                          nn.AvgPool2d(stride) if stride != 1 else nn.Identity(), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetAP(nn.Module):
    """IDC's ResNetAP (Kim et al. 2022; the network MinimaxDiffusion's and the DsCo authors' evaluations build):
    a stride-1 stem (7x7 then AvgPool 4 above 128 px, 3x3 then AvgPool 2 above 64 px, 3x3 alone below), blocks
    that downsample by average pooling inside the block, a global average pool and a linear head; instance norm is
    GroupNorm with one group per channel; convs initialised N(0, 2 / (k^2 out))."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, layers: list[int],
                 norm: Callable[[int], nn.Module] = _instance_norm, width: int = 64):
        super().__init__()
        large, mid = image_size > 128, 64 < image_size <= 128
        stem = [nn.Conv2d(in_channels, width, 7 if large else 3, 1, 3 if large else 1, bias=False), norm(width), nn.ReLU(inplace=True)]
        if large or mid:
            stem.append(nn.AvgPool2d(4 if large else 2))
        self.stem = nn.Sequential(*stem)
        blocks, c = [], width
        for stage, n in enumerate(layers):
            out = width * 2**stage
            for i in range(n):
                blocks.append(APBlock(c, out, 2 if stage > 0 and i == 0 else 1, norm))
                c = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.avg_pool2d(x, x.shape[-1]), 1))


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "convnet3": lambda c, k, s, width=128: ConvNet(c, k, s, 3, width),
    "convnet6": lambda c, k, s, width=128: ConvNet(c, k, s, 6, width),
    "convnet3-bn": lambda c, k, s, width=128: ConvNet(c, k, s, 3, width, nn.BatchNorm2d),
    "resnet18": lambda c, k, s, width=None: _resnet(c, k, s, [2, 2, 2, 2], nn.BatchNorm2d),
    "resnetap10": lambda c, k, s, width=None: ResNetAP(c, k, s, [1, 1, 1, 1]),
}


def create_classifier(name: str, in_channels: int, num_classes: int, image_size: int, width: int | None = None) -> nn.Module:
    """Build a classifier by name; `width` narrows the ConvNets (ignored by the ResNets)."""
    if name not in ARCHS:
        raise DscoError(f"unknown architecture {name!r}: valid names are {', '.join(ARCHS)}")
    kwargs = {"width": width} if width else {}
    return ARCHS[name](in_channels, num_classes, image_size, **kwargs)
