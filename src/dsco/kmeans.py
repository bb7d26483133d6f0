"""k-means (k-means++ seeding, Lloyd iterations): the class modes D4M and MGD3 start from."""
from __future__ import annotations

import torch

from .errors import DscoError


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (k, d), assignment (N,)) of the rows of x; every random choice from `generator`."""
    if not 0 < k <= len(x):
        raise DscoError(f"cannot form {k} clusters from {len(x)} samples")
    x = x.double()
    centroids = [x[torch.randint(len(x), (1,), generator=generator)].squeeze(0)]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(k - 1):
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        centroids.append(x[torch.multinomial(p, 1, generator=generator)].squeeze(0))
        d2 = torch.minimum(d2, ((x - centroids[-1]) ** 2).sum(1))
    c = torch.stack(centroids)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return c.float(), assign
