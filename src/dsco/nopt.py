"""NOpt: steer ancestral sampling by optimising each step's noise (docs/method.md, section 2).

Read top to bottom: the pure pieces (Latin-hypercube noise, pivots, the losses), one step's
noise optimisation (for C classes at once: each class's loss depends on its own samples, so
batching classes changes nothing but float rounding; on a GPU the reference's iterations replay
from a CUDA graph), then the sampling loop. The gradient reaches the noise only through the
random feature net phi, never through the diffusion model.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .errors import DscoError
from .features import RandomFeatureNet, StackedFeatureNets
from .mmd import mmd2
from .models.diffusion import DiffusionBackend, class_major_labels, denoise, device_of, reference_noise_level, step_at_noise_level

LOSSES = ("quantile", "mmd")
ANCHORS = ("noise", "real")
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
    anchor: str = "noise"  # start from pure noise (the paper), or "real": from the class's real images noised (ours)
    anchor_t: int = 495  # "real": the start level, a timestep of DiT's schedule (D4M's level), carried as alpha_bar

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
        if self.anchor not in ANCHORS:
            raise DscoError(f"unknown NOpt anchor {self.anchor!r}: valid names are {', '.join(ANCHORS)}")
        if not 0 < self.anchor_t < 1000:
            raise DscoError(f"anchor_t must be a timestep of DiT's schedule, 1..999, got {self.anchor_t}")


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

    From a CPU generator the draws come in that order and the sorting and the inverse normal CDF, most of the
    cost (26M values per step at ImageNet size: 1,300 targets x K = 5 x 4,096), run `chunk` targets at a time on
    `device`; a generator on a GPU (`target_generator`) draws there, 256 targets at a time.
    """
    d, device = math.prod(shape), device or torch.device("cpu")
    on_device = generator.device.type != "cpu"
    chunk = 256 if on_device else chunk
    out = []
    for start in range(0, m, chunk):
        size = min(chunk, m - start)
        if on_device:
            keys = torch.rand((size, d, k), generator=generator, device=generator.device)
            offsets = torch.rand((size, k, d), generator=generator, device=generator.device, dtype=torch.float64)
        else:
            keys_, offsets_ = [], []
            for _ in range(size):
                keys_.append(torch.rand(d, k, generator=generator))
                offsets_.append(torch.rand(k, d, generator=generator, dtype=torch.float64))
            keys, offsets = torch.stack(keys_), torch.stack(offsets_)
        perm = torch.argsort(keys.to(device), dim=2).transpose(1, 2)  # (chunk, k, d)
        out.append(_strata_normal(perm, offsets.to(device), k))
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
    gdev = generator.device
    extra = [torch.arange(m, device=gdev)] * (fill // m) + [torch.randperm(m, generator=generator, device=gdev)[: fill % m]]
    return draws, torch.cat(extra)


def noised_targets(backend: DiffusionBackend, z0: torch.Tensor, t: int, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """The real targets z0 noised to level t as the reference does at every step (fresh noise each step)."""
    m, shape = len(z0), tuple(z0.shape[1:])
    draws, extra = target_noising_plan(m, k, n, generator)
    dev, gdev = z0.device, generator.device
    noise = [stratified_target_noise(m, k, shape, generator, dev).flatten(0, 1)]
    noise += [torch.randn((m, *shape), generator=generator, device=gdev).to(dev) for _ in range(draws - k)]
    noise.append(torch.randn((len(extra), *shape), generator=generator, device=gdev).to(dev))
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
    """lam * N * sum_d sum_k rho(sort(v[:, d])[k] - p[d, k]): 1-D optimal transport per feature. v (N, F) and piv
    (F, N) give a scalar; with a leading class dimension, v (C, N, F) and piv (C, F, N), one loss a class (C,)."""
    n = v.shape[-2]
    return lam * n * rho(v.sort(dim=-2).values.transpose(-1, -2) - piv).sum(dim=(-2, -1))


def norm_loss(eps: torch.Tensor, classes: Optional[int] = None) -> torch.Tensor:
    """sum_j rho(||eps_j|| - sqrt(D)): keeps each noise on the Gaussian shell. With `classes`, the sum of each
    class's rows of a class-major batch (C,)."""
    d = eps[0].numel()
    r = rho(eps.flatten(1).norm(dim=1) - math.sqrt(d))
    return r.sum() if classes is None else r.view(classes, -1).sum(1)


def standardise(f: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (f - m) / s


def feature_std(f: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Per-feature population std (the reference's `unbiased=False`); with `floor` > 0 (ours, off by
    default) floored at floor x the median std so a near-constant feature cannot blow up the loss."""
    s = f.std(0, correction=0)
    return s.clamp_min(floor * s.median().item()) if floor > 0 else s


def make_optimizer(eps: torch.Tensor, name: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD with momentum (reference), or Adam with beta1 = momentum: per-pixel step sizes, so a few
    iterations go as far as many SGD ones (ours; the --schedule short preset)."""
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


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_prev, eps) -> scalar, one class


class ClassLoss:
    """One step's loss for C classes optimised together: (x_prev, eps), both (C*n, ...) class-major, -> (C,) losses.

    A class's loss depends on its own rows only, so the gradient of the sum is each class's own gradient and C
    classes optimised together take the steps each would take alone.
    """

    classes: int = 1

    def __call__(self, x_prev: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, classes: list[int]) -> "ClassLoss":
        """The loss of some of the classes alone (a retry of those classes)."""
        raise NotImplementedError


class ScalarLoss(ClassLoss):
    """One class's loss given as a function returning a scalar (the data-free mode, tests)."""

    def __init__(self, fn: LossFn):
        self.fn = fn

    def __call__(self, x_prev: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.fn(x_prev, eps).reshape(1)

    def subset(self, classes: list[int]) -> "ScalarLoss":
        return self


class QuantileLoss(ClassLoss):
    """The reference's loss for C classes: `quantile_loss` of each class's standardised features against its own
    pivots, plus `norm_loss`. m, s: (C, F) the targets' statistics; piv: (C, F, n)."""

    def __init__(self, nets: list[RandomFeatureNet], m: torch.Tensor, s: torch.Tensor, piv: torch.Tensor, lam: float,
                 stack: Optional[StackedFeatureNets] = None):
        self.nets, self.m, self.s, self.piv, self.lam = nets, m, s, piv, lam
        self.stack = stack or StackedFeatureNets(nets)
        self.classes = len(nets)

    def __call__(self, x_prev: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        v = (self.stack(x_prev) - self.m[:, None]) / self.s[:, None]  # (C, n, F)
        return quantile_loss(v, self.piv, self.lam) + norm_loss(eps, self.classes)

    def subset(self, classes: list[int]) -> "QuantileLoss":
        return QuantileLoss([self.nets[c] for c in classes], self.m[classes], self.s[classes], self.piv[classes], self.lam)


class MMDLoss(ClassLoss):
    """Ours (`loss = "mmd"`): weight x MMD^2 between each class's standardised features and its targets', plus
    `norm_loss`; the targets' count may differ between classes, so the MMD runs class by class."""

    def __init__(self, nets: list[RandomFeatureNet], m: torch.Tensor, s: torch.Tensor, fs: list[torch.Tensor], weight: float,
                 stack: Optional[StackedFeatureNets] = None):
        self.nets, self.m, self.s, self.fs, self.weight = nets, m, s, fs, weight
        self.stack = stack or StackedFeatureNets(nets)
        self.classes = len(nets)

    def __call__(self, x_prev: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        v = (self.stack(x_prev) - self.m[:, None]) / self.s[:, None]
        return torch.stack([self.weight * mmd2(v[c], self.fs[c]) for c in range(self.classes)]) + norm_loss(eps, self.classes)

    def subset(self, classes: list[int]) -> "MMDLoss":
        return MMDLoss([self.nets[c] for c in classes], self.m[classes], self.s[classes], [self.fs[c] for c in classes], self.weight)


def _rows(x: torch.Tensor, classes: int, chosen: list[int]) -> torch.Tensor:
    """The rows of the chosen classes of a class-major batch (a broadcast scalar passes through)."""
    if x.dim() == 0 or len(x) == 1:
        return x
    return x.view(classes, -1, *x.shape[1:])[chosen].flatten(0, 1)


def _graphs_wanted() -> bool:
    return os.environ.get("DSCO_CUDA_GRAPHS", "1") != "0"


class GraphedIterations:
    """The reference's J SGD iterations of one step, one iteration captured once as a CUDA graph and replayed J
    times: the iteration is ~100 small kernels, so on a GPU it is launch-bound and the graph removes the launches.

    One runner serves every step of a run with the same shapes: each step's targets, mean and noise are copied
    into its static tensors. SGD with momentum is written out (buf = momentum x buf + grad, eps -= lr x buf, the
    buffer starting at zero, which is torch.optim.SGD's first step). Without `capture` (a CPU, or a capture that
    failed) the same iteration runs eagerly, so its arithmetic is testable anywhere. `compile` runs the loss through
    torch.compile (its elementwise work fused into a few kernels) before the graph is captured.
    """

    def __init__(self, loss: QuantileLoss, mu: torch.Tensor, sigma: torch.Tensor, eps0: torch.Tensor, momentum: float,
                 capture: bool, compile: bool = False):
        dev = eps0.device
        self.loss = QuantileLoss(loss.nets, loss.m.clone(), loss.s.clone(), loss.piv.clone(), loss.lam, loss.stack)
        self.mu, self.sigma = mu.detach().clone(), sigma.detach().to(dev).clone()
        self.eps = eps0.detach().clone().requires_grad_(True)
        self.buf = torch.zeros_like(self.eps)
        self.lr = torch.zeros((), device=dev)
        self.out = torch.zeros(loss.classes, device=dev)
        self.momentum = momentum
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.forward = torch.compile(self.loss) if compile else self.loss
        if capture:
            try:
                side = torch.cuda.Stream(dev)
                side.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(side):
                    for _ in range(3):  # warm-up (cuDNN's algorithm choice, the allocator) before capture
                        self._iteration()
                torch.cuda.current_stream(dev).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._iteration()
                self.graph = graph
            except RuntimeError as e:  # a PyTorch or driver without capture support: run eagerly
                warnings.warn(f"NOpt: CUDA graph capture failed ({str(e).splitlines()[0]}); iterating without graphs")

    def _iteration(self) -> None:
        losses = self.forward(self.mu + self.sigma * self.eps, self.eps)
        (grad,) = torch.autograd.grad(losses.sum(), self.eps)
        with torch.no_grad():
            self.out.copy_(losses)
            self.buf.mul_(self.momentum).add_(grad)
            self.eps.sub_(self.buf * self.lr)

    def run(self, loss: QuantileLoss, mu: torch.Tensor, sigma: torch.Tensor, eps0: torch.Tensor, lr: float, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the optimised eps, the (J, C) losses before each iteration's update)."""
        with torch.no_grad():
            self.loss.m.copy_(loss.m)
            self.loss.s.copy_(loss.s)
            self.loss.piv.copy_(loss.piv)
            self.mu.copy_(mu)
            self.sigma.copy_(sigma)
            self.eps.copy_(eps0)
            self.buf.zero_()
            self.lr.fill_(lr)
        history = torch.empty((iterations, self.loss.classes), device=eps0.device)
        for j in range(iterations):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._iteration()
            history[j].copy_(self.out)
        return self.eps.detach().clone(), history


Runners = dict  # (classes, eps shape, sigma shape) -> GraphedIterations, for one run


def _runner(runners: Optional[Runners], loss: ClassLoss, mu: torch.Tensor, sigma: torch.Tensor, eps0: torch.Tensor,
            cfg: NOptConfig) -> Optional[GraphedIterations]:
    """The graphed runner for this step, when the step is the reference's (quantile loss, SGD, no early stop) on a GPU."""
    if runners is None or not isinstance(loss, QuantileLoss) or cfg.optimizer != "sgd" or cfg.early_stop:
        return None
    key = (loss.classes, tuple(eps0.shape), tuple(sigma.shape))
    if key not in runners:
        runners[key] = GraphedIterations(loss, mu, sigma, eps0, cfg.momentum, capture=eps0.is_cuda)
    return runners[key]


def _iterate(loss: ClassLoss, mu: torch.Tensor, sigma: torch.Tensor, eps0: torch.Tensor, cfg: NOptConfig, lr: float
             ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """J iterations of the configured optimiser on all C classes: (eps, (J', C) losses, iterations per class).

    With early stopping a class that stops keeps the noise it had then while the others go on. On a CPU a batch
    whose every loss is non-finite stops at once (it will be retried); on a GPU that check would stall the queue."""
    c = loss.classes
    eps = eps0.clone().requires_grad_(True)
    opt = make_optimizer(eps, cfg.optimizer, lr, cfg.momentum)
    history: list[torch.Tensor] = []
    stop = [cfg.iterations] * c
    frozen: dict[int, torch.Tensor] = {}
    best, stale = [math.inf] * c, [0] * c
    for it in range(1, cfg.iterations + 1):
        losses = loss(mu + sigma * eps, eps)
        history.append(losses.detach())
        if not eps.is_cuda and not bool(torch.isfinite(losses).any()):
            stop = [min(s, it) for s in stop]
            break
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        if cfg.early_stop:
            values = losses.tolist()
            for k in range(c):
                if k in frozen or not math.isfinite(values[k]):
                    continue
                if values[k] < best[k] * (1 - cfg.early_stop_tol):
                    best[k], stale[k] = values[k], 0
                else:
                    stale[k] += 1
                    if stale[k] >= cfg.early_stop:
                        stop[k], frozen[k] = it, _rows(eps.detach(), c, [k]).clone()
            if len(frozen) == c:
                break
    eps = eps.detach()
    if frozen:
        eps = eps.view(c, -1, *eps.shape[1:]).clone()
        for k, value in frozen.items():
            eps[k] = value
        eps = eps.flatten(0, 1)
    return eps, torch.stack(history), stop


def optimise_classes(
    loss: ClassLoss, mu: torch.Tensor, sigma: torch.Tensor, eps0: torch.Tensor, cfg: NOptConfig, t: int,
    names: list[str], runners: Optional[Runners] = None, lr: Optional[float] = None, retry: int = 0,
) -> tuple[torch.Tensor, list[StepRecord]]:
    """J iterations on eps for x_prev = mu + sigma * eps, C classes at once (rows class-major); a class whose loss
    or noise turns non-finite is redone alone with half the lr, up to `max_retries` times."""
    lr = cfg.lr if lr is None else lr
    c = loss.classes
    runner = _runner(runners, loss, mu, sigma, eps0, cfg)
    if runner is not None:
        eps, history = runner.run(loss, mu, sigma, eps0, lr, cfg.iterations)
        stop = [cfg.iterations] * c
    else:
        eps, history, stop = _iterate(loss, mu, sigma, eps0, cfg, lr)
    finite_eps = torch.isfinite(eps.view(c, -1)).all(1).tolist()
    values = history.tolist()
    records: list[Optional[StepRecord]] = []
    bad = []
    for k in range(c):
        seen = [row[k] for row in values[: stop[k]]]
        if finite_eps[k] and seen and all(math.isfinite(v) for v in seen):
            records.append(StepRecord(t, seen[0], seen[-1], stop[k], retry))
        else:
            records.append(None)
            bad.append(k)
    if not bad:
        return eps, records  # type: ignore[return-value]
    if retry >= cfg.max_retries:
        raise DscoError(f"NOpt: non-finite loss for class {names[bad[0]]} at step t={t} after {cfg.max_retries} retries (lower --lr)")
    redone, again = optimise_classes(loss.subset(bad), _rows(mu, c, bad), _rows(sigma, c, bad), _rows(eps0, c, bad), cfg, t,
                                     [names[k] for k in bad], runners, lr / 2, retry + 1)
    eps = eps.view(c, -1, *eps.shape[1:]).clone()
    eps[bad] = redone.view(len(bad), -1, *redone.shape[1:])
    for k, rec in zip(bad, again):
        records[k] = rec
    return eps.flatten(0, 1), records  # type: ignore[return-value]


def optimise_noise(
    loss_fn: LossFn, mu: torch.Tensor, sigma: torch.Tensor, eps0: torch.Tensor, cfg: NOptConfig, t: int, label: str
) -> tuple[torch.Tensor, StepRecord]:
    """J iterations on eps for one class's x_prev = mu + sigma * eps; retries with half the lr on NaN/Inf."""
    eps, records = optimise_classes(ScalarLoss(loss_fn), mu, sigma, eps0, cfg, t, [label])
    return eps, records[0]


def class_target_loss(nets: list[RandomFeatureNet], features: list[torch.Tensor], n: int, cfg: NOptConfig,
                      stack: Optional[StackedFeatureNets] = None) -> ClassLoss:
    """One step's loss for C classes: their samples' features (through each class's own net) matched to those of
    its noised real targets (`features`, one (M_c, F) tensor a class), both standardised by the targets' statistics."""
    stats = [(f.mean(0), feature_std(f, cfg.std_floor)) for f in features]
    m, s = torch.stack([a for a, _ in stats]), torch.stack([b for _, b in stats])
    fs = [standardise(f, a, b) for f, (a, b) in zip(features, stats)]
    if cfg.loss == "quantile":
        return QuantileLoss(nets, m, s, torch.stack([pivots(f, n) for f in fs]), cfg.lam, stack)
    return MMDLoss(nets, m, s, fs, cfg.mmd_weight, stack)


def target_loss(phi: RandomFeatureNet, zt: torch.Tensor, n: int, cfg: NOptConfig) -> ClassLoss:
    """One class's step loss against its noised real targets zt."""
    return class_target_loss([phi], [phi.batched(zt, feature_batch(zt.device))], n, cfg)


def feature_batch(device: torch.device) -> int:
    """Targets per feature-net call: larger on a GPU, where 512 leaves it idle."""
    return 4096 if device.type == "cuda" else 512


# ---- the sampling loop ---------------------------------------------------------------------

StepLossFactory = Callable[[int, int], "Optional[ClassLoss | LossFn]"]  # (step index, t) -> loss or None to skip


def steered_sampling(
    backend: DiffusionBackend,
    y: torch.Tensor | int,
    x_T: torch.Tensor,
    step_noise: Callable[[int], torch.Tensor] | torch.Tensor,
    make_loss: StepLossFactory,
    cfg: NOptConfig,
    names: list[str],
    progress: bool = False,
    graphs: Optional[bool] = None,
    start: int = 0,
) -> tuple[torch.Tensor, list[list[StepRecord]]]:
    """Ancestral sampling where each step's noise is first optimised against `make_loss`, for the C classes of
    `names` at once (x_T class-major); records per class.

    The model runs once per step without gradient; the last step (sigma = 0) adds no noise. `graphs` (default: on
    a GPU, unless DSCO_CUDA_GRAPHS=0) replays the reference's iterations from a CUDA graph. `start`: the step x_T
    is at (0: pure noise).
    """
    records: list[list[StepRecord]] = [[] for _ in names]
    optimised = cfg.optimised_range(len(backend.timesteps))
    use_graphs = device_of(backend).type == "cuda" and _graphs_wanted() if graphs is None else graphs
    runners: Optional[Runners] = {} if use_graphs else None
    label = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
    bar = tqdm(range(start, len(backend.timesteps)), desc=f"class {label}", leave=False, disable=not progress)
    noise = step_noise if callable(step_noise) else (lambda i: step_noise[i])

    def choose(i: int, t: int, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        active = i in optimised and float(sigma.max()) > 0 and cfg.iterations > 0
        loss = make_loss(i, t) if active else None
        if loss is None:
            return eps
        loss = loss if isinstance(loss, ClassLoss) else ScalarLoss(loss)
        eps, recs = optimise_classes(loss, mu, sigma, eps, cfg, t, names, runners)
        for mine, rec in zip(records, recs):
            mine.append(rec)
        bar.set_postfix(loss=f"{recs[0].loss_last:.4g}")
        return eps

    return denoise(backend, x_T, y, noise, choose_noise=choose, steps=bar), records


def target_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """Where a class's target noise is drawn: on a CPU its own generator (the per-class stream, unchanged); on a GPU
    a generator on the device seeded from it, since drawing 26M values a step on the CPU would hold up the GPU (so
    a set made on a GPU differs from the CPU's, as its arithmetic does anyway)."""
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def nopt_classes(
    backend: DiffusionBackend,
    labels: list[int],
    real_z0: list[torch.Tensor],
    n: int,
    cfg: NOptConfig,
    generators: list[torch.Generator],
    feature_seeds: list[int],
    names: Optional[list[str]] = None,
    progress: bool = False,
    graphs: Optional[bool] = None,
) -> list[tuple[torch.Tensor, list[StepRecord]]]:
    """Synthesise n samples (model space) of each of C classes at once, each matching its real class's features.

    Every random draw of a class comes from its own generator in the order `nopt_class` draws it, and each
    class's loss depends on its own samples alone, so on a CPU the samples are one class at a time's up to float
    rounding; on a GPU the C classes share each model call and each optimiser iteration.

    `cfg.anchor = "real"` (ours, beyond the paper) starts each sample from one of the class's real images (n drawn
    without repetition while there are enough) noised with its x_T to the level of DiT's timestep `anchor_t`,
    carried to the backend's schedule by `step_at_noise_level`, as D4M and D3HR start; NOpt then steers the
    remaining steps."""
    cfg.validate()
    RandomFeatureNet.check_input(backend.sample_shape)
    names = names or [str(label) for label in labels]
    shape, dev, ts = backend.sample_shape, device_of(backend), backend.timesteps
    start = step_at_noise_level(backend.schedule, reference_noise_level("dit", cfg.anchor_t)) if cfg.anchor == "real" else 0
    x_T, step_noise, z0, noise_gens, nets = [], [], [], [], []
    for everything, g, seed, name in zip(real_z0, generators, feature_seeds, names):
        real = everything
        if cfg.max_targets is not None and len(real) > cfg.max_targets:
            real = real[torch.randperm(len(real), generator=g)[: cfg.max_targets]]
        if len(real) == 0:
            raise DscoError(f"class {name}: no real targets")
        x = latin_hypercube_normal(n, shape, g) if cfg.latin_hypercube else torch.randn((n, *shape), generator=g)
        step_noise.append(torch.randn((len(ts), n, *shape), generator=g))
        if cfg.anchor == "real":
            m = len(everything)
            pick = torch.randperm(m, generator=g)[:n] if m >= n else torch.randint(m, (n,), generator=g)
            x = backend.q_sample(everything[pick].cpu(), ts[start], x)
        x_T.append(x)
        z0.append(real.to(dev))
        noise_gens.append(target_generator(g, dev))
        nets.append(RandomFeatureNet(shape[0], cfg.feature_width, seed=seed).to(dev))
    stack = StackedFeatureNets(nets)
    batch = feature_batch(dev)

    def make_loss(i: int, t: int) -> ClassLoss:
        t_target = t if cfg.target_offset == 1 else (ts[i + 1] if i + 1 < len(ts) else None)
        feats = []
        for net, z, g in zip(nets, z0, noise_gens):
            zt = z if t_target is None else noised_targets(backend, z, t_target, n, cfg.k_noises, g)
            feats.append(net.batched(zt, batch))
        return class_target_loss(nets, feats, n, cfg, stack)

    y = class_major_labels(labels, n)
    x, records = steered_sampling(backend, y, torch.cat(x_T), lambda i: torch.cat([s[i] for s in step_noise]), make_loss,
                                  cfg, names, progress, graphs, start)
    return [(x[k * n : (k + 1) * n], records[k]) for k in range(len(labels))]


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
    return nopt_classes(backend, [label], [real_z0], n, cfg, [generator], [feature_seed], [class_name or str(label)], progress)[0]
