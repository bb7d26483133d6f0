"""D4M (Su et al., CVPR 2024): class prototypes from k-means of the class's latents, noised part of the way and
denoised with class guidance (the class label stands in for D4M's text prompt).

The original (suduo94/D4M) clusters Stable Diffusion v1.5 latents with scikit-learn's MiniBatchKMeans fed online in
chunks of IPC, then runs SD v1.5's img2img pipeline at strength 0.7 with its default deterministic PNDM scheduler
(50 steps): the prototypes are noised to timestep 701 of SD's schedule, alpha_bar 0.082. That start is a noise
level, carried onto the backend's schedule by the one rule in `step_at_noise_level` (a step fraction would mean
another level on every schedule). Ours: DDIM stands in for PNDM (both deterministic samplers of the same model),
and the backend's classifier-free guidance replaces SD's text guidance 8 and negative prompt."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DscoError
from ..kmeans import kmeans
from ..models.diffusion import (DiffusionBackend, ancestral_sample, class_major_labels, ddim_sample, reference_noise_level,
                                step_at_noise_level)
from .base import BatchedMethod, ClassOutput, ClassTask, register, synthetic_output

SAMPLERS = ("ddim", "ancestral")
KMEANS = ("minibatch", "lloyd")


@dataclass
class D4MConfig:
    strength: float = field(default=0.7, metadata={
        "help": "img2img strength on the original's sampler (SD v1.5, 50 PNDM steps), carried to this model as the same noise level"})
    sampler: str = field(default="ddim", metadata={
        "help": "ddim (deterministic, as the original's PNDM) or ancestral", "choices": ("ddim", "ancestral")})
    kmeans: str = field(default="minibatch", metadata={
        "help": "minibatch (the original's online MiniBatchKMeans, chunks of IPC) or lloyd (full-batch k-means++)", "choices": ("minibatch", "lloyd")})
    kmeans_iters: int = field(default=100, metadata={"help": "Lloyd iterations (lloyd only)"})


def original_start(strength: float, steps: int = 50) -> int:
    """The timestep at which SD v1.5's img2img pipeline noises its input at `strength`: diffusers' PNDM scheduler
    with SD v1.5's configuration, and the pipeline's rule that the last int(steps x strength) steps run."""
    from diffusers import PNDMScheduler

    if not 0.0 < strength <= 1.0:
        raise DscoError(f"D4M strength must lie in (0, 1], got {strength}")
    sched = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, timestep_spacing="leading")
    sched.set_timesteps(steps)
    run = min(int(steps * strength), steps)
    if run == 0:
        raise DscoError(f"D4M strength {strength} runs none of the {steps} steps: use a value in (0, 1]")
    return int(sched.timesteps[(steps - run) * sched.order])


def start_step(backend: DiffusionBackend, strength: float) -> int:
    """The backend's step whose noise level is the original's img2img start level."""
    return step_at_noise_level(backend.schedule, reference_noise_level("sd-v1.5", original_start(strength)))


def minibatch_prototypes(z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The original's prototypes: MiniBatchKMeans(k, batch k) fitted online on the class's samples in shuffled
    chunks of k (a last partial chunk is left out, as the original does for all but one class)."""
    from sklearn.cluster import MiniBatchKMeans

    if not 0 < k <= len(z):
        raise DscoError(f"cannot form {k} clusters from {len(z)} samples")
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=k, n_init="auto")
    x = z.flatten(1).double()[torch.randperm(len(z), generator=generator)].numpy()
    for i in range(0, len(x) - k + 1, k):
        km.partial_fit(x[i : i + k])
    return torch.from_numpy(km.cluster_centers_).float().reshape(k, *z.shape[1:])


def prototypes(z: torch.Tensor, k: int, cfg: D4MConfig, generator: torch.Generator) -> torch.Tensor:
    if cfg.kmeans not in KMEANS:
        raise DscoError(f"unknown D4M k-means {cfg.kmeans!r}: valid names are {', '.join(KMEANS)}")
    if cfg.kmeans == "minibatch":
        return minibatch_prototypes(z, k, generator)
    return kmeans(z.flatten(1), k, generator, cfg.kmeans_iters)[0].reshape(k, *z.shape[1:])


def noised_prototypes(backend: DiffusionBackend, protos: torch.Tensor, strength: float, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """(first step, the prototypes noised to that step's level): D4M's starting points."""
    start = start_step(backend, strength)
    noise = torch.randn(protos.shape, generator=generator)
    return start, backend.q_sample(protos, backend.timesteps[start], noise)


@register
class D4M(BatchedMethod):
    name = "d4m"
    uses_model = True
    config_fields = ("d4m",)
    options, title = D4MConfig, "D4M: prototypes of the real class noised and denoised"

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        first = tasks[0]
        backend, cfg, n = first.backend, first.cfg.d4m, first.n
        if cfg.sampler not in SAMPLERS:
            raise DscoError(f"unknown D4M sampler {cfg.sampler!r}: valid names are {', '.join(SAMPLERS)}")
        noised, noises = [], []
        for task in tasks:  # every draw from the class's own generator, in the order it makes them alone
            g = task.generator
            # the start is a noise level carried onto the schedule: the same step for every class
            start, x = noised_prototypes(backend, prototypes(task.real_targets(), n, cfg, g), cfg.strength, g)
            noised.append(x)
            if cfg.sampler == "ancestral":
                noises.append(torch.randn((len(backend.timesteps) - start, n, *backend.sample_shape), generator=g))
        y = class_major_labels([t.model_label for t in tasks], n)
        if cfg.sampler == "ddim":
            z = ddim_sample(backend, torch.cat(noised), y, start)
        else:
            z = ancestral_sample(backend, y, torch.cat(noised), torch.cat(noises, dim=1), start)
        return [synthetic_output(backend, zc, {"start_step": start, "t_start": backend.timesteps[start]}) for zc in z.split(n)]
