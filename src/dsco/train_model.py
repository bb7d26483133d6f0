"""`dsco train-model`: train the class-conditional pixel diffusion model, resumably."""
from __future__ import annotations

import json
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .data import load_dataset
from .errors import DscoError
from .fsio import atomic_write_json, staging_dir
from .models.pixel import PixelModelConfig, save_pixel_model


@dataclass
class TrainModelConfig:
    """Everything that determines a trained model; saved in its config.json."""

    dataset: str = "mnist5k"
    out: str = "runs/model"
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # so classifier-free guidance works
    seed: int = 0
    checkpoint_every: int = 500
    resume: bool = False
    data_root: str | None = None
    test_dataset: str | None = None
    model: PixelModelConfig = field(default_factory=PixelModelConfig)


def _checkpoint(out: Path) -> Path:
    return out / "checkpoint"


def recorded(config: TrainModelConfig) -> dict:
    """The config as the model records it: where it was written and whether it resumed do not define it."""
    d = asdict(config)
    d.pop("out")
    d.pop("resume")
    return d


def _save_checkpoint(out: Path, step: int, unet, ema, opt, config: TrainModelConfig, losses: list[float], seconds: float | None) -> None:
    with staging_dir(_checkpoint(out)) as tmp:
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.module.state_dict().items()}, str(tmp / "ema.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {"step": step, "config": asdict(config), "losses": losses, "train_seconds": seconds})


def train_model(config: TrainModelConfig, progress: bool = True) -> Path:
    """Train (or resume) and write `out/model.safetensors` (EMA weights) + `out/config.json`.

    Each step's batch and noise come from a generator seeded by (seed, step), so a resumed run
    sees exactly the batches an uninterrupted one would.
    """
    out = Path(config.out)
    data = load_dataset(config.dataset, "train", data_root=config.data_root)
    mc = config.model
    mc.channels, mc.num_classes, mc.class_names = data.images.shape[1], data.num_classes, list(data.class_names)
    if data.images.shape[-1] != mc.image_size:
        raise DscoError(f"dataset images are {data.images.shape[-1]}px but the model is {mc.image_size}px (--image-size)")
    torch.manual_seed(config.seed)
    unet = mc.build()
    ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    sched = mc.scheduler()
    start, losses, before = 0, [], 0.0
    ckpt = _checkpoint(out)
    if config.resume and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        unet.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        ema.module.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        try:
            opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        except pickle.UnpicklingError as e:
            raise DscoError(f"refusing {ckpt / 'optimizer.pt'}: it holds more than tensors ({str(e).splitlines()[0]})") from e
        start, losses = state["step"], state["losses"]
        before = state.get("train_seconds")  # None: a checkpoint written before training time was recorded
        ema.n_averaged.fill_(start)
    elif config.resume:
        raise DscoError(f"--resume: no checkpoint under {ckpt}")
    x_all = data.images * 2 - 1
    t0 = time.time()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train-model", disable=not progress)
    unet.train()
    for step in bar:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        idx = torch.randint(len(x_all), (config.batch_size,), generator=g)
        x0, y = x_all[idx], data.labels[idx].clone()
        y[torch.rand(len(y), generator=g) < config.label_dropout] = mc.num_classes
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(mc.num_train_timesteps, (len(x0),), generator=g)
        loss = F.mse_loss(unet(sched.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        if not torch.isfinite(loss):
            raise DscoError(f"train-model: loss became {loss.item()} at step {step}; lower --lr")
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update_parameters(unet)
        losses.append(round(loss.item(), 5))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            elapsed = None if before is None else round(before + time.time() - t0, 3)
            _save_checkpoint(out, step + 1, unet, ema, opt, config, losses, elapsed)
    total = None if before is None else round(before + time.time() - t0, 3)
    extra = {"train": recorded(config), "steps_done": max(start, config.steps), "train_seconds": total,
             "final_loss": sum(losses[-200:]) / max(1, len(losses[-200:]))}
    save_pixel_model(ema.module, mc, out / "final", extra)
    for name in ("model.safetensors", "config.json"):
        (out / "final" / name).replace(out / name)
    (out / "final").rmdir()
    return out
