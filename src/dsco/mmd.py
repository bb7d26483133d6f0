"""Kernels and maximum mean discrepancy: pure tensor functions."""
from __future__ import annotations

import torch

DEFAULT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, scales: tuple[float, ...] = DEFAULT_SCALES) -> torch.Tensor:
    """Sum of Gaussian kernels with bandwidths sigma^2 = scale * dim (features are standardised)."""
    d2 = torch.cdist(x, y).pow(2)
    dim = x.shape[1]
    return sum(torch.exp(-d2 / (2 * s * dim)) for s in scales) / len(scales)


def mmd2(x: torch.Tensor, y: torch.Tensor, scales: tuple[float, ...] = DEFAULT_SCALES) -> torch.Tensor:
    """Biased (V-statistic) MMD^2 between the rows of x and of y; >= 0, zero for identical sets."""
    k = gaussian_kernel(x, x, scales).mean() + gaussian_kernel(y, y, scales).mean() - 2 * gaussian_kernel(x, y, scales).mean()
    return k.clamp_min(0)
