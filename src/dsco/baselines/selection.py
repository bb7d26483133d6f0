"""Pick n real samples of one class from their features: pure functions returning indices."""
from __future__ import annotations

import torch

from ..errors import DscoError


def _check(features: torch.Tensor, n: int) -> None:
    if not 0 < n <= len(features):
        raise DscoError(f"cannot select {n} of {len(features)} samples")


def random_subset(features: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n distinct indices uniformly at random."""
    _check(features, n)
    return torch.randperm(len(features), generator=generator)[:n]


def herding(features: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy herding (Welling 2009): each pick keeps the running mean closest to the class mean."""
    _check(features, n)
    f = features.double()
    target, total = f.mean(0), torch.zeros_like(f[0])
    chosen: list[int] = []
    available = torch.ones(len(f), dtype=torch.bool)
    for k in range(1, n + 1):
        dist = ((target - (total + f) / k) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += f[i]
    return torch.tensor(chosen)


def kcenter(features: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy k-center: start at the sample nearest the mean, then take the farthest from those chosen."""
    _check(features, n)
    f = features.double()
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    d = ((f - f[first]) ** 2).sum(1)
    for _ in range(n - 1):
        i = int(d.argmax())
        chosen.append(i)
        d = torch.minimum(d, ((f - f[i]) ** 2).sum(1))
    return torch.tensor(chosen)


SELECTORS = {"random": random_subset, "herding": herding, "kcenter": kcenter}
