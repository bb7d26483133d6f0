"""Plain class-conditional sampling of the diffusion model: the `diffusion` baseline every model-based method is
measured against."""
from __future__ import annotations

from ..models.diffusion import plain_samples
from .base import BatchedMethod, ClassOutput, ClassTask, register, synthetic_output


@register
class Diffusion(BatchedMethod):
    """Plain class-conditional sampling of the diffusion model."""

    name = "diffusion"
    uses_model, reads_real = True, False

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        backend = tasks[0].backend
        zs = plain_samples(backend, [t.model_label for t in tasks], tasks[0].n, [t.generator for t in tasks])
        return [synthetic_output(backend, z) for z in zs]
