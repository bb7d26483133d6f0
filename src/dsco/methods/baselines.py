"""The field's baselines behind the method interface: real-subset selection, DM, plain diffusion sampling."""
from __future__ import annotations

import torch

from ..baselines import SELECTORS, distribution_matching
from ..features import RandomFeatureNet
from ..models.diffusion import plain_sample
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


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


@register
class DM(Method):
    """Distribution matching (Zhao & Bilen 2023): pixels optimised to match random embeddings."""

    name = "dm"
    config_fields = ("dm",)

    def synthesise(self, task: ClassTask) -> ClassOutput:
        images = distribution_matching(task.real_images(), task.n, task.cfg.dm, task.generator)
        return ClassOutput(images, [{"source": "synthetic"} for _ in range(task.n)])


@register
class Diffusion(Method):
    """Plain class-conditional sampling of the diffusion model."""

    name = "diffusion"
    uses_model, reads_real = True, False

    def synthesise(self, task: ClassTask) -> ClassOutput:
        return synthetic_output(task.backend, plain_sample(task.backend, task.model_label, task.n, task.generator))
