"""D3HR (Zhao et al., ICML 2025): the class's real samples are mapped by DDIM inversion into the noise domain,
where the class is close to a Gaussian; among many candidate groups of IPC noises drawn from that Gaussian, the
group whose mean, std and skewness best match it is kept and denoised with DDIM."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DscoError
from ..models.diffusion import DiffusionBackend, device_of
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@dataclass
class D3HRConfig:
    start_fraction: float = 0.36  # invert up to (and generate from) this far into the descending steps (D3HR: 18 of 50)
    candidates: int = 100_000  # candidate groups (D3HR's m)
    candidate_batch: int = 1000  # groups scored at once (memory: batch x IPC x sample size floats)
    skew_weight: float = 0.1


def start_index(steps: int, fraction: float) -> int:
    return min(steps - 1, round(fraction * steps))


@torch.no_grad()
def ddim_invert(backend: DiffusionBackend, z0: torch.Tensor, label: int, start: int, batch: int = 250) -> torch.Tensor:
    """Deterministic DDIM inversion of clean samples up the respaced chain to timestep index `start`."""
    dev, ts = device_of(backend), backend.timesteps
    up = list(reversed(ts[start:]))  # ascending noise: ts[-1] .. ts[start]
    out = []
    for i in range(0, len(z0), batch):
        x = z0[i : i + batch].to(dev)
        y = torch.full((len(x),), label, dtype=torch.long, device=dev)
        for t, t_next in zip(up[:-1], up[1:]):
            x = backend.schedule.ddim_move(x, backend.eps(x, t, y), t, float(backend.schedule.alphas_cumprod[t_next]))
        out.append(x.cpu())
    return torch.cat(out)


def group_scores(groups: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, skew_weight: float) -> torch.Tensor:
    """(G, n, D) candidate groups -> D3HR's score: ||mean - mu|| + ||std - sigma|| + w ||skewness of each sample||.
    A group of one (IPC 1) has no std, so its score leaves that term out."""
    mean_diff = (groups.mean(1) - mean).norm(dim=1)
    std_diff = (groups.std(1) - std).norm(dim=1) if groups.shape[1] > 1 else 0
    d = groups.shape[2]
    centred = (groups - groups.mean(2, keepdim=True)) / groups.std(2, keepdim=True)
    skew = centred.pow(3).sum(2) * (d / ((d - 1) * (d - 2)))  # each sample's skewness over its dimensions
    return mean_diff + std_diff + skew_weight * skew.norm(dim=1)


def best_group(mean: torch.Tensor, std: torch.Tensor, n: int, cfg: D3HRConfig, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """The lowest-scoring of `cfg.candidates` groups of n draws from N(mean, std^2), and its score."""
    best, best_score, left = None, float("inf"), cfg.candidates
    while left > 0:
        b = min(cfg.candidate_batch, left)
        groups = mean + std * torch.randn((b, n, len(mean)), generator=generator)
        scores = group_scores(groups, mean, std, cfg.skew_weight)
        i = int(scores.argmin())
        if float(scores[i]) < best_score:
            best, best_score = groups[i].clone(), float(scores[i])
        left -= b
    if best is None:
        raise DscoError("D3HR: no candidate group has a finite score (the inverted class has non-finite statistics)")
    return best, best_score


@torch.no_grad()
def ddim_generate(backend: DiffusionBackend, x: torch.Tensor, label: int, start: int) -> torch.Tensor:
    """Deterministic DDIM down the respaced chain from timestep index `start` to the clean sample."""
    dev, ts = device_of(backend), backend.timesteps
    x = x.to(dev)
    y = torch.full((len(x),), label, dtype=torch.long, device=dev)
    for t in ts[start:]:
        x = backend.schedule.ddim_move(x, backend.eps(x, t, y), t, backend.schedule.prev_abar(t))
    return x


@register
class D3HR(Method):
    name = "d3hr"
    uses_model = True
    config_fields = ("d3hr",)

    def synthesise(self, task: ClassTask) -> ClassOutput:
        backend, cfg = task.backend, task.cfg.d3hr
        start = start_index(len(backend.timesteps), cfg.start_fraction)
        z0 = task.real_targets()
        inverted = ddim_invert(backend, z0, task.model_label, start).flatten(1).double()
        mean, std = inverted.mean(0), inverted.std(0)
        group, score = best_group(mean.float(), std.float(), task.n, cfg, task.generator)
        z = ddim_generate(backend, group.reshape(task.n, *z0.shape[1:]), task.model_label, start)
        return synthetic_output(backend, z, {"start_step": start, "group_score": score, "targets": len(z0)})
