"""IGD (Chen et al., ICLR 2025): influence-guided sampling. A surrogate classifier is trained on the real train
split and kept at a few checkpoints; inside a window of steps, each sample's predicted clean image is moved
along the gradient of its TracIn influence (the dot product, summed over checkpoints, of its loss gradient
with the class's average loss gradient) minus a deviation term (its highest cosine similarity, in the
surrogate's features, to the class's other samples), so the set is both useful for training and varied."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data import ImageSet
from ..errors import DscoError
from ..evaluate import EvalProtocol, train_classifier
from ..models.diffusion import DiffusionBackend, mean_guided_sample
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@dataclass
class IGDConfig:
    scale: float = 0.05  # RMS step (model space) the guidance moves the predicted x0 by, per guided step (ours)
    deviation: float = 1.0  # weight of the deviation term against the influence term (ours)
    window: tuple[float, float] = (0.0, 0.5)  # guided steps, as fractions of the steps from the noisiest
    surrogate_steps: int = 300  # training steps of the surrogate ConvNet-3 on the real train split
    checkpoints: int = 3  # surrogate checkpoints the influence sums over, evenly spaced in its training
    surrogate_width: int = 32


def guided_range(steps: int, window: tuple[float, float]) -> range:
    return range(round(window[0] * steps), round(window[1] * steps))


def train_surrogate(train: ImageSet, cfg: IGDConfig, seed: int) -> list[torch.nn.Module]:
    """The surrogate at `cfg.checkpoints` points of its training (TracIn's checkpoints), last one included."""
    nets = []
    for k in range(1, cfg.checkpoints + 1):
        steps = max(1, round(cfg.surrogate_steps * k / cfg.checkpoints))
        protocol = EvalProtocol(width=cfg.surrogate_width, max_steps=steps, steps_by_size=((10**9, steps),))
        nets.append(train_classifier(train, protocol, seed).requires_grad_(True))
    return nets


def _device(nets: list[torch.nn.Module]) -> torch.device:
    """Where the surrogate lives (train_classifier puts it on the GPU when there is one)."""
    return next(nets[0].parameters()).device


def class_gradients(nets: list[torch.nn.Module], images: torch.Tensor, label: int) -> list[list[torch.Tensor]]:
    """Each checkpoint's average loss gradient over the class's real images (TracIn's target direction)."""
    images = images.to(_device(nets))
    y = torch.full((len(images),), label, dtype=torch.long, device=images.device)
    out = []
    for net in nets:
        loss = F.cross_entropy(net(images * 2 - 1), y)
        out.append([g.detach() for g in torch.autograd.grad(loss, list(net.parameters()))])
    return out


def guidance_objective(images: torch.Tensor, label: int, nets: list[torch.nn.Module], targets: list[list[torch.Tensor]],
                       deviation: float) -> torch.Tensor:
    """sum_i [TracIn influence of image i] - deviation * sum_i max_{j != i} cos(f_i, f_j); differentiable in images
    (which may live on another device than the surrogate: the backend's)."""
    x = images.to(_device(nets)) * 2 - 1
    y = torch.full((len(images),), label, dtype=torch.long, device=x.device)
    influence = x.new_zeros(())
    for net, target in zip(nets, targets):
        loss = F.cross_entropy(net(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
        influence = influence - sum((g * t).sum() for g, t in zip(grads, target))  # a step on x lowers the class's loss
    if len(images) > 1 and deviation:
        f = F.normalize(nets[-1].embed(x), dim=1)
        cos = f @ f.T - 3 * torch.eye(len(images), device=f.device)
        influence = influence - deviation * cos.max(1).values.sum()
    return influence


def influence_guided_sample(backend: DiffusionBackend, label: int, n: int, nets: list[torch.nn.Module],
                            targets: list[list[torch.Tensor]], cfg: IGDConfig, generator: torch.Generator,
                            dataset_label: int) -> tuple[torch.Tensor, list[float]]:
    """Ancestral sampling; inside the window the posterior mean's x0 climbs the guidance objective. Returns the
    samples and, per step, the RMS of the guidance applied (0 outside the window)."""
    window = guided_range(len(backend.timesteps), cfg.window)
    applied: list[float] = []

    def adjust(i: int, t: int, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        if i not in window or not cfg.scale:
            applied.append(0.0)
            return mu
        c0, ct = backend.schedule.posterior_weights(t)
        x0 = ((mu - ct * x) / c0).detach().requires_grad_(True)
        objective = guidance_objective(backend.decode_with_grad(x0), dataset_label, nets, targets, cfg.deviation)
        grad = torch.autograd.grad(objective, x0)[0]
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        step = c0 * cfg.scale * grad / rms
        applied.append(float(step.pow(2).mean().sqrt()))
        return mu + step

    return mean_guided_sample(backend, label, n, generator, adjust), applied


@register
class IGD(Method):
    name = "igd"
    uses_model = True
    config_fields = ("igd",)

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
        targets = class_gradients(nets, task.real_images(), task.label)
        z, applied = influence_guided_sample(task.backend, task.model_label, task.n, nets, targets, cfg, task.generator, task.label)
        return synthetic_output(task.backend, z, {"guidance_rms": applied})
