"""Random, never-trained conv feature maps phi on the model's space (docs/method.md, section 2)."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .errors import DscoError

FEATURE_GROUPS = 16
LEAKY_SLOPE = 0.01  # the authors' extractor uses nn.LeakyReLU(), PyTorch's default slope
MIN_INPUT_SIZE = 8  # three 4x4 stride-2 convolutions (padding 1) need at least 8x8: 8 -> 4 -> 2 -> 1


class RandomFeatureNet(nn.Module):
    """Conv3x3(C->w), then three grouped Conv4x4/2 doubling the width; 8*w features after pooling.

    The reference uses w = 256 (2048 features) and LeakyReLU(0.01), no activation after the last
    convolution; the weights come from `seed` alone, so a class's net is the same in every process
    and on resume.
    """

    def __init__(self, in_channels: int, width: int = 256, seed: int = 0, groups: int = FEATURE_GROUPS):
        super().__init__()
        if width < groups or width % groups:
            raise DscoError(f"feature width {width} must be a positive multiple of {groups}")
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(w, 2 * w, 4, 2, 1, groups=groups), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1, groups=groups), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(4 * w, 8 * w, 4, 2, 1, groups=groups),
        )
        g = torch.Generator().manual_seed(seed)
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                bound = 1 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=g)
        self.requires_grad_(False).eval()
        self.num_features = 8 * w

    @staticmethod
    def check_input(shape: tuple[int, ...], what: str = "the model's samples") -> None:
        """Refuse, before any work, inputs too small for the three stride-2 convolutions."""
        h, w = shape[-2:]
        if min(h, w) < MIN_INPUT_SIZE:
            raise DscoError(f"the random feature net needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, "
                            f"but {what} are {h}x{w}: use a model with larger samples (or latents)")

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps before pooling (N, 8w, h, w)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features (N, 8w)."""
        return self.body(x).mean(dim=(2, 3))

    def batched(self, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Pooled features of a large set without building one huge activation."""
        return batched_features(self, x, batch)


def batched_features(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """`net`'s features of x in chunks of `batch`, without gradient, as fp32 (a net, or a compiled one)."""
    with torch.no_grad():
        return torch.cat([net(x[i : i + batch]).float() for i in range(0, len(x), batch)])


class StackedFeatureNets(nn.Module):
    """Several classes' feature nets run as one: each convolution of the C nets becomes one grouped convolution
    (C x its groups), so C classes' samples go through the GPU in one launch per layer instead of C.

    Input (C*n, ch, H, W), class-major (class c's n samples are rows c*n .. c*n+n-1); output (C, n, 8w): per
    class, what its own net computes. With C = 1 it is that net, layer for layer.
    """

    def __init__(self, nets: list[RandomFeatureNet]):
        super().__init__()
        self.classes = len(nets)
        layers = []
        for parts in zip(*(net.body for net in nets)):
            first = parts[0]
            if isinstance(first, nn.Conv2d):
                conv = nn.Conv2d(first.in_channels * self.classes, first.out_channels * self.classes, first.kernel_size,
                                 first.stride, first.padding, groups=first.groups * self.classes)
                conv.weight.data = torch.cat([p.weight.data for p in parts])
                conv.bias.data = torch.cat([p.bias.data for p in parts])
                layers.append(conv)
            else:
                layers.append(first)
        self.body = nn.Sequential(*layers).requires_grad_(False).eval()
        self.num_features = nets[0].num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.classes
        n = len(x) // c
        grouped = x.view(c, n, *x.shape[1:]).transpose(0, 1).reshape(n, c * x.shape[1], *x.shape[2:])
        f = self.body(grouped).mean(dim=(2, 3))  # (n, C*F)
        return f.view(n, c, -1).transpose(0, 1)
