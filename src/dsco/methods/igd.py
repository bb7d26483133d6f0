"""IGD (Chen et al., ICLR 2025): influence-guided sampling. A surrogate classifier is trained once on the real train
split and kept at a few checkpoints of that one training, the untrained one included. The class's samples are made
one at a time; on a window of steps, each step is moved (i) down the gradient, taken through the denoiser and the
decoder, of the mean over checkpoints of 1 - cos(g(x0_hat), g_class), where g is the surrogate's loss gradient over
all its parameters and g_class the average over the class's first real images, so that a training step on the
sample lowers the class's loss (its influence rises); and (ii) away from the nearest of the class's earlier
samples (a memory), so the set stays varied.

The authors' guidance code (mchen725/DD_IGD, `diffusion/gaussian_diffusion.py`) is not in its public snapshot; the
definition here follows the copy of that code published in miaostudy/RAE-IGD (`IGD/diffusion/gaussian_diffusion.py`,
`IGD/sample_mp.py`), whose run scripts match DD_IGD's: influence scale k = 5 with a step of
k x 0.0015 x RMS(eps) x sqrt(1 - alpha_bar_t) x g / RMS(g), deviation scale 120 on the cosine to the nearest
earlier sample in the noisy latent, DiT's step indices 30-45 of 50, 200 real images per class, checkpoints
0 / 5 / 16 / 40 of 50 epochs (ImageWoof's). Left out: the copy also feeds the CFG null branch's decoded x0 to the
surrogate's loss. Ours: the surrogate is the original's ConvNet-6 (width 128) on images of 64 px and more, and the
CPU protocol's ConvNet-3 (width 32) on smaller ones; its images are the backend's decoded x0 in [0, 1], clamped."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..data import ImageSet
from ..errors import DscoError
from ..models.classifiers import create_classifier
from ..models.diffusion import DiffusionBackend, device_of, mean_guided_sample
from ..parallel import local_device
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@dataclass
class IGDConfig:
    scale: float = field(default=5.0, metadata={
        "help": "k: the influence step is k x 0.0015 x RMS(eps) x sqrt(1 - alpha_bar_t) x g / RMS(g)"})
    deviation: float = field(default=120.0, metadata={
        "help": "weight of the step away from the nearest earlier sample (the gradient of their cosine)"})
    window: tuple[float, float] = field(default=(0.6, 0.9), metadata={
        "help": "guided while the countdown step index lies in this share of the steps (30-45 of 50)"})
    memory: int = field(default=64, metadata={
        "help": "the class's earlier samples the deviation looks at (first in, first out)"})
    grad_images: int = field(default=200, metadata={
        "help": "the class's first real images its target gradient averages over"})
    checkpoint_epochs: tuple[int, ...] = field(default=(0, 5, 16, 40), metadata={
        "help": "surrogate checkpoints (0 = untrained) along one training"})
    surrogate_arch: Optional[str] = field(default=None, metadata={
        "help": "the surrogate (default: ConvNet-6 width 128 from 64 px up, the original's; else ConvNet-3 width 32)"})
    surrogate_width: Optional[int] = field(default=None, metadata={
        "help": "the surrogate's width (default: the architecture's)"})
    surrogate_lr: float = field(default=0.01, metadata={
        "help": "the surrogate's SGD lr (momentum 0.9, weight decay 5e-4, constant, as the original)"})
    surrogate_batch: int = field(default=64, metadata={"help": "the surrogate's batch size"})


def guided_range(steps: int, window: tuple[float, float]) -> range:
    """Indices (0 = the noisiest) of the guided steps: those whose countdown index steps - 1 - i lies in
    [round(low x steps), round(high x steps)] (DiT's indices 30..45 at 50 steps: 16 steps, the 5th to the 20th)."""
    low, high = round(window[0] * steps), min(steps - 1, round(window[1] * steps))
    return range(steps - 1 - high, steps - low) if high >= low else range(0)


def surrogate_network(cfg: IGDConfig, channels: int, num_classes: int, size: int) -> torch.nn.Module:
    arch = cfg.surrogate_arch or ("convnet6" if size >= 64 else "convnet3")
    width = cfg.surrogate_width or (128 if arch == "convnet6" else 32)
    return create_classifier(arch, channels, num_classes, size, width)


def train_surrogate(train: ImageSet, cfg: IGDConfig, seed: int) -> list[torch.nn.Module]:
    """The surrogate at `cfg.checkpoint_epochs` of one SGD training on the real train split (images in [-1, 1],
    shuffled each epoch), in eval mode: TracIn's checkpoints along one trajectory, the untrained one included."""
    if not cfg.checkpoint_epochs or min(cfg.checkpoint_epochs) < 0:
        raise DscoError(f"IGD checkpoint epochs must be non-negative and at least one, got {cfg.checkpoint_epochs}")
    dev = local_device()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = surrogate_network(cfg, train.images.shape[1], train.num_classes, train.images.shape[-1]).to(dev)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.surrogate_lr, momentum=0.9, weight_decay=5e-4)
    x_all = train.images * 2 - 1
    snaps = {}
    for epoch in range(max(cfg.checkpoint_epochs) + 1):
        if epoch in cfg.checkpoint_epochs:
            snaps[epoch] = copy.deepcopy(net).eval()
        if epoch == max(cfg.checkpoint_epochs):
            break
        net.train()
        order = torch.randperm(len(train), generator=g)
        for i in range(0, len(order), cfg.surrogate_batch):
            idx = order[i : i + cfg.surrogate_batch]
            loss = F.cross_entropy(net(x_all[idx].to(dev)), train.labels[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return [snaps[e].requires_grad_(True) for e in sorted(set(cfg.checkpoint_epochs))]


def _device(nets: list[torch.nn.Module]) -> torch.device:
    """Where the surrogate lives (on the GPU when there is one)."""
    return next(nets[0].parameters()).device


def loss_gradient(net: torch.nn.Module, images: torch.Tensor, label: int, create_graph: bool = False) -> torch.Tensor:
    """The flattened gradient over all the net's parameters of its mean cross-entropy on images in [0, 1]."""
    x = images.to(_device([net])) * 2 - 1
    y = torch.full((len(x),), label, dtype=torch.long, device=x.device)
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()), create_graph=create_graph)
    return torch.cat([g.flatten() for g in grads])


