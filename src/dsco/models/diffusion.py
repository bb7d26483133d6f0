"""The backend interface NOpt runs on, and the respaced ancestral-DDPM maths it shares.

A backend exposes one ancestral step `x_{t-1} = mu + sigma * eps` through `mean_sigma`,
with `eps` supplied by the caller: that noise is exactly what NOpt optimises.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class DiffusionBackend(Protocol):
    """What NOpt, plain sampling and the data-free mode need from a diffusion model."""

    kind: str  # "pixel" or "latent"
    device: torch.device  # where it computes
    num_classes: int
    sample_shape: tuple[int, ...]  # one sample in model space
    image_shape: tuple[int, ...]  # one decoded image
    class_names: list[str]  # the model's own class names ([] when it has none)
    timesteps: list[int]  # respaced, descending; the last step is denoised without noise
    schedule: "RespacedSchedule"

    def target_cache_key(self) -> Optional[str]:
        """A digest of what `encode` depends on, when encoding is worth caching on disk (a VAE); None when it is not."""
        ...

    def eps(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        """The classifier-free guided noise prediction."""
        ...

    def eps_with_grad(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        """`eps`, differentiable in x_t (guidance whose gradient flows through the model, as IGD's)."""
        ...

    def mean_sigma(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (broadcastable) of p(x_{t_prev} | x_t, y), classifier-free guided."""
        ...

    def q_sample(self, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean samples in model space to timestep t."""
        ...

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, C, H, W) -> model space."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space -> images in [0, 1]."""
        ...

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """`decode`, differentiable and on the backend's device: for guidance in image space."""
        ...

    denoiser: torch.nn.Module  # the network a method may fine-tune

    def with_denoiser(self, module: torch.nn.Module) -> "DiffusionBackend":
        """The same sampler around another denoiser of the same architecture."""
        ...

    def train_output(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, "torch.Tensor | None"]:
        """Unguided (eps, learned-range variance values or None) with gradients, one timestep per sample
        (fine-tuning)."""
        ...


@dataclass(frozen=True)
class RespacedSchedule:
    """Ancestral DDPM on a subsequence of the training timesteps (DiT's `respace`)."""

    alphas_cumprod: torch.Tensor  # (T_train,) float64
    timesteps: tuple[int, ...]  # descending

    @classmethod
    def from_scheduler(cls, scheduler, num_steps: int) -> "RespacedSchedule":
        """Take betas and the trailing timestep spacing from a diffusers scheduler."""
        scheduler.set_timesteps(num_steps)
        ts = tuple(int(t) for t in scheduler.timesteps)
        return cls(scheduler.alphas_cumprod.to(torch.float64), ts)

    def prev_abar(self, t: int) -> float:
        i = self.timesteps.index(t)
        return 1.0 if i + 1 == len(self.timesteps) else float(self.alphas_cumprod[self.timesteps[i + 1]])

    def step_variances(self, t: int) -> tuple[float, float]:
        """(beta, posterior variance) of the respaced step from t: the ends of DiT's learned range."""
        abar_t, abar_prev = float(self.alphas_cumprod[t]), self.prev_abar(t)
        beta = 1 - abar_t / abar_prev
        return beta, beta * (1 - abar_prev) / (1 - abar_t)

    def q_sample(self, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        abar = float(self.alphas_cumprod[t])
        return abar**0.5 * z0 + (1 - abar) ** 0.5 * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        abar = float(self.alphas_cumprod[t])
        return (x_t - (1 - abar) ** 0.5 * eps) / abar**0.5

    def posterior_weights(self, t: int) -> tuple[float, float]:
        """(c0, ct): the posterior mean of the step from t is c0 * x0 + ct * x_t."""
        abar_t, abar_prev = float(self.alphas_cumprod[t]), self.prev_abar(t)
        beta = 1 - abar_t / abar_prev
        return abar_prev**0.5 * beta / (1 - abar_t), (1 - beta) ** 0.5 * (1 - abar_prev) / (1 - abar_t)

    def ddim_move(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, abar_to: float) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from t to the noise level abar_to: down the chain, or up it (inversion)."""
        return abar_to**0.5 * self.predict_x0(x_t, eps, t) + (1 - abar_to) ** 0.5 * eps

    def posterior(
        self, x_t: torch.Tensor, eps_pred: torch.Tensor, t: int, clip: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of q(x_prev | x_t, x0_pred) on the respaced chain; sigma = 0 at the last step."""
        x0 = self.predict_x0(x_t, eps_pred, t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        c0, ct = self.posterior_weights(t)
        _, var = self.step_variances(t)
        return c0 * x0 + ct * x_t, torch.full((), var**0.5, dtype=x_t.dtype)


REFERENCE_SCHEDULES = {  # the training schedules the peers' originals define their noise levels on
    "dit": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},  # DiT-XL/2 (D3HR, MGD3, IGD, Minimax)
    "sd-v1.5": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},  # Stable Diffusion v1.5 (D4M)
}


def reference_noise_level(schedule: str, t: int) -> float:
    """alpha_bar at training timestep t of an original's schedule (REFERENCE_SCHEDULES), from diffusers' own
    definition of that schedule."""
    from diffusers import DDPMScheduler

    if schedule not in REFERENCE_SCHEDULES:
        raise ValueError(f"unknown reference schedule {schedule!r}")
    return float(DDPMScheduler(num_train_timesteps=1000, **REFERENCE_SCHEDULES[schedule]).alphas_cumprod[t])


def log_snr(abar: float | torch.Tensor) -> float | torch.Tensor:
    return math.log(abar / (1 - abar)) if isinstance(abar, float) else (abar / (1 - abar)).log()


def step_at_noise_level(schedule: "RespacedSchedule", abar: float) -> int:
    """The one rule for carrying a noise level from one schedule to another: the index of the respaced step
    whose alpha_bar is nearest `abar` in log-SNR. A method that starts part-way defines its start as a noise
    level on its original's schedule (not as a fraction of the steps, which means another level on every other
    schedule) and starts at this step of the backend's."""
    if not 0.0 < abar < 1.0:
        raise ValueError(f"a noise level alpha_bar must lie in (0, 1), got {abar}")
    levels = schedule.alphas_cumprod[list(schedule.timesteps)].double().clamp(1e-12, 1 - 1e-12)
    return int((log_snr(levels) - log_snr(abar)).abs().argmin())


def device_of(backend: DiffusionBackend) -> torch.device:
    """Where a backend computes; noise is drawn on the CPU from seeded generators and moved there."""
    return backend.device


def class_major_labels(labels: list[int], n: int) -> torch.Tensor:
    """The labels of a batch of several classes, n samples each in class order (class c's rows c*n .. c*n+n-1): the
    layout every sampler that batches classes uses."""
    return torch.tensor(labels, dtype=torch.long).repeat_interleave(n)


def per_sample_labels(y: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """One label a sample on `device`: `y` for all n samples, or already one a sample."""
    return torch.full((n,), y, dtype=torch.long, device=device) if isinstance(y, int) else y.to(device)


def guided(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


MeanAdjust = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (step index, t, x_t, mu, sigma) -> new mu
NoiseChoice = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (step index, t, mu, sigma, eps) -> eps


def denoise(
    backend: DiffusionBackend,
    x: torch.Tensor,
    y: torch.Tensor | int,
    noise: Callable[[int], torch.Tensor],
    start: int = 0,
    *,
    adjust_mean: Optional[MeanAdjust] = None,
    choose_noise: Optional[NoiseChoice] = None,
    after_step: Optional[Callable[[int, torch.Tensor], None]] = None,
    steps: Optional[Iterable[int]] = None,
) -> torch.Tensor:
    """The one ancestral sampling loop, x_{t-1} = mu + sigma * eps from step index `start` (x at that step's
    level) to the clean sample, with hooks for what the methods change, as DiT's p_sample with its cond_fn:
    `adjust_mean` moves the posterior mean (MGD3's modes, IGD's influence), `noise(i)` supplies the step's eps
    (pre-drawn, or drawn now from a generator), `choose_noise` replaces it (NOpt optimises it against the real
    class), `after_step` sees each new x (the data-free mode's template statistics). The model runs without
    gradient; a hook that needs one through the model computes it itself. `steps` iterates the step indices
    (a progress bar over them, say)."""
    dev = device_of(backend)
    x = x.to(dev)
    y = per_sample_labels(y, len(x), dev)
    for i in steps if steps is not None else range(start, len(backend.timesteps)):
        t = backend.timesteps[i]
        with torch.no_grad():
            mu, sigma = backend.mean_sigma(x, t, y)
        if adjust_mean is not None:
            mu = adjust_mean(i, t, x, mu, sigma)
        eps = noise(i).to(dev)
        if choose_noise is not None:
            eps = choose_noise(i, t, mu, sigma, eps)
        x = (mu + sigma * eps).detach()
        if after_step is not None:
            after_step(i, x)
    return x


def ancestral_sample(
    backend: DiffusionBackend, y: torch.Tensor, x_T: torch.Tensor, step_noise: torch.Tensor, start: int = 0
) -> torch.Tensor:
    """Plain ancestral sampling with all noise supplied: x at step `start` (x_T by default) and one eps per
    remaining step (S - start, N, ...)."""
    return denoise(backend, x_T, y, lambda i: step_noise[i - start], start)


def mean_guided_sample(backend: DiffusionBackend, label: int, n: int, generator: torch.Generator, adjust: MeanAdjust) -> torch.Tensor:
    """Ancestral sampling from N(0, I) in which `adjust` may move each step's posterior mean (guidance added to
    the step whatever the noise: MGD3's modes, IGD's influence and deviation)."""
    return mean_guided_samples(backend, [label], n, [generator], adjust)[0]


def mean_guided_samples(backend: DiffusionBackend, labels: list[int], n: int, generators: list[torch.Generator],
                        adjust: Optional[MeanAdjust] = None) -> list[torch.Tensor]:
    """`mean_guided_sample` of several classes in one batch, n samples each, in class order (each class's noise from
    its own generator, as alone; `adjust` sees the whole batch): on a GPU the model's batch is then large enough to
    keep it busy."""
    draws = [draw_noise(n, backend.sample_shape, len(backend.timesteps), g) for g in generators]
    y = class_major_labels(labels, n)
    noise = torch.cat([e for _, e in draws], dim=1)
    x = denoise(backend, torch.cat([x for x, _ in draws]), y, lambda i: noise[i], adjust_mean=adjust)
    return list(x.split(n))


@torch.no_grad()
def ddim_walk(backend: DiffusionBackend, x: torch.Tensor, label: int | torch.Tensor, path: list[Optional[int]],
              eps_at: str = "source") -> torch.Tensor:
    """Deterministic DDIM (eta 0) along `path`, training timesteps visited in order (None: the clean level,
    alpha_bar 1), down the chain (sampling) or up it (inversion); each move's eps is evaluated at the level it
    leaves ("source") or reaches ("target": D3HR's inversion). `label`: the class of every sample, or one a sample."""
    dev = device_of(backend)
    x = x.to(dev)
    y = per_sample_labels(label, len(x), dev)
    for a, b in zip(path[:-1], path[1:]):
        abar_b = 1.0 if b is None else float(backend.schedule.alphas_cumprod[b])
        t_eps = b if eps_at == "target" and b is not None else a
        x = backend.schedule.ddim_move(x, backend.eps(x, t_eps, y), a, abar_b)
    return x


def ddim_sample(backend: DiffusionBackend, x: torch.Tensor, label: int | torch.Tensor, start: int = 0) -> torch.Tensor:
    """DDIM down the respaced chain from step index `start` (x at that step's level) to the clean sample: D3HR's
    generator, and D4M's stand-in for Stable Diffusion's deterministic PNDM."""
    return ddim_walk(backend, x, label, [*backend.timesteps[start:], None])


def draw_noise(n: int, shape: tuple[int, ...], num_steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain sampler's noise: x_T and the per-step eps, drawn once from a generator."""
    x_T = torch.randn((n, *shape), generator=generator)
    eps = torch.randn((num_steps, n, *shape), generator=generator)
    return x_T, eps


def plain_sample(backend: DiffusionBackend, label: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Plain class-conditional ancestral sampling (the `diffusion` baseline), in model space."""
    return plain_samples(backend, [label], n, [generator])[0]


def plain_samples(backend: DiffusionBackend, labels: list[int], n: int, generators: list[torch.Generator]) -> list[torch.Tensor]:
    """`plain_sample` of several classes in one batch (each class's noise from its own generator, as alone)."""
    return mean_guided_samples(backend, labels, n, generators)
