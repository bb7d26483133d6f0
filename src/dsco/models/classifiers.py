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


def _resnet(in_channels: int, num_classes: int, image_size: int, layers: list[int], avgpool_down: bool, norm) -> nn.Module:
    """torchvision ResNet with a 3x3 stem for small images; `avgpool_down` swaps strided convs for avg pooling."""
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, layers, num_classes=num_classes, norm_layer=norm)
    small = image_size <= 64
    net.conv1 = nn.Conv2d(in_channels, 64, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False)
    if small:
        net.maxpool = nn.Identity()
    if avgpool_down:
        for block in [b for layer in (net.layer2, net.layer3, net.layer4) for b in layer]:
            if block.stride != 1:
                block.conv1.stride = (1, 1)
                block.conv1 = nn.Sequential(nn.AvgPool2d(2), block.conv1)
                ds_conv = block.downsample[0]
                ds_conv.stride = (1, 1)
                block.downsample[0] = nn.Sequential(nn.AvgPool2d(2), ds_conv)
    return net


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "convnet3": lambda c, k, s, width=128: ConvNet(c, k, s, 3, width),
    "convnet6": lambda c, k, s, width=128: ConvNet(c, k, s, 6, width),
    "convnet3-bn": lambda c, k, s, width=128: ConvNet(c, k, s, 3, width, nn.BatchNorm2d),
    "resnet18": lambda c, k, s, width=None: _resnet(c, k, s, [2, 2, 2, 2], False, nn.BatchNorm2d),
    "resnetap10": lambda c, k, s, width=None: _resnet(c, k, s, [1, 1, 1, 1], True, _instance_norm),
}


def create_classifier(name: str, in_channels: int, num_classes: int, image_size: int, width: int | None = None) -> nn.Module:
    """Build a classifier by name; `width` narrows the ConvNets (ignored by the ResNets)."""
    if name not in ARCHS:
        raise DscoError(f"unknown architecture {name!r}: valid names are {', '.join(ARCHS)}")
    kwargs = {"width": width} if width else {}
    return ARCHS[name](in_channels, num_classes, image_size, **kwargs)
