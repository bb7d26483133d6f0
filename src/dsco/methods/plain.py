"""Plain class-conditional sampling of the diffusion model: the `diffusion` baseline every model-based method is
measured against."""
from __future__ import annotations

from ..models.diffusion import plain_sample
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@register
class Diffusion(Method):
    """Plain class-conditional sampling of the diffusion model."""

    name = "diffusion"
    uses_model, reads_real = True, False

    def synthesise(self, task: ClassTask) -> ClassOutput:
        return synthetic_output(task.backend, plain_sample(task.backend, task.model_label, task.n, task.generator))