def class_gradients(nets: list[torch.nn.Module], images: torch.Tensor, label: int) -> list[torch.Tensor]:
    """Each checkpoint's loss gradient averaged over the class's real images (the direction the samples align with)."""
    return [loss_gradient(net, images, label).detach() for net in nets]


def gradient_mismatch(images: torch.Tensor, label: int, nets: list[torch.nn.Module], targets: list[torch.Tensor]) -> torch.Tensor:
    """mean over checkpoints of 1 - cos(g(images), g_class): the quantity IGD's guidance descends, differentiable in
    the images. Low when a training step on the images would lower the class's loss as its own images would."""
    total = images.new_zeros((), device=_device(nets))
    for net, target in zip(nets, targets):
        g = loss_gradient(net, images, label, create_graph=True)
        total = total + 1 - (g @ target) / (g.norm() * target.norm() + 1e-6)
    return total / len(nets)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt().clamp_min(1e-12)


def influence_guided_sample(backend: DiffusionBackend, label: int, n: int, nets: list[torch.nn.Module],
                            targets: list[torch.Tensor], cfg: IGDConfig, generator: torch.Generator,
                            dataset_label: int) -> tuple[torch.Tensor, list[float]]:
    """The class's n samples, one at a time (each one's deviation looks at the earlier ones). Returns the samples
    and, per step, the RMS of the influence step applied, averaged over the samples (0 outside the window)."""
    window = guided_range(len(backend.timesteps), cfg.window)
    dev = device_of(backend)
    memory: list[torch.Tensor] = []
    applied = [0.0] * len(backend.timesteps)
    out = []

    def adjust(i: int, t: int, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if i not in window:
            return mu
        step = torch.zeros_like(mu)
        if cfg.scale:
            x_t = x.detach().requires_grad_(True)
            eps = backend.eps_with_grad(x_t, t, torch.full((len(x),), label, dtype=torch.long, device=dev))
            x0 = backend.schedule.predict_x0(x_t, eps, t)
            mismatch = gradient_mismatch(backend.decode_with_grad(x0), dataset_label, nets, targets)
            g = torch.autograd.grad(mismatch, x_t)[0]
            rho = cfg.scale * 0.0015 * _rms(eps.detach()) * (1 - float(backend.schedule.alphas_cumprod[t])) ** 0.5
            step = rho * g / _rms(g)
            applied[i] += float(_rms(step)) / n
        if memory and cfg.deviation:
            x_t = x.detach().requires_grad_(True)
            mem = torch.stack(memory).to(dev).flatten(1)
            cos = F.cosine_similarity(x_t.flatten(1), mem)
            g_dev = torch.autograd.grad(cos[cos.argmax()], x_t)[0]
            step = step + cfg.deviation * g_dev
        return mu - step.detach()

    for _ in range(n):
        z = mean_guided_sample(backend, label, 1, generator, adjust)
        out.append(z)
        memory = (memory + [z[0].detach()])[-cfg.memory:]
    return torch.cat(out), applied


@register
class IGD(Method):
    name = "igd"
    uses_model = True
    config_fields = ("igd",)
    options, title = IGDConfig, "IGD: influence guidance from a surrogate's gradients"

    def synthesise(self, task: ClassTask) -> ClassOutput:
        cfg = task.cfg.igd
        shared: dict[str, Any] = task.shared
        if "surrogate" not in shared:  # one surrogate per run, trained on every class
            train = task.train()
            if not isinstance(train, ImageSet):
                raise DscoError("igd trains its surrogate on the whole train split in memory; this split is read "
                                "lazily (ImageNet layout): use a smaller folder dataset")
            shared["surrogate"] = train_surrogate(train, cfg, task.cfg.seed)
        nets = shared["surrogate"]
        targets = class_gradients(nets, task.real_images()[: cfg.grad_images], task.label)
        z, applied = influence_guided_sample(task.backend, task.model_label, task.n, nets, targets, cfg, task.generator, task.label)
        return synthetic_output(task.backend, z, {"guidance_rms": applied})
