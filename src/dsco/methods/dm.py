"""DM: distribution matching by optimising pixels against random ConvNets (Zhao & Bilen, WACV 2023)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.classifiers import ConvNet
from .base import ClassOutput, ClassTask, Method, register


@dataclass
class DMConfig:
    """The reference runs 20k iterations with lr 1 and DSA; shortened for CPU, no DSA."""

    iterations: int = field(default=200, metadata={"help": "optimisation steps, each against a fresh random ConvNet"})
    lr: float = field(default=1.0, metadata={"help": "SGD learning rate on the pixels"})
    momentum: float = field(default=0.5, metadata={"help": "SGD momentum"})
    real_batch: int = field(default=128, metadata={"help": "real images per step"})
    width: int = field(default=64, metadata={"help": "the random ConvNet's width"})


def distribution_matching(real: torch.Tensor, n: int, cfg: DMConfig, generator: torch.Generator) -> torch.Tensor:
    """Synthesise n images (in [0, 1]) of one class, initialised from random real images.

    Every iteration draws a fresh randomly initialised ConvNet and matches the mean embedding of
    the synthetic images to that of a real batch.
    """
    init = real[torch.randperm(len(real), generator=generator)[:n]]
    syn = (init * 2 - 1).clone().requires_grad_(True)
    x_real = real * 2 - 1
    opt = torch.optim.SGD([syn], lr=cfg.lr, momentum=cfg.momentum)
    c, s = real.shape[1], real.shape[-1]
    for _ in range(cfg.iterations):
        seed = int(torch.randint(2**31 - 1, (), generator=generator))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = ConvNet(c, 2, s, 3, cfg.width).requires_grad_(False)
        batch = x_real[torch.randint(len(x_real), (min(cfg.real_batch, len(x_real)),), generator=generator)]
        loss = (net.embed(batch).mean(0) - net.embed(syn).mean(0)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return ((syn.detach() + 1) / 2).clamp(0, 1)


@register
class DM(Method):
    """Distribution matching (Zhao & Bilen 2023): pixels optimised to match random embeddings."""

    name = "dm"
    config_fields = ("dm",)
    options, title = DMConfig, "DM: pixels matched to random embeddings"

    def synthesise(self, task: ClassTask) -> ClassOutput:
        images = distribution_matching(task.real_images(), task.n, task.cfg.dm, task.generator)
        return ClassOutput(images, [{"source": "synthetic"} for _ in range(task.n)])
