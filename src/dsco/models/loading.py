"""Pick the backend for a `--model` source: the pixel model's directory or a DiT (dir, checkpoint, hub id)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import DscoError
from .diffusion import DiffusionBackend


def is_pixel_model(source: str | Path) -> bool:
    from .pixel import FORMAT

    cfg = Path(source) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("format") == FORMAT


def default_guidance(source: str | Path) -> float:
    """The model family's guidance scale: 2.0 for our pixel models, DiT's 4.0 otherwise."""
    from .latent import DEFAULT_GUIDANCE

    return 2.0 if is_pixel_model(source) else DEFAULT_GUIDANCE


def load_backend(
    source: str | Path,
    num_steps: int = 50,
    guidance: Optional[float] = None,
    *,
    vae: Optional[str] = None,
    bf16: bool = False,
    guidance_channels: Optional[int] = None,
    device: Optional[str] = None,
    num_heads: Optional[int] = None,
    embedding: str = "dit",
    compile: bool = False,
) -> DiffusionBackend:
    """A pixel model directory -> PixelBackend; a DiT directory, checkpoint file or hub id -> LatentBackend."""
    from .latent import LatentBackend, is_dit_source
    from .pixel import PixelBackend

    g = guidance if guidance is not None else default_guidance(source)
    if is_pixel_model(source):
        return PixelBackend.load(source, num_steps, g)
    if is_dit_source(source):
        return LatentBackend.load(source, num_steps, g, vae=vae, num_heads=num_heads, bf16=bf16,
                                  guidance_channels=guidance_channels, device=device, embedding=embedding,
                                  compile=compile)
    if not Path(source).exists():
        raise DscoError(f"model path {source} does not exist")
    raise DscoError(
        f"{source} is neither a dsco pixel model (config.json + model.safetensors) nor a DiT "
        "(a diffusers directory with transformer/ and vae/, or an original DiT checkpoint file)"
    )
