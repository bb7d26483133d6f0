"""`dsco train-model`: train the class-conditional pixel diffusion model, resumably."""
from __future__ import annotations

import copy
import json
import math
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
from .parallel import local_device


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
    snapshot_steps: tuple[int, ...] = ()  # also keep the EMA model at these steps (generator-quality curves)
    resume: bool = False
    device: str | None = None  # None: the GPU if there is one, else the CPU
    data_root: str | None = None
    model: PixelModelConfig = field(default_factory=PixelModelConfig)


def _checkpoint(out: Path) -> Path:
    return out / "checkpoint"


def recorded(config: TrainModelConfig) -> dict:
    """The config as the model records it: where it was written and whether it resumed do not define it."""
    d = asdict(config)
    for k in ("out", "resume", "device"):
        d.pop(k)
    return d


def _save_checkpoint(out: Path, step: int, unet, ema, opt, config: TrainModelConfig, losses: list[float], seconds: float | None) -> None:
    with staging_dir(_checkpoint(out)) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in unet.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous().cpu() for k, v in ema.module.state_dict().items()}, str(tmp / "ema.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {"step": step, "config": asdict(config), "losses": losses, "train_seconds": seconds})


def _write_model(ema, mc: PixelModelConfig, out: Path, config: TrainModelConfig, steps: int, losses: list[float], seconds: float | None) -> None:
    """The EMA weights as a loadable model directory (`out/model.safetensors` + `out/config.json`)."""
    extra = {"train": recorded(config), "steps_done": steps, "train_seconds": seconds,
             "final_loss": sum(losses[-200:]) / max(1, len(losses[-200:]))}
    unet = copy.deepcopy(ema.module).cpu()
    save_pixel_model(unet, mc, out / "final", extra)
    for name in ("model.safetensors", "config.json"):
        (out / "final" / name).replace(out / name)
    (out / "final").rmdir()


def snapshot_dir(out: str | Path, step: int) -> Path:
    """Where `--snapshot-steps` keeps the EMA model of one step."""
    return Path(out) / "snapshots" / f"step-{step:06d}"


def train_model(config: TrainModelConfig, progress: bool = True) -> Path:
    """Train (or resume) and write `out/model.safetensors` (EMA weights) + `out/config.json`.

    Each step's batch and noise come from a generator seeded by (seed, step) on the CPU, so a
    resumed run sees exactly the batches an uninterrupted one would, on any device.
    """
    out = Path(config.out)
    data = load_dataset(config.dataset, "train", data_root=config.data_root)
    mc = config.model
    mc.channels, mc.num_classes, mc.class_names = data.images.shape[1], data.num_classes, list(data.class_names)
    if data.images.shape[-1] != mc.image_size:
        raise DscoError(f"dataset images are {data.images.shape[-1]}px but the model is {mc.image_size}px (--image-size)")
    torch.manual_seed(config.seed)
    device = torch.device(config.device) if config.device else local_device()
    unet = mc.build().to(device)
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
            opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=device))
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
    pending: list[torch.Tensor] = []  # losses not yet read back: reading one each step would stall a GPU

    def flush(step: int) -> None:
        values = torch.stack(pending).tolist() if pending else []
        pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise DscoError(f"train-model: loss became {v} at step {step - len(values) + i + 1}; lower --lr")
        losses.extend(round(v, 5) for v in values)

    for step in bar:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        idx = torch.randint(len(x_all), (config.batch_size,), generator=g)
        x0, y = x_all[idx], data.labels[idx].clone()
        y[torch.rand(len(y), generator=g) < config.label_dropout] = mc.num_classes
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(mc.num_train_timesteps, (len(x0),), generator=g)
        x0, y, noise, t = x0.to(device), y.to(device), noise.to(device), t.to(device)
        loss = F.mse_loss(unet(sched.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update_parameters(unet)
        pending.append(loss.detach())
        done = step + 1
        saving = done % config.checkpoint_every == 0 or done == config.steps or done in config.snapshot_steps
        if saving or done % 20 == 0:
            flush(done)  # before anything is saved, so no checkpoint holds weights a non-finite loss touched
            bar.set_postfix(loss=f"{sum(losses[-50:]) / max(1, len(losses[-50:])):.4f}")
        elapsed = None if before is None else round(before + time.time() - t0, 3)
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_checkpoint(out, done, unet, ema, opt, config, losses, elapsed)
        if done in config.snapshot_steps:
            _write_model(ema, mc, snapshot_dir(out, done), config, done, losses, elapsed)
    total = None if before is None else round(before + time.time() - t0, 3)
    _write_model(ema, mc, out, config, max(start, config.steps), losses, total)
    return out
