"""DFDsCo: the data-free mode (docs/method.md, section 3). Not one real image is read.

Per class, template samples from the model itself give, at every step, the per-channel mean
and std of one shared random feature net's maps; synthesis then optimises each step's noise
so the samples' standardised maps have zero mean, unit std, and low mutual cosine similarity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .features import RandomFeatureNet
from .models.diffusion import DiffusionBackend, denoise, draw_noise
from .nopt import LossFn, NOptConfig, StepRecord, norm_loss, rho, steered_sampling


@dataclass
class DataFreeConfig:
    """Data-free knobs; defaults are the reference's."""

    templates: Optional[int] = None  # template samples per class; None = by schedule (reference 200, short 20)
    diversity_weight: float = 10.0
    beta: float = 1e-3  # weight of the moment terms
    template_batch: int = 100


def template_stats(
    backend: DiffusionBackend, label: int, phi: RandomFeatureNet, cfg: DataFreeConfig, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step: channel mean and std of phi's maps of the templates' x_{t-1}, over templates and positions."""
    sums = [[0.0, 0.0, 0] for _ in backend.timesteps]

    @torch.no_grad()
    def record(i: int, x: torch.Tensor) -> None:
        h = phi.maps(x).transpose(0, 1).flatten(1).double()  # (C, n*h*w)
        sums[i][0] = sums[i][0] + h.sum(1)
        sums[i][1] = sums[i][1] + h.pow(2).sum(1)
        sums[i][2] += h.shape[1]

    for start in range(0, cfg.templates, cfg.template_batch):
        n = min(cfg.template_batch, cfg.templates - start)
        x = torch.randn((n, *backend.sample_shape), generator=generator)
        denoise(backend, x, label, lambda i, shape=x.shape: torch.randn(shape, generator=generator), after_step=record)
    stats = []
    for s1, s2, count in sums:
        mean = s1 / count
        std = (s2 / count - mean.pow(2)).clamp_min(1e-12).sqrt()
        stats.append((mean.float(), std.float().clamp_min(1e-6)))
    return stats


DIAGONAL = -100.0  # the reference masks each sample's cosine with itself to -100 before the max


def datafree_loss(h: torch.Tensor, eps: torch.Tensor, cfg: DataFreeConfig) -> torch.Tensor:
    """norm + diversity (max cosine to another sample) + beta*HW*(rho(mean_c) + rho(std_c - 1)) on standardised maps h.

    As the reference: population std over samples and positions; the cosine of a sample with itself is
    replaced by -100, so a lone sample (IPC 1) contributes -100 to the diversity sum.
    """
    flat = torch.nn.functional.normalize(h.flatten(1), dim=1)
    eye = torch.eye(len(h), device=h.device)
    cos = (flat @ flat.T) * (1 - eye) + DIAGONAL * eye
    diversity = cos.max(dim=1).values.sum()
    per_c = h.transpose(0, 1).flatten(1)
    hw = h.shape[2] * h.shape[3]
    moments = rho(per_c.mean(1)).sum() + rho(per_c.std(1, correction=0) - 1).sum()
    return norm_loss(eps) + cfg.diversity_weight * diversity + cfg.beta * hw * moments


def datafree_class(
    backend: DiffusionBackend,
    label: int,
    n: int,
    nopt: NOptConfig,
    cfg: DataFreeConfig,
    generator: torch.Generator,
    phi: RandomFeatureNet,
    class_name: str = "",
    progress: bool = False,
) -> tuple[torch.Tensor, list[StepRecord]]:
    """Synthesise n samples of one class without real data."""
    nopt.validate()
    RandomFeatureNet.check_input(backend.sample_shape)
    stats = template_stats(backend, label, phi, cfg, generator)
    x_T, step_noise = draw_noise(n, backend.sample_shape, len(backend.timesteps), generator)

    def make_loss(i: int, t: int) -> LossFn:
        m, s = stats[i][0].view(1, -1, 1, 1), stats[i][1].view(1, -1, 1, 1)
        return lambda x_prev, eps: datafree_loss((phi.maps(x_prev) - m) / s, eps, cfg)

    x, records = steered_sampling(backend, label, x_T, step_noise, make_loss, nopt, [class_name or str(label)], progress)
    return x, records[0]

