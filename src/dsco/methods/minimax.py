"""MinimaxDiffusion (Gu et al., CVPR 2024): fine-tune the diffusion model on the real data with, besides DiT's
denoising loss, a representativeness term (raise the lowest similarity between a class's predictions and its real
samples) and a diversity term (lower the highest similarity to the class's earlier predictions), then sample
plainly from the EMA weights. The fine-tuned weights are cached, keyed by the base weights, the data and the settings.

As the original (vimar-gu/MinimaxDiffusion `train_dit.py`): only DiffFit's parameters train (every bias, the
normalisation scales, the class embedding, and on a DiT the DiffFit scale factors gamma of the first half of the
blocks), AdamW lr 1e-3 without weight decay, 8 epochs at batch 8, EMA 0.9999 sampled from, 10 % of labels dropped
to the null class, DiT's variational-bound term kept where the model learns its variance; per class in the batch, the
single least similar pair (prediction, real memory) and most similar pair (prediction, generated memory) are scored,
averaged over the batch's classes, switched on once the class has generated embeddings in memory, and both
memories take the batch after the loss. On a diffusers DiT, whose blocks each hold a copy of the class and timestep
embedders, the copies are tied into the original's one table. Ours: the real latents are the cached VAE means,
without the original's horizontal flip and posterior sampling."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..cache import cache_dir, cached, content_key
from ..errors import DscoError
from ..models.diffusion import DiffusionBackend, device_of, plain_samples
from .base import BatchedMethod, ClassOutput, ClassTask, register, synthetic_output

TRAINABLE = ("difffit", "all")


@dataclass
class MinimaxConfig:
    epochs: int = field(default=8, metadata={
        "help": "fine-tuning passes over the real train split at batch 8 (the original: 8 epochs of ImageWoof; cached per model, data and settings)"})
    batch_size: int = field(default=8, metadata={"help": "fine-tuning batch size"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    ema: float = field(default=0.9999, metadata={"help": "EMA decay of the weights sampled from (0 = the raw weights)"})
    label_dropout: float = field(default=0.1, metadata={
        "help": "share of labels replaced by the null class (classifier-free guidance training)"})
    trainable: str = field(default="difffit", metadata={
        "help": "difffit (the original's parameter set) or all", "choices": ("difffit", "all")})
    representativeness: float = field(default=0.002, metadata={
        "help": "lambda_r, the representativeness term's weight"})
    diversity: float = field(default=0.008, metadata={"help": "lambda_d, the diversity term's weight"})
    memory: int = field(default=64, metadata={"help": "embeddings kept per class for each of the two terms"})
    cache: Optional[str] = field(default=None, metadata={"help": "fine-tuned weights (default ~/.cache/dsco/minimax)"})


class Scaled(torch.nn.Module):
    """A module's output times a learned per-channel factor starting at one (DiffFit's gamma)."""

    def __init__(self, inner: torch.nn.Module, size: int):
        super().__init__()
        self.inner = inner
        self.gamma = torch.nn.Parameter(torch.ones(size))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.inner(*args, **kwargs) * self.gamma


def prepare_difffit(net: torch.nn.Module) -> torch.nn.Module:
    """In place, on a diffusers DiT (a module with `transformer_blocks`): tie every block's class and timestep
    embedder to the first block's (the original's one table), and add DiffFit's gammas to the first half of the
    blocks: on the attention's q, k, v outputs (gamma1, 3 x width), on its output projection (gamma2) and on the two
    residual branches (the block's gamma1 and gamma2, per-channel like the gate they multiply). Other models are
    left as they are."""
    blocks = getattr(net, "transformer_blocks", None)
    if blocks is None:
        return net
    shared = blocks[0].norm1.emb
    for block in blocks:
        block.norm1.emb = shared
    for block in list(blocks)[: len(blocks) // 2]:
        attn, width = block.attn1, block.attn1.to_q.out_features
        attn.to_q, attn.to_k, attn.to_v = (Scaled(m, width) for m in (attn.to_q, attn.to_k, attn.to_v))
        attn.to_out[0] = Scaled(Scaled(attn.to_out[0], width), width)  # attention gamma2, then the block's gamma1
        block.ff.net[-1] = Scaled(block.ff.net[-1], width)  # the block's gamma2 on the MLP branch
    return net


def difffit_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    """DiffFit's trainable set: every bias, the normalisation layers' scales, the class embedding tables and the
    gammas (each shared tensor once)."""
    chosen: dict[int, torch.nn.Parameter] = {}
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            norm = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)) and name == "weight"
            if name in ("bias", "gamma") or norm or isinstance(module, torch.nn.Embedding):
                chosen[id(p)] = p
    return list(chosen.values())


def minimax_terms(x0_pred: torch.Tensor, y: torch.Tensor, real_mem: dict[int, torch.Tensor],
                  gen_mem: dict[int, torch.Tensor], cfg: MinimaxConfig) -> torch.Tensor:
    """Per class c of the batch with generated embeddings in memory: lambda_r x (1 - min cos(pred_c, real_c)) +
    lambda_d x max cos(pred_c, generated_c), each over the whole predictions-by-memory matrix; summed and divided by
    the number of classes in the batch."""
    e = F.normalize(x0_pred.flatten(1), dim=1)
    labels = y.unique().tolist()
    total = e.new_zeros(())
    for label in labels:
        if label not in gen_mem or not len(gen_mem[label]):
            continue
        ei = e[y == label]
        if label in real_mem and len(real_mem[label]):
            total = total + cfg.representativeness * (1 - (ei @ real_mem[label].T).min())
        total = total + cfg.diversity * (ei @ gen_mem[label].T).max()
    return total / len(labels)


def _remember(mem: dict[int, torch.Tensor], emb: torch.Tensor, y: torch.Tensor, size: int) -> None:
    """Keep the newest `size` embeddings of each class, normalised and detached (a constant to the loss)."""
    emb = F.normalize(emb.detach().flatten(1), dim=1)
    for label in y.unique().tolist():
        mem[label] = torch.cat([emb[y == label], mem.get(label, emb[:0])])[:size]


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of data discretised to 256 bins on [-1, 1] under N(mean, exp(log_scale)^2) (DDPM's decoder term)."""
    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centred + 1 / 255))
    cdf_min = approx_standard_normal_cdf(inv_std * (centred - 1 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_term(abar: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
            v: torch.Tensor) -> torch.Tensor:
    """DiT's variational-bound term per sample, in bits per dimension, on the full training chain: the KL from the
    true posterior q(x_{t-1} | x_t, x0) to the model's step whose mean comes from the detached eps (so only the
    learned-range variance v learns from it), and at t = 0 the decoder's negative log-likelihood."""
    abar = abar.to(x0.device, torch.float64)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev
    post_var = beta * (1 - abar_prev) / (1 - abar)
    post_log_var = torch.cat([post_var[1:2], post_var[1:]]).log()  # DiT's clipped log variance
    shape = (-1, *[1] * (x0.dim() - 1))

    def at(a: torch.Tensor) -> torch.Tensor:
        return a[t].float().view(shape)

    c0, ct = at(abar_prev.sqrt() * beta / (1 - abar)), at((1 - beta).sqrt() * (1 - abar_prev) / (1 - abar))
    true_mean, true_log_var = c0 * x0 + ct * x_t, at(post_log_var)
    x0_pred = (x_t - at((1 - abar).sqrt()) * eps.detach()) / at(abar.sqrt())
    model_mean = c0 * x0_pred + ct * x_t
    frac = (v + 1) / 2
    model_log_var = frac * at(beta.log()) + (1 - frac) * true_log_var
    kl = 0.5 * (-1 + model_log_var - true_log_var + torch.exp(true_log_var - model_log_var)
                + (true_mean - model_mean).pow(2) * torch.exp(-model_log_var))
    kl = kl.flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t.to(kl.device) == 0, nll, kl)


def fine_tune(backend: DiffusionBackend, data: torch.Tensor, labels: torch.Tensor, cfg: MinimaxConfig,
              generator: torch.Generator) -> tuple[torch.nn.Module, list[float]]:
    """The EMA (or, at ema 0, the raw weights) of a fine-tuned copy of the backend's denoiser on (model-space data,
    model labels), and the loss per step. The copy runs in eval mode: label dropout is drawn here, once per sample,
    from `generator`, as the original's one embedding table does."""
    if cfg.trainable not in TRAINABLE:
        raise DscoError(f"unknown Minimax trainable set {cfg.trainable!r}: valid names are {', '.join(TRAINABLE)}")
    dev = device_of(backend)
    net = copy.deepcopy(backend.denoiser)
    if cfg.trainable == "difffit":
        prepare_difffit(net)
    tuned = backend.with_denoiser(net)  # frozen and in eval mode: only the chosen parameters learn
    params = difffit_parameters(net) if cfg.trainable == "difffit" else list(net.parameters())
    for p in params:
        p.requires_grad_(True)
    ema = copy.deepcopy(net).requires_grad_(False) if cfg.ema else net
    ema_params = dict(zip((id(p) for p in net.parameters()), ema.parameters()))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    abar = backend.schedule.alphas_cumprod
    a_all = abar.to(torch.float32)
    real_mem: dict[int, torch.Tensor] = {}
    gen_mem: dict[int, torch.Tensor] = {}
    bs = min(cfg.batch_size, len(data))
    losses = []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(data), generator=generator)
        for i in range(0, len(order) - bs + 1, bs):  # drop_last, as the original's loader
            idx = order[i : i + bs]
            x0, y = data[idx].to(dev), labels[idx].to(dev)
            noise = torch.randn(x0.shape, generator=generator).to(dev)
            t = torch.randint(len(a_all), (len(x0),), generator=generator)
            drop = torch.rand(len(x0), generator=generator) < cfg.label_dropout
            y_in = torch.where(drop.to(dev), torch.full_like(y, backend.num_classes), y)
            a = a_all[t].view(-1, *[1] * (x0.dim() - 1)).to(dev)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            eps, v = tuned.train_output(x_t, t.to(dev), y_in)
            per_sample = (eps - noise).pow(2).flatten(1).mean(1)
            if v is not None:
                per_sample = per_sample + vb_term(abar, x0, x_t, t.to(dev), eps, v)
            x0_pred = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
            loss = per_sample.mean() + minimax_terms(x0_pred, y, real_mem, gen_mem, cfg)
            _remember(real_mem, x0, y, cfg.memory)
            _remember(gen_mem, x0_pred, y, cfg.memory)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.ema:
                with torch.no_grad():
                    for p in params:
                        ema_params[id(p)].mul_(cfg.ema).add_(p.detach(), alpha=1 - cfg.ema)
            losses.append(loss.item())
    if not losses:
        raise DscoError(f"Minimax: {len(data)} real samples make no batch of {bs}")
    return ema.eval().requires_grad_(False), losses


