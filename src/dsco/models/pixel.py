"""Class-conditional pixel diffusion model (diffusers UNet2DModel) and its backend."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from ..errors import DscoError
from ..fsio import atomic_write_json, staging_dir
from .diffusion import RespacedSchedule, guided

FORMAT = "dsco-pixel-diffusion/1"


@dataclass
class PixelModelConfig:
    """Architecture and noise schedule of the pixel model; saved as config.json."""

    image_size: int = 28
    channels: int = 1
    num_classes: int = 10
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    class_names: list[str] = field(default_factory=list)

    def build(self) -> UNet2DModel:
        levels = len(self.block_out_channels)
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if self.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        return UNet2DModel(
            sample_size=self.image_size,
            in_channels=self.channels,
            out_channels=self.channels,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            num_class_embeds=self.num_classes + 1,  # the last label is the CFG null class
            norm_num_groups=8,
        )

    def scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            timestep_spacing="trailing",
        )


def save_pixel_model(unet: UNet2DModel, config: PixelModelConfig, out: Path, extra: dict | None = None) -> None:
    """Write `out/model.safetensors` + `out/config.json` atomically."""
    with staging_dir(Path(out)) as tmp:
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "config.json", {"format": FORMAT, "model": asdict(config), **(extra or {})})


def load_pixel_model(path: str | Path) -> tuple[UNet2DModel, PixelModelConfig, dict]:
    """Load a model directory written by `save_pixel_model`; shapes are checked."""
    path = Path(path)
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise DscoError(f"model directory {path} must contain config.json and model.safetensors")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != FORMAT:
        raise DscoError(f"{cfg_path} is not a dsco pixel model (format {meta.get('format')!r})")
    model_cfg = dict(meta["model"])
    model_cfg["block_out_channels"] = tuple(model_cfg["block_out_channels"])
    config = PixelModelConfig(**model_cfg)
    unet = config.build()
    state = load_file(str(weights))
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise DscoError(f"checkpoint {weights} does not match its config: {first}") from e
    unet.eval().requires_grad_(False)
    return unet, config, meta


class PixelBackend:
    """The pixel model as a `DiffusionBackend`: model space = images scaled to [-1, 1]."""

    kind = "pixel"

    def __init__(self, unet: UNet2DModel, config: PixelModelConfig, num_steps: int = 50, guidance: float = 2.0):
        self.unet, self.config, self.guidance = unet, config, guidance
        self.num_classes = config.num_classes
        self.sample_shape = (config.channels, config.image_size, config.image_size)
        self.image_shape = self.sample_shape
        self.class_names = list(config.class_names)
        self.device = torch.device("cpu")
        self.schedule = RespacedSchedule.from_scheduler(config.scheduler(), num_steps)
        self.timesteps = list(self.schedule.timesteps)

    @classmethod
    def load(cls, path: str | Path, num_steps: int = 50, guidance: float = 2.0) -> "PixelBackend":
        unet, config, _ = load_pixel_model(path)
        return cls(unet, config, num_steps, guidance)

    @torch.no_grad()
    def eps(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        return self.eps_with_grad(x_t, t, y)

    def eps_with_grad(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        n = len(x_t)
        tt = torch.full((n,), t, dtype=torch.long)
        if self.guidance == 1.0:
            return self.unet(x_t, tt, class_labels=y).sample
        null = torch.full_like(y, self.num_classes)
        out = self.unet(torch.cat([x_t, x_t]), torch.cat([tt, tt]), class_labels=torch.cat([y, null])).sample
        return guided(out[:n], out[n:], self.guidance)

    def mean_sigma(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.schedule.posterior(x_t, self.eps(x_t, t, y), t, clip=1.0)

    def q_sample(self, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        return self.schedule.q_sample(z0, t, noise)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z + 1) / 2).clamp(0, 1)

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def target_cache_key(self) -> None:
        return None  # model space is the images themselves: nothing to cache

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    def with_denoiser(self, module: torch.nn.Module) -> "PixelBackend":
        """The same sampler around another denoiser of the same architecture (a fine-tuned copy)."""
        return PixelBackend(module.eval().requires_grad_(False), self.config, len(self.timesteps), self.guidance)

    def train_output(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The denoiser's unguided noise prediction with gradients, per-sample timesteps t (fine-tuning); its
        variance is fixed, so there are no variance values."""
        return self.unet(x_t, t, class_labels=y).sample, None
