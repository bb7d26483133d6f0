"""MinimaxDiffusion (Gu et al., CVPR 2024): fine-tune the diffusion model on the real data with, besides the
denoising loss, a representativeness term (raise each prediction's lowest similarity to the class's real
samples) and a diversity term (lower its highest similarity to the class's earlier predictions), then sample
plainly. The fine-tuned weights are cached, keyed by the base weights, the data and the settings."""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..cache import cache_dir, content_key, read_entry, write_entry
from ..models.diffusion import DiffusionBackend, device_of, plain_sample
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


@dataclass
class MinimaxConfig:
    steps: int = 200  # fine-tuning steps (ours: the paper fine-tunes DiT-XL/2 for 8 epochs of the subset)
    batch_size: int = 32
    lr: float = 1e-4
    representativeness: float = 0.002  # lambda_r
    diversity: float = 0.008  # lambda_d
    memory: int = 64  # embeddings kept per class for each of the two terms
    cache: Optional[str] = None  # None = ~/.cache/dsco/minimax


def minimax_loss(eps_pred: torch.Tensor, noise: torch.Tensor, x0_pred: torch.Tensor, y: torch.Tensor,
                 real_mem: dict[int, torch.Tensor], gen_mem: dict[int, torch.Tensor], cfg: MinimaxConfig) -> torch.Tensor:
    """MSE(eps) - lambda_r * mean_i min_j cos(x0_i, real_j) + lambda_d * mean_i max_j cos(x0_i, earlier_j), per class."""
    loss = F.mse_loss(eps_pred, noise)
    e = F.normalize(x0_pred.flatten(1), dim=1)
    rep, div = [], []
    for label in y.unique().tolist():
        ei = e[y == label]
        if label in real_mem and len(real_mem[label]):
            rep.append((ei @ real_mem[label].T).min(1).values)
        if label in gen_mem and len(gen_mem[label]):
            div.append((ei @ gen_mem[label].T).max(1).values)
    if rep:
        loss = loss - cfg.representativeness * torch.cat(rep).mean()
    if div:
        loss = loss + cfg.diversity * torch.cat(div).mean()
    return loss


def _remember(mem: dict[int, torch.Tensor], emb: torch.Tensor, y: torch.Tensor, size: int) -> None:
    """Keep the newest `size` embeddings of each class (detached: the memory is a constant to the loss)."""
    emb = emb.detach()
    for label in y.unique().tolist():
        mem[label] = torch.cat([emb[y == label], mem.get(label, emb[:0])])[:size]


def fine_tune(backend: DiffusionBackend, data: torch.Tensor, labels: torch.Tensor, cfg: MinimaxConfig,
              generator: torch.Generator) -> tuple[torch.nn.Module, list[float]]:
    """A fine-tuned copy of the backend's denoiser on (model-space data, model labels), and the loss per step."""
    dev = device_of(backend)
    net = copy.deepcopy(backend.denoiser).train().requires_grad_(True)
    tuned = backend.with_denoiser(net)
    net.train().requires_grad_(True)  # with_denoiser freezes its module for sampling; this copy trains
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    abar = backend.schedule.alphas_cumprod.to(torch.float32)
    real_mem: dict[int, torch.Tensor] = {}
    gen_mem: dict[int, torch.Tensor] = {}
    losses = []
    for _ in range(cfg.steps):
        idx = torch.randint(len(data), (min(cfg.batch_size, len(data)),), generator=generator)
        x0, y = data[idx].to(dev), labels[idx].to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        t = torch.randint(len(abar), (len(x0),), generator=generator)
        a = abar[t].view(-1, *[1] * (x0.dim() - 1)).to(dev)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps = tuned.train_eps(x_t, t.to(dev), y)
        x0_pred = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        _remember(real_mem, F.normalize(x0.flatten(1), dim=1), y, cfg.memory)
        loss = minimax_loss(eps, noise, x0_pred, y, real_mem, gen_mem, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _remember(gen_mem, F.normalize(x0_pred.flatten(1), dim=1), y, cfg.memory)
        losses.append(loss.item())
    return net.eval().requires_grad_(False), losses


def cache_key(backend: DiffusionBackend, data: torch.Tensor, labels: torch.Tensor, cfg: MinimaxConfig, seed: int) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k != "cache"}
    return content_key(backend.denoiser, [data, labels], {**settings, "seed": seed})


def tuned_backend(backend: DiffusionBackend, data: torch.Tensor, labels: torch.Tensor, cfg: MinimaxConfig,
                  seed: int) -> tuple[DiffusionBackend, dict]:
    """The backend around the fine-tuned denoiser, from the cache or fine-tuned now and cached, and the
    fine-tuning's seconds (as `reused_seconds` when read from the cache)."""
    path = cache_dir("minimax", cfg.cache) / f"{cache_key(backend, data, labels, cfg, seed)}.safetensors"
    net = copy.deepcopy(backend.denoiser)
    if path.is_file():
        weights, seconds = read_entry(path)
        net.load_state_dict(weights)
        return backend.with_denoiser(net), {"fine_tune_cached": True, "reused_seconds": seconds}
    t0 = time.perf_counter()
    net, _ = fine_tune(backend, data, labels, cfg, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    write_entry(path, net.state_dict(), seconds)
    return backend.with_denoiser(net), {"fine_tune_cached": False, "fine_tune_seconds": seconds}


@register
class Minimax(Method):
    name = "minimax"
    uses_model = True
    config_fields = ("minimax",)

    def synthesise(self, task: ClassTask) -> ClassOutput:
        if "tuned" not in task.shared:  # one fine-tuning per run, on every class
            data = [task.targets_of(c) for c in range(task.num_classes)]
            labels = torch.cat([torch.full((len(d),), task.model_labels[c]) for c, d in enumerate(data)])
            tuned, info = tuned_backend(task.backend, torch.cat(data), labels, task.cfg.minimax, task.cfg.seed)
            task.shared["tuned"] = tuned
        else:  # the fine-tuning (and its cost) is recorded with the first class
            tuned, info = task.shared["tuned"], {}
        return synthetic_output(tuned, plain_sample(tuned, task.model_label, task.n, task.generator), info)