def cache_key(backend: DiffusionBackend, data: torch.Tensor, labels: torch.Tensor, cfg: MinimaxConfig, seed: int) -> str:
    settings = {k: v for k, v in asdict(cfg).items() if k != "cache"}
    return content_key(backend.denoiser, [data, labels], {**settings, "seed": seed})


def tuned_backend(backend: DiffusionBackend, data: torch.Tensor, labels: torch.Tensor, cfg: MinimaxConfig,
                  seed: int) -> tuple[DiffusionBackend, dict]:
    """The backend around the fine-tuned denoiser, from the cache or fine-tuned now and cached, and the
    fine-tuning's seconds (as `reused_seconds` when read from the cache)."""
    path = cache_dir("minimax", cfg.cache) / f"{cache_key(backend, data, labels, cfg, seed)}.safetensors"
    weights, seconds, was_cached = cached(path, lambda: fine_tune(backend, data, labels, cfg, torch.Generator().manual_seed(seed))[0].state_dict())
    net = copy.deepcopy(backend.denoiser)
    if cfg.trainable == "difffit":
        prepare_difffit(net)
    net.load_state_dict(weights)
    info = {"fine_tune_cached": True, "reused_seconds": seconds} if was_cached else {"fine_tune_cached": False, "fine_tune_seconds": seconds}
    return backend.with_denoiser(net), info


@register
class Minimax(BatchedMethod):
    name = "minimax"
    uses_model = True
    config_fields = ("minimax",)
    options, title = MinimaxConfig, "MinimaxDiffusion: the model fine-tuned with minimax terms"

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        """Plain sampling of the fine-tuned model, several classes in one batch (--class-batch)."""
        task = tasks[0]
        if "tuned" not in task.shared:  # one fine-tuning per run, on every class
            data = [task.targets_of(c) for c in range(task.num_classes)]
            labels = torch.cat([torch.full((len(d),), task.model_labels[c]) for c, d in enumerate(data)])
            tuned, info = tuned_backend(task.backend, torch.cat(data), labels, task.cfg.minimax, task.cfg.seed)
            task.shared["tuned"] = tuned
        else:  # the fine-tuning (and its cost) is recorded with the first class
            tuned, info = task.shared["tuned"], {}
        zs = plain_samples(tuned, [t.model_label for t in tasks], task.n, [t.generator for t in tasks])
        return [synthetic_output(tuned, z, info if k == 0 else {}) for k, z in enumerate(zs)]
