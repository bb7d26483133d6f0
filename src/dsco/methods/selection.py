"""Real-subset selection, the field's baselines: random, herding and k-center pick n real samples of one class from
their features (pure functions returning indices), and the methods that write those samples as a set."""
from __future__ import annotations

import torch

from ..errors import DscoError
from ..features import RandomFeatureNet
from .base import ClassOutput, ClassTask, Method, register


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


def selection_features(images: torch.Tensor, space: str, seed: int) -> torch.Tensor:
    """What herding / k-center compare: raw pixels, or a random conv net's pooled features."""
    if space == "pixels":
        return images.flatten(1)
    return RandomFeatureNet(images.shape[1], 32, seed=seed).batched(images * 2 - 1)


class _Selector(Method):
    config_fields = ("feature_space",)

    def synthesise(self, task: ClassTask) -> ClassOutput:
        real, idx = task.real_images(), task.real_indices()
        local = SELECTORS[self.name](selection_features(real, task.cfg.feature_space, task.cfg.seed), task.n, task.generator)
        return ClassOutput(real[local], [{"source": "real", "index": int(i)} for i in idx[local]])


@register
class Random(_Selector):
    """A uniformly random real subset."""

    name = "random"
    config_fields = ()


@register
class Herding(_Selector):
    """Greedy herding on the class's features."""

    name = "herding"


@register
class KCenter(_Selector):
    """Greedy k-center on the class's features."""

    name = "kcenter"
