"""D4M (Su et al., CVPR 2024): class prototypes from k-means in the model's space, noised part of the way and
denoised with class guidance (the class label stands in for D4M's text prompt)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kmeans import kmeans
from ..errors import DscoError
from ..models.diffusion import DiffusionBackend, ancestral_sample
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@dataclass
class D4MConfig:
    strength: float = 0.7  # share of the sampling steps run from the noised prototype (D4M's img2img strength)
    kmeans_iters: int = 100


def start_step(steps: int, strength: float) -> int:
    """The first sampling step run, as an img2img pipeline computes it: the last round(strength x S) steps run."""
    return steps - min(int(steps * strength), steps)


def noised_prototypes(backend: DiffusionBackend, prototypes: torch.Tensor, strength: float, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """(first step, the prototypes noised to that step's level): D4M's starting points."""
    start = start_step(len(backend.timesteps), strength)
    if start >= len(backend.timesteps):
        raise DscoError(f"D4M strength {strength} runs none of the {len(backend.timesteps)} steps: use a value in (0, 1]")
    noise = torch.randn(prototypes.shape, generator=generator)
    return start, backend.q_sample(prototypes, backend.timesteps[start], noise)


@register
class D4M(Method):
    name = "d4m"
    uses_model = True
    config_fields = ("d4m",)

    def synthesise(self, task: ClassTask) -> ClassOutput:
        backend, cfg, g, n = task.backend, task.cfg.d4m, task.generator, task.n
        z0 = task.real_targets()
        centroids, _ = kmeans(z0.flatten(1), n, g, cfg.kmeans_iters)
        start, x = noised_prototypes(backend, centroids.reshape(n, *z0.shape[1:]), cfg.strength, g)
        noise = torch.randn((len(backend.timesteps) - start, n, *backend.sample_shape), generator=g)
        y = torch.full((n,), task.model_label, dtype=torch.long)
        z = ancestral_sample(backend, y, x, noise, start)
        return synthetic_output(backend, z, {"start_step": start, "t_start": backend.timesteps[start]})
