"""D3HR (Zhao et al., ICML 2025): the class's real samples are mapped by DDIM inversion into the noise domain,
where the class is close to a Gaussian; among many candidate groups of IPC noises drawn from that Gaussian, the
group whose mean, std and skewness best match it is kept and denoised with DDIM. The inversion is deterministic and
costs far more than the rest (every real sample of the class, ~2/3 of the chain), so a class's statistics are
cached, keyed by the model, the class's samples and the sampler (different IPCs and seeds share them)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from ..cache import cache_dir, content_key, read_entry, write_entry
from ..errors import DscoError
from ..models.diffusion import DiffusionBackend, device_of
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@dataclass
class D3HRConfig:
    start_fraction: float = 0.36  # invert up to (and generate from) this far into the descending steps (D3HR: 18 of 50)
    candidates: int = 100_000  # candidate groups (D3HR's m)
    candidate_batch: int = 1000  # groups scored at once (memory: batch x IPC x sample size floats)
    skew_weight: float = 0.1
    cache: Optional[str] = None  # inverted class statistics; None = ~/.cache/dsco/d3hr


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


def inverted_statistics(backend: DiffusionBackend, z0: torch.Tensor, label: int, start: int,
                        cache: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-dimension mean and std of the class's samples inverted to timestep index `start`, from the cache or
    computed now and cached. The key holds the denoiser's weights, the samples, the respaced steps and the guided
    eps of a fixed probe, so any setting that changes the inversion (guidance, embedding constants) changes it."""
    ts = backend.timesteps
    probe_x = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device_of(backend))
    with torch.no_grad():
        probe = backend.eps(probe_x, ts[start], torch.full((1,), label, dtype=torch.long, device=probe_x.device))
    key = content_key(backend.denoiser, [z0, probe], {"label": label, "start": start, "timesteps": list(ts)})
    path = cache_dir("d3hr", cache) / f"{key}.safetensors"
    if path.is_file():
        stats, seconds = read_entry(path)
        return stats["mean"], stats["std"], {"inversion_cached": True, "reused_seconds": seconds}
    t0 = time.perf_counter()
    inverted = ddim_invert(backend, z0, label, start).flatten(1).double()
    mean, std = inverted.mean(0).float(), inverted.std(0).float()
    seconds = time.perf_counter() - t0
    write_entry(path, {"mean": mean, "std": std}, seconds)
    return mean, std, {"inversion_cached": False, "inversion_seconds": seconds}


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
        mean, std, inversion = inverted_statistics(backend, z0, task.model_label, start, cfg.cache)
        group, score = best_group(mean, std, task.n, cfg, task.generator)
        z = ddim_generate(backend, group.reshape(task.n, *z0.shape[1:]), task.model_label, start)
        return synthetic_output(backend, z, {"start_step": start, "group_score": score, "targets": len(z0), **inversion})
