"""MGD3 (Chan-Santiago et al., ICML 2025): the class's modes are k-means centroids of its real samples in the
model's space (k = IPC); each sample is pulled towards its own mode through the predicted clean sample, and
the pull stops after the first part of the steps, so the model refines the samples freely at the end."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kmeans import kmeans
from ..models.diffusion import DiffusionBackend, device_of, mean_guided_sample
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@dataclass
class MGD3Config:
    scale: float = 0.1  # share of the way from the predicted x0 to the mode moved at each guided step (ours: see the note)
    stop_fraction: float = 0.5  # guidance on the first half of the steps (MGD3's T_SG = 25 of 50)
    kmeans_iters: int = 100


def guided_steps(steps: int, stop_fraction: float) -> range:
    """Indices (0 = the noisiest) of the steps whose mean is pulled towards the modes."""
    return range(0, round(stop_fraction * steps))


def pull_to_mode(mu: torch.Tensor, x_t: torch.Tensor, modes: torch.Tensor, weights: tuple[float, float], scale: float) -> torch.Tensor:
    """The posterior mean c0 * x0 + ct * x_t with its x0 (the backend's own, clipped where it clips) moved
    `scale` of the way towards each sample's mode."""
    c0, ct = weights
    x0 = (mu - ct * x_t) / c0
    return mu + c0 * scale * (modes - x0)


def mode_guided_sample(backend: DiffusionBackend, label: int, modes: torch.Tensor, cfg: MGD3Config,
                       generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """Ancestral sampling where, on the guided steps, the posterior mean is moved as if the predicted clean
    sample were `scale` of the way closer to the sample's mode (`pull_to_mode`)."""
    modes = modes.to(device_of(backend))
    guided = guided_steps(len(backend.timesteps), cfg.stop_fraction)

    def adjust(i: int, t: int, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        if i in guided and cfg.scale:
            return pull_to_mode(mu, x, modes, backend.schedule.posterior_weights(t), cfg.scale)
        return mu

    return mean_guided_sample(backend, label, len(modes), generator, adjust), list(guided)


@register
class MGD3(Method):
    name = "mgd3"
    uses_model = True
    config_fields = ("mgd3",)

    def synthesise(self, task: ClassTask) -> ClassOutput:
        z0 = task.real_targets()
        modes, _ = kmeans(z0.flatten(1), task.n, task.generator, task.cfg.mgd3.kmeans_iters)
        z, guided = mode_guided_sample(task.backend, task.model_label, modes.reshape(task.n, *z0.shape[1:]),
                                       task.cfg.mgd3, task.generator)
        return synthetic_output(task.backend, z, {"guided_steps": len(guided)})
