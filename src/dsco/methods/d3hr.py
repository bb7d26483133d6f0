"""D3HR (Zhao et al., ICML 2025): the class's real samples are mapped by DDIM inversion into the noise domain,
where the class is close to a Gaussian; among many candidate groups of IPC noises drawn from that Gaussian, the
group whose mean, std and skewness best match it is kept and denoised with DDIM. The inversion is deterministic and
costs far more than the rest (every real sample of the class, ~2/3 of the chain), so a class's statistics are
cached, keyed by the model, the class's samples and the sampler (different IPCs and seeds share them).

As the original (lin-zhao-resoLve/D3HR): the statistics are taken at timestep 600 of DiT's schedule (alpha_bar
0.026), carried onto the backend's schedule as a noise level (`step_at_noise_level`), and generation starts
there; the inversion evaluates eps at the level it moves to; guidance covers every latent channel; 10^8 candidate
groups (10,000 batches of 10,000). The original generates from the grid step after its statistics (620 for
600, an off-by-one inside it): dsco follows the statistics. IPC 1 is undefined in the original (a group of one
has no std or skewness); dsco's extension (labelled ours) scores such a group by its mean alone."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..cache import cache_dir, cached, content_key
from ..errors import DscoError
from ..models.diffusion import (DiffusionBackend, class_major_labels, ddim_sample, ddim_walk, device_of, reference_noise_level,
                                step_at_noise_level)
from .base import BatchedMethod, ClassOutput, ClassTask, register, synthetic_output

INVERSION_EPS = ("target", "source")


@dataclass
class D3HRConfig:
    reference_t: int = field(default=600, metadata={
        "help": "the statistics' timestep on DiT's schedule (the original's), carried to this model as the same noise level"})
    candidates: int = field(default=100_000_000, metadata={
        "help": "candidate noise groups scored per class (the original: m // 10 = 10,000 batches of 10,000)"})
    candidate_batch: int = field(default=1000, metadata={
        "help": "groups scored at once (memory: batch x IPC x sample size floats)"})
    skew_weight: float = field(default=0.1, metadata={"help": "weight of the skewness term in a group's score"})
    inversion_eps: str = field(default="target", metadata={
        "help": "the inversion's eps at the level it moves to (target, the original's) or leaves (source)", "choices": ("target", "source")})
    guide_all_channels: bool = field(default=True, metadata={
        "help": "DiT: guidance on every latent channel (the original's), not DiT's first 3"})
    cache: Optional[str] = field(default=None, metadata={
        "help": "inverted class statistics (default ~/.cache/dsco/d3hr)"})


def start_index(backend: DiffusionBackend, reference_t: int) -> int:
    """The backend's step at the noise level of the original's statistics (DiT's timestep `reference_t`)."""
    return step_at_noise_level(backend.schedule, reference_noise_level("dit", reference_t))


def guided_on_all_channels(backend: DiffusionBackend) -> DiffusionBackend:
    """The backend with classifier-free guidance on every latent channel (a pixel backend guides all already)."""
    if getattr(backend, "guidance_channels", None) in (None, getattr(backend, "channels", None)):
        return backend
    other = copy.copy(backend)
    other.guidance_channels = other.channels
    return other


@torch.no_grad()
def ddim_invert(backend: DiffusionBackend, z0: torch.Tensor, label: int, start: int, batch: int = 250,
                eps_at: str = "target") -> torch.Tensor:
    """Deterministic DDIM inversion of clean samples up the respaced chain to timestep index `start`; each move's
    eps is evaluated at the level it moves to (`eps_at` "target", the original's) or leaves ("source")."""
    if eps_at not in INVERSION_EPS:
        raise DscoError(f"unknown D3HR inversion eps {eps_at!r}: valid names are {', '.join(INVERSION_EPS)}")
    path = list(reversed(backend.timesteps[start:]))  # ascending noise: ts[-1] .. ts[start]
    return torch.cat([ddim_walk(backend, z0[i : i + batch], label, path, eps_at).cpu() for i in range(0, len(z0), batch)])


def inverted_statistics(backend: DiffusionBackend, z0: torch.Tensor, label: int, start: int,
                        cache: Optional[str] = None, eps_at: str = "target") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-dimension mean and std of the class's samples inverted to timestep index `start`, from the cache or
    computed now and cached. The key holds the denoiser's weights, the samples, the respaced steps and the guided
    eps of a fixed probe, so any setting that changes the inversion (guidance, embedding constants) changes it."""
    ts = backend.timesteps
    probe_x = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device_of(backend))
    with torch.no_grad():
        probe = backend.eps(probe_x, ts[start], torch.full((1,), label, dtype=torch.long, device=probe_x.device))
    key = content_key(backend.denoiser, [z0, probe], {"label": label, "start": start, "timesteps": list(ts), "eps_at": eps_at})
    path = cache_dir("d3hr", cache) / f"{key}.safetensors"

    def invert() -> dict[str, torch.Tensor]:
        inverted = ddim_invert(backend, z0, label, start, eps_at=eps_at).flatten(1).double()
        return {"mean": inverted.mean(0).float(), "std": inverted.std(0).float()}

    stats, seconds, was_cached = cached(path, invert)
    info = {"inversion_cached": True, "reused_seconds": seconds} if was_cached else {"inversion_cached": False, "inversion_seconds": seconds}
    return stats["mean"], stats["std"], info


def group_scores(groups: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, skew_weight: float) -> torch.Tensor:
    """(G, n, D) candidate groups -> D3HR's score ||mean - mu|| + ||std - sigma|| + w ||skew||, the group's mean and
    std taken per dimension over its n members, and skew_i = D / ((D - 1)(D - 2)) x sum_d z_id^3 with z each
    dimension standardised over the group (the original's `skewness_batch`, its D-based factor included).
    A group of one (IPC 1, ours) has neither std nor skewness: its score is the mean term alone."""
    mean_diff = (groups.mean(1) - mean).norm(dim=1)
    if groups.shape[1] == 1:
        return mean_diff
    std_diff = (groups.std(1) - std).norm(dim=1)
    d = groups.shape[2]
    z = (groups - groups.mean(1, keepdim=True)) / groups.std(1, keepdim=True)
    skew = z.pow(3).sum(2) * (d / ((d - 1) * (d - 2)))
    return mean_diff + std_diff + skew_weight * skew.norm(dim=1)


def best_group(mean: torch.Tensor, std: torch.Tensor, n: int, cfg: D3HRConfig, generator: torch.Generator,
               device: Optional[torch.device] = None) -> tuple[torch.Tensor, float]:
    """The lowest-scoring of `cfg.candidates` groups of n draws from N(mean, std^2), and its score. On a GPU the
    groups are drawn and scored there, from a device generator seeded by `generator` (the original's 10^8 groups are
    minutes a class there, hours on a CPU), so a set depends on the device it was made on (the manifest says which);
    on the CPU they come from `generator` itself."""
    dev = torch.device(device or "cpu")
    gen = generator
    if dev.type != "cpu":
        gen = torch.Generator(dev).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        mean, std = mean.to(dev), std.to(dev)
    best, best_score, left = None, float("inf"), cfg.candidates
    while left > 0:
        b = min(cfg.candidate_batch, left)
        groups = mean + std * torch.randn((b, n, len(mean)), generator=gen, device=dev)
        scores = group_scores(groups, mean, std, cfg.skew_weight)
        i = int(scores.argmin())
        if float(scores[i]) < best_score:
            best, best_score = groups[i].clone(), float(scores[i])
        left -= b
    if best is None:
        raise DscoError("D3HR: no candidate group has a finite score (the inverted class has non-finite statistics)")
    return best.cpu(), best_score


@register
class D3HR(BatchedMethod):
    name = "d3hr"
    uses_model = True
    config_fields = ("d3hr",)
    options, title = D3HRConfig, "D3HR: the class's inverted statistics, the best-matching noise group"

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        first = tasks[0]
        cfg, n = first.cfg.d3hr, first.n
        backend = guided_on_all_channels(first.backend) if cfg.guide_all_channels else first.backend
        start = start_index(backend, cfg.reference_t)
        groups, stats = [], []
        for task in tasks:  # each class's inversion (cached) and candidate search, from its own generator
            z0 = task.real_targets()
            mean, std, inversion = inverted_statistics(backend, z0, task.model_label, start, cfg.cache, cfg.inversion_eps)
            group, score = best_group(mean, std, n, cfg, task.generator, device_of(backend))
            groups.append(group.reshape(n, *z0.shape[1:]))
            stats.append({"start_step": start, "t_start": backend.timesteps[start], "group_score": score, "targets": len(z0),
                          "candidate_device": str(device_of(backend)), **inversion})
        y = class_major_labels([t.model_label for t in tasks], n)
        z = ddim_sample(backend, torch.cat(groups), y, start)  # the classes' DDIM chains in one batch
        return [synthetic_output(backend, zc, s) for zc, s in zip(z.split(n), stats)]
