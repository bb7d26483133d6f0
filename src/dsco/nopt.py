"""NOpt: steer ancestral sampling by optimising each step's noise (docs/method.md, section 2).

Read top to bottom: the pure pieces (Latin-hypercube noise, pivots, the losses), one step's
noise optimisation, then the per-class sampling loop. The gradient reaches the noise only
through the random feature net phi, never through the diffusion model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .errors import DscoError
from .features import RandomFeatureNet
from .mmd import mmd2
from .models.diffusion import DiffusionBackend, denoise, device_of

LOSSES = ("quantile", "mmd")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class NOptConfig:
    """Knobs of NOpt; the defaults are the reference schedule (the authors' implementation)."""

    loss: str = "quantile"  # "quantile" (reference) or "mmd" (ours: the paper's RKHS view)
    iterations: int = 200  # J, SGD iterations per denoising step
    optimizer: str = "sgd"  # "sgd" with momentum (reference) or "adam" (ours: momentum = beta1)
    lr: float = 0.1
    momentum: float = 0.9
    k_noises: int = 5  # K stratified noises per real target
    target_offset: int = 1  # 1: targets noised to t while matching x_{t-1} (reference); 0: to t-1
    feature_width: int = 256  # phi's first width; 8x this many features (2048 in the reference)
    max_targets: Optional[int] = None  # cap on real targets per class (ours), None = all
    lam: float = 5e-4  # weight of the quantile term
    mmd_weight: float = 100.0  # weight of the MMD^2 term when loss = "mmd"
    early_stop: int = 0  # stop a step's iterations after this many without improvement (0 = off)
    early_stop_tol: float = 1e-3  # relative improvement that counts
    max_retries: int = 3  # on NaN/Inf: halve lr and redo the step, this many times
    latin_hypercube: bool = True
    steps_fraction: float = 1.0  # optimise only this fraction of the steps (ours)
    steps_start: float = 0.0  # ... starting this fraction of the steps in (0 = from the noisiest; ours)
    std_floor: float = 0.0  # floor the targets' per-feature std at this x its median (ours; 0 = off, the reference)

    def optimised_steps(self, steps: int) -> int:
        """How many of `steps` sampling steps get their noise optimised."""
        return len(self.optimised_range(steps))

    def optimised_range(self, steps: int) -> range:
        """Indices (0 = the noisiest step) of the sampling steps whose noise is optimised."""
        first = math.floor(self.steps_start * steps)
        return range(first, min(steps, first + math.ceil(self.steps_fraction * steps)))

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise DscoError(f"unknown NOpt loss {self.loss!r}: valid names are {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise DscoError(f"unknown NOpt optimizer {self.optimizer!r}: valid names are {', '.join(OPTIMIZERS)}")
        if self.iterations < 0 or self.k_noises < 1 or self.lr <= 0:
            raise DscoError("NOpt needs iterations >= 0, k_noises >= 1 and lr > 0")
        if not 0 < self.steps_fraction <= 1:
            raise DscoError(f"steps_fraction must be in (0, 1], got {self.steps_fraction}")
        if not 0 <= self.steps_start < 1:
            raise DscoError(f"steps_start must be in [0, 1), got {self.steps_start}")
        if self.target_offset not in (0, 1):
            raise DscoError(f"target_offset must be 0 or 1, got {self.target_offset}")


# ---- pure pieces ---------------------------------------------------------------------------

LHS_EPS = 1e-7  # the authors clamp the stratified uniforms to [eps, 1 - eps] before the normal quantile


def latin_hypercube_normal(n: int, shape: tuple[int, ...], generator: torch.Generator, midpoints: bool = True) -> torch.Tensor:
    """n samples of N(0, I) stratified per dimension: the n values are Phi^-1((perm_i + u) / n).

    `midpoints` (x_T in the reference): u = 1/2. Otherwise (the reference's target noise) u ~ U(0, 1)
    inside each stratum, so every draw is exactly N(0, 1) and only the strata are shared.
    """
    d = math.prod(shape)
    perm = torch.argsort(torch.rand(d, n, generator=generator), dim=1).T  # (n, d), a permutation per dim
    offset = 0.5 if midpoints else torch.rand(n, d, generator=generator, dtype=torch.float64)
    return _strata_normal(perm, offset, n).reshape(n, *shape)


def _strata_normal(perm: torch.Tensor, offset: torch.Tensor | float, n: int) -> torch.Tensor:
    """Phi^-1((perm + offset) / n) in float32: stratum indices and offsets inside them -> normal values."""
    u = ((perm.to(torch.float64) + offset) / n).clamp(LHS_EPS, 1 - LHS_EPS)
    return torch.special.ndtri(u).to(torch.float32)


def stratified_target_noise(m: int, k: int, shape: tuple[int, ...], generator: torch.Generator,
                            device: Optional[torch.device] = None, chunk: int = 16) -> torch.Tensor:
    """(k, m, ...) noises for m targets: a Latin hypercube with random offsets over the k draws of each target
    (m calls of `latin_hypercube_normal(k, shape, generator, midpoints=False)`, equal to them on the CPU).

    The draws come from the CPU generator in that order; the sorting and the inverse normal CDF, most of the
    cost (26M values per step at ImageNet size: 1,300 targets x K = 5 x 4,096), run `chunk` targets at a
    time on `device`, so on a GPU they do not hold up the sampler.
    """
    d, device = math.prod(shape), device or torch.device("cpu")
    out = []
    for start in range(0, m, chunk):
        keys, offsets = [], []
        for _ in range(min(chunk, m - start)):
            keys.append(torch.rand(d, k, generator=generator))
            offsets.append(torch.rand(k, d, generator=generator, dtype=torch.float64))
        perm = torch.argsort(torch.stack(keys).to(device), dim=2).transpose(1, 2)  # (chunk, k, d)
        out.append(_strata_normal(perm, torch.stack(offsets).to(device), k))
    if not out:
        return torch.empty((k, 0, *shape), device=device)
    return torch.cat(out).reshape(m, k, *shape).transpose(0, 1)


def target_noising_plan(m: int, k: int, n: int, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """How the reference noises m real targets for n samples: (draws per target, extra target indices).

    Each target gets k stratified draws, then more plain draws while m x draws < n; then randomly chosen
    targets get one more plain draw each until the total is a multiple of n, so the n pivot blocks are
    equal. The extras are whole passes over the targets plus a random subset.
    """
    draws = k
    while m * draws < n:
        draws += 1
    fill = (-(m * draws)) % n
    extra = [torch.arange(m)] * (fill // m) + [torch.randperm(m, generator=generator)[: fill % m]]
    return draws, torch.cat(extra)


def noised_targets(backend: DiffusionBackend, z0: torch.Tensor, t: int, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """The real targets z0 noised to level t as the reference does at every step (fresh noise each step)."""
    m, shape = len(z0), tuple(z0.shape[1:])
    draws, extra = target_noising_plan(m, k, n, generator)
    dev = z0.device
    noise = [stratified_target_noise(m, k, shape, generator, dev).flatten(0, 1)]
    noise += [torch.randn((m, *shape), generator=generator).to(dev) for _ in range(draws - k)]
    noise.append(torch.randn((len(extra), *shape), generator=generator).to(dev))
    z = torch.cat([z0.repeat(draws, *[1] * len(shape)), z0[extra.to(dev)]])
    return backend.q_sample(z, t, torch.cat(noise))


def rho(a: torch.Tensor) -> torch.Tensor:
    """|a| + a^2: robust near zero, quadratic far away."""
    return a.abs() + a.pow(2)


def pivots(features: torch.Tensor, n: int) -> torch.Tensor:
    """(M, d) -> (d, n): per feature, the means of n equal contiguous blocks of its sorted values."""
    if n > len(features):
        raise DscoError(f"cannot form {n} pivots from {len(features)} target samples")
    srt = features.sort(dim=0).values
    return torch.stack([b.mean(dim=0) for b in torch.tensor_split(srt, n, dim=0)], dim=1)


def quantile_loss(v: torch.Tensor, piv: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * N * sum_d sum_k rho(sort(v[:, d])[k] - p[d, k]): 1-D optimal transport per feature."""
    n = len(v)
    return lam * n * rho(v.sort(dim=0).values.T - piv).sum()


def norm_loss(eps: torch.Tensor) -> torch.Tensor:
    """sum_j rho(||eps_j|| - sqrt(D)): keeps each noise on the Gaussian shell."""
    d = eps[0].numel()
    return rho(eps.flatten(1).norm(dim=1) - math.sqrt(d)).sum()


def standardise(f: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (f - m) / s


def feature_std(f: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Per-feature population std (the reference's `unbiased=False`); with `floor` > 0 (ours, off by
    default) floored at floor x the median std so a near-constant feature cannot blow up the loss."""
    s = f.std(0, correction=0)
    return s.clamp_min(floor * s.median().item()) if floor > 0 else s


def make_optimizer(eps: torch.Tensor, name: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD with momentum (reference), or Adam with beta1 = momentum: per-pixel step sizes, so a few
    iterations go as far as many SGD ones (ours; the --schedule budget preset)."""
    if name == "adam":
        return torch.optim.Adam([eps], lr=lr, betas=(momentum, 0.99))
    return torch.optim.SGD([eps], lr=lr, momentum=momentum)


# ---- one step ------------------------------------------------------------------------------

@dataclass
class StepRecord:
    t: int
    loss_first: float
    loss_last: float
    iterations: int
    retries: int = 0


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_prev, eps) -> scalar


def optimise_noise(
    loss_fn: LossFn, mu: torch.Tensor, sigma: torch.Tensor, eps0: torch.Tensor, cfg: NOptConfig, t: int, label: str
) -> tuple[torch.Tensor, StepRecord]:
    """J SGD iterations on eps for x_prev = mu + sigma * eps; retries with half the lr on NaN/Inf."""
    lr = cfg.lr
    for retry in range(cfg.max_retries + 1):
        eps = eps0.clone().requires_grad_(True)
        opt = make_optimizer(eps, cfg.optimizer, lr, cfg.momentum)
        first = last = float("nan")
        best, stale, it, finite = math.inf, 0, 0, True
        for it in range(1, cfg.iterations + 1):
            loss = loss_fn(mu + sigma * eps, eps)
            if not torch.isfinite(loss):
                finite = False
                break
            last = loss.item()
            first = last if it == 1 else first
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.early_stop:
                if last < best * (1 - cfg.early_stop_tol):
                    best, stale = last, 0
                else:
                    stale += 1
                    if stale >= cfg.early_stop:
                        break
        eps = eps.detach()
        if finite and torch.isfinite(eps).all():
            return eps, StepRecord(t, first, last, it, retry)
        lr /= 2
    raise DscoError(f"NOpt: non-finite loss for class {label} at step t={t} after {cfg.max_retries} retries (lower --lr)")


def target_loss(phi: RandomFeatureNet, zt: torch.Tensor, n: int, cfg: NOptConfig) -> LossFn:
    """One step's loss: phi's features of n samples matched to those of the noised real targets zt
    (both standardised by the targets' statistics), plus the noise-norm term."""
    f = phi.batched(zt)
    m, s = f.mean(0), feature_std(f, cfg.std_floor)
    fs = standardise(f, m, s)
    if cfg.loss == "quantile":
        piv = pivots(fs, n)
        return lambda x_prev, eps: quantile_loss(standardise(phi(x_prev), m, s), piv, cfg.lam) + norm_loss(eps)
    return lambda x_prev, eps: cfg.mmd_weight * mmd2(standardise(phi(x_prev), m, s), fs) + norm_loss(eps)


# ---- the per-class loop --------------------------------------------------------------------

StepLossFactory = Callable[[int, int], Optional[LossFn]]  # (step index, t) -> loss or None to skip


def steered_sampling(
    backend: DiffusionBackend,
    label: int,
    x_T: torch.Tensor,
    step_noise: torch.Tensor,
    make_loss: StepLossFactory,
    cfg: NOptConfig,
    class_name: str = "",
    progress: bool = False,
) -> tuple[torch.Tensor, list[StepRecord]]:
    """Ancestral sampling where each step's noise is first optimised against `make_loss`.

    The model runs once per step without gradient; the last step (sigma = 0) adds no noise.
    """
    records: list[StepRecord] = []
    optimised = cfg.optimised_range(len(backend.timesteps))
    bar = tqdm(range(len(backend.timesteps)), desc=f"class {class_name}", leave=False, disable=not progress)

    def choose(i: int, t: int, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        active = i in optimised and float(sigma.max()) > 0 and cfg.iterations > 0
        loss_fn = make_loss(i, t) if active else None
        if loss_fn is None:
            return eps
        eps, rec = optimise_noise(loss_fn, mu, sigma, eps, cfg, t, class_name)
        records.append(rec)
        bar.set_postfix(loss=f"{rec.loss_last:.4g}")
        return eps

    return denoise(backend, x_T, label, lambda i: step_noise[i], choose_noise=choose, steps=bar), records


def nopt_class(
    backend: DiffusionBackend,
    label: int,
    real_z0: torch.Tensor,
    n: int,
    cfg: NOptConfig,
    generator: torch.Generator,
    feature_seed: int,
    class_name: str = "",
    progress: bool = False,
) -> tuple[torch.Tensor, list[StepRecord]]:
    """Synthesise n samples of one class (model space) whose features match the real class's."""
    cfg.validate()
    RandomFeatureNet.check_input(backend.sample_shape)
    if cfg.max_targets is not None and len(real_z0) > cfg.max_targets:
        real_z0 = real_z0[torch.randperm(len(real_z0), generator=generator)[: cfg.max_targets]]
    if len(real_z0) == 0:
        raise DscoError(f"class {class_name}: no real targets")
    shape = backend.sample_shape
    x_T = latin_hypercube_normal(n, shape, generator) if cfg.latin_hypercube else torch.randn((n, *shape), generator=generator)
    step_noise = torch.randn((len(backend.timesteps), n, *shape), generator=generator)
    dev = device_of(backend)
    phi = RandomFeatureNet(shape[0], cfg.feature_width, seed=feature_seed).to(dev)
    ts = backend.timesteps
    z0 = real_z0.to(dev)

    def make_loss(i: int, t: int) -> LossFn:
        t_target = t if cfg.target_offset == 1 else (ts[i + 1] if i + 1 < len(ts) else None)
        zt = z0 if t_target is None else noised_targets(backend, z0, t_target, n, cfg.k_noises, generator)
        return target_loss(phi, zt, n, cfg)

    return steered_sampling(backend, label, x_T, step_noise, make_loss, cfg, class_name, progress)
