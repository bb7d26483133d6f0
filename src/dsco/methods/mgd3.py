"""MGD3 (Chan-Santiago et al., ICML 2025): the class's modes are k-means centroids of its real samples in the
model's space (k = IPC, sample i guided by mode i); on the noisiest steps each step's posterior mean is moved by
lambda x sigma_t x (mode - x0_hat), sigma_t being the step's own noise std, and the last steps run unguided so
the model refines the samples freely.

The authors' code is not public; the definition here is the one of ManifoldGD's MGD3 baseline
(`p_sample_with_mode_guidance`, built on the MGD3 authors' code): lambda 0.1, guided while DiT's step index
(49 .. 0 at 50 steps) is above T_SG = 25, so 24 of 50 steps. Its modes come from scikit-learn's KMeans; ours from
dsco's seeded k-means++ and Lloyd (`dsco.kmeans`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..kmeans import kmeans
from ..models.diffusion import DiffusionBackend, device_of, mean_guided_samples
from .base import BatchedMethod, ClassOutput, ClassTask, register, synthetic_output


@dataclass
class MGD3Config:
    scale: float = field(default=0.1, metadata={
        "help": "lambda: a guided step's mean moves by lambda x sigma_t x (mode - x0_hat) (the original's)"})
    stop_fraction: float = field(default=0.5, metadata={
        "help": "T_SG / steps: guided while the step index counted down from steps - 1 is above T_SG", "aliases": ("stop",)})
    kmeans_iters: int = field(default=100, metadata={"help": "k-means iterations finding the modes"})


def guided_steps(steps: int, stop_fraction: float) -> range:
    """Indices (0 = the noisiest) of the guided steps: those whose countdown index steps - 1 - i exceeds
    T_SG = round(stop_fraction x steps), as the original's `t > stop_t` (24 of 50 at T_SG = 25)."""
    return range(0, max(0, steps - 1 - round(stop_fraction * steps)))


def pull_to_mode(mu: torch.Tensor, x_t: torch.Tensor, modes: torch.Tensor, weights: tuple[float, float],
                 sigma: torch.Tensor, scale: float) -> torch.Tensor:
    """The posterior mean c0 * x0_hat + ct * x_t moved by scale * sigma * (mode - x0_hat), x0_hat the backend's own
    prediction (clipped where the backend clips)."""
    c0, ct = weights
    x0 = (mu - ct * x_t) / c0
    return mu + scale * sigma * (modes - x0)


def mode_guided_sample(backend: DiffusionBackend, label: int, modes: torch.Tensor, cfg: MGD3Config,
                       generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """Ancestral sampling where, on the guided steps, each sample's posterior mean is pulled towards its mode
    (`pull_to_mode`)."""
    zs, guided = mode_guided_samples(backend, [label], [modes], cfg, [generator])
    return zs[0], guided


def mode_guided_samples(backend: DiffusionBackend, labels: list[int], modes: list[torch.Tensor], cfg: MGD3Config,
                        generators: list[torch.Generator]) -> tuple[list[torch.Tensor], list[int]]:
    """`mode_guided_sample` of several classes in one batch, each with its own modes (the same number a class) and
    its own generator's noise, as alone."""
    all_modes = torch.cat(modes).to(device_of(backend))
    guided = guided_steps(len(backend.timesteps), cfg.stop_fraction)

    def adjust(i: int, t: int, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if i in guided and cfg.scale:
            return pull_to_mode(mu, x, all_modes, backend.schedule.posterior_weights(t), sigma, cfg.scale)
        return mu

    return mean_guided_samples(backend, labels, len(modes[0]), generators, adjust), list(guided)


@register
class MGD3(BatchedMethod):
    name = "mgd3"
    uses_model = True
    config_fields = ("mgd3",)
    options, title = MGD3Config, "MGD3: sampling pulled towards the class's modes"

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        first = tasks[0]
        modes = []
        for task in tasks:  # each class's modes from its own generator, before its sampling noise (as alone)
            z0 = task.real_targets()
            m, _ = kmeans(z0.flatten(1), task.n, task.generator, task.cfg.mgd3.kmeans_iters)
            modes.append(m.reshape(task.n, *z0.shape[1:]))
        zs, guided = mode_guided_samples(first.backend, [t.model_label for t in tasks], modes, first.cfg.mgd3,
                                         [t.generator for t in tasks])
        return [synthetic_output(first.backend, z, {"guided_steps": len(guided)}) for z in zs]
