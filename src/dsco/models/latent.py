"""The paper's model: DiT (diffusers `DiTTransformer2DModel`) in the SD-VAE latent space, as a backend.

Loads a diffusers-format directory (what `DiTPipeline.save_pretrained` writes), a hub id when
online, or an original DiT checkpoint file (`DiT-XL-2-256x256.pt`), converted on load. Sampling is
DiT's: 1000 training steps respaced to 50 (DiT's `space_timesteps`), ancestral DDPM with the
learned-range variance, classifier-free guidance with the null class `num_classes`.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Optional

import torch
from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel, DDPMScheduler
from safetensors.torch import load_file

from ..errors import DscoError
from ..fsio import staging_dir
from ..parallel import local_device
from .diffusion import RespacedSchedule, guided

VAE_SCALE = 0.18215  # SD-VAE latent scale used by DiT
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
DEFAULT_GUIDANCE = 4.0
DIT_GUIDED_CHANNELS = 3  # DiT's forward_with_cfg guides eps[:, :3] only, whatever the latent's channels
DIT_LAYER_NORM_EPS = 1e-6  # every LayerNorm in DiT's models.py
HEADS_BY_WIDTH = {1152: 16, 1024: 16, 768: 12, 384: 6}  # DiT-XL, -L, -B, -S
EMBEDDINGS = ("dit", "diffusers")


def dit_timesteps(num_train: int, num_steps: int) -> tuple[int, ...]:
    """DiT's `space_timesteps(T, "S")` (one section), descending: a fractional stride (T-1)/(S-1)
    accumulated from 0 and rounded at each step with Python's round (ties to even); S = 1 keeps step 0."""
    if not 1 <= num_steps <= num_train:
        raise DscoError(f"sampling steps must be in 1..{num_train}, got {num_steps}")
    stride = 1.0 if num_steps == 1 else (num_train - 1) / (num_steps - 1)
    taken, position = set(), 0.0
    for _ in range(num_steps):
        taken.add(round(position))
        position += stride
    return tuple(sorted(taken, reverse=True))


def alphas_cumprod_from(config: dict) -> torch.Tensor:
    """Cumulative alphas (float64) from a diffusers scheduler config; DiT's linear 1e-4..0.02 by default."""
    t = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        betas = torch.linspace(start, end, t, dtype=torch.float64)
    else:
        sched = DDPMScheduler(num_train_timesteps=t, beta_schedule=kind, beta_start=start, beta_end=end)
        betas = sched.betas.to(torch.float64)
    return torch.cumprod(1 - betas, 0)


# ---- the original DiT checkpoint format ---------------------------------------------------------

def _depth(state: dict[str, torch.Tensor]) -> int:
    idx = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if not idx:
        raise DscoError("not a DiT checkpoint: no 'blocks.N.*' keys")
    return max(idx) + 1


def dit_config_from_checkpoint(state: dict[str, torch.Tensor], num_heads: Optional[int] = None, latent_size: Optional[int] = None) -> dict:
    """The `DiTTransformer2DModel` config an original DiT state dict implies (heads from the width)."""
    try:
        proj = state["x_embedder.proj.weight"]
        table = state["y_embedder.embedding_table.weight"]
        final = state["final_layer.linear.weight"]
    except KeyError as e:
        raise DscoError(f"not a DiT checkpoint: key {e.args[0]!r} missing") from None
    hidden, in_ch, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    heads = num_heads or HEADS_BY_WIDTH.get(hidden)
    if heads is None:
        known = ", ".join(str(w) for w in sorted(HEADS_BY_WIDTH))
        raise DscoError(f"DiT width {hidden} is not a DiT-S/B/L/XL width ({known}): pass --num-heads")
    if hidden % heads:
        raise DscoError(f"DiT width {hidden} is not divisible by {heads} heads")
    if latent_size is None:
        n = state["pos_embed"].shape[1] if "pos_embed" in state else 256
        latent_size = int(math.isqrt(n)) * patch
    return {
        "num_attention_heads": heads, "attention_head_dim": hidden // heads, "in_channels": in_ch,
        "out_channels": final.shape[0] // (patch * patch), "num_layers": _depth(state),
        "sample_size": latent_size, "patch_size": patch, "num_embeds_ada_norm": table.shape[0] - 1,
    }


def convert_dit_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an original DiT state dict onto diffusers' names; every source key must be used.

    The timestep and class embedders are shared in DiT and per block in diffusers, so they are
    copied into each block; qkv is split into q, k, v; `pos_embed` is the fixed sin-cos table
    that diffusers recomputes, so it is checked for shape only.
    """
    used: set[str] = {"pos_embed"} & state.keys()
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise DscoError(f"DiT checkpoint is missing key {key!r}")
        used.add(key)
        return state[key]

    def linear(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = take(f"{src}.weight"), take(f"{src}.bias")

    linear("pos_embed.proj", "x_embedder.proj")
    for i in range(_depth(state)):
        b, s = f"transformer_blocks.{i}", f"blocks.{i}"
        linear(f"{b}.norm1.emb.timestep_embedder.linear_1", "t_embedder.mlp.0")
        linear(f"{b}.norm1.emb.timestep_embedder.linear_2", "t_embedder.mlp.2")
        out[f"{b}.norm1.emb.class_embedder.embedding_table.weight"] = take("y_embedder.embedding_table.weight")
        linear(f"{b}.norm1.linear", f"{s}.adaLN_modulation.1")
        for name, w, bias in zip(("to_q", "to_k", "to_v"), take(f"{s}.attn.qkv.weight").chunk(3), take(f"{s}.attn.qkv.bias").chunk(3)):
            out[f"{b}.attn1.{name}.weight"], out[f"{b}.attn1.{name}.bias"] = w.clone(), bias.clone()
        linear(f"{b}.attn1.to_out.0", f"{s}.attn.proj")
        linear(f"{b}.ff.net.0.proj", f"{s}.mlp.fc1")
        linear(f"{b}.ff.net.2", f"{s}.mlp.fc2")
    linear("proj_out_1", "final_layer.adaLN_modulation.1")
    linear("proj_out_2", "final_layer.linear")
    unused = sorted(state.keys() - used)
    if unused:
        raise DscoError(f"DiT checkpoint has {len(unused)} key(s) the converter does not know, e.g. {unused[0]!r}")
    return out


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights only: no pickled code runs)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise DscoError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from e
    if isinstance(obj, dict) and any(k in obj for k in ("ema", "model")) and not any(k.startswith("blocks.") for k in obj):
        obj = obj.get("ema") or obj["model"]  # DiT training checkpoints hold {"model", "ema", "opt"}
    if not isinstance(obj, dict):
        raise DscoError(f"checkpoint {path} is not a state dict")
    return obj


def transformer_from_checkpoint(path: Path, num_heads: Optional[int] = None) -> DiTTransformer2DModel:
    state = read_checkpoint(path)
    model = DiTTransformer2DModel(**dit_config_from_checkpoint(state, num_heads))
    try:
        model.load_state_dict(convert_dit_checkpoint(state), strict=True)
    except RuntimeError as e:
        raise DscoError(f"DiT checkpoint {path} does not fit the architecture its shapes imply: {str(e).splitlines()[1].strip()}") from e
    return model


# ---- loading and saving -------------------------------------------------------------------

def is_dit_source(source: str | Path) -> bool:
    """A diffusers DiT directory, an original checkpoint file, or (not a local path) a hub id."""
    p = Path(source)
    if p.is_dir():
        return (p / "transformer").is_dir()
    if p.is_file():
        return p.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
    return "/" in str(source) and not str(source).startswith((".", "/"))


def _from_pretrained(cls, source: str, subfolder: Optional[str], what: str):
    try:
        return cls.from_pretrained(source, subfolder=subfolder) if subfolder else cls.from_pretrained(source)
    except (OSError, ValueError, EnvironmentError) as e:
        where = "directory" if Path(source).exists() else "hub id (needs internet, or pass a local directory)"
        raise DscoError(f"cannot load the {what} from {where} {source}: {str(e).splitlines()[0]}") from e


def load_vae(source: str) -> AutoencoderKL:
    """An AutoencoderKL from its own directory or hub id, or from a pipeline directory's vae/."""
    return _from_pretrained(AutoencoderKL, source, "vae" if (Path(source) / "vae").is_dir() else None, "VAE")


def load_dit(source: str | Path, vae: Optional[str] = None, num_heads: Optional[int] = None):
    """(transformer, vae, alphas_cumprod, id2label) from a DiT directory, hub id or checkpoint file."""
    p = Path(source)
    id2label: dict[int, str] = {}
    sched_cfg: dict = {}
    if p.is_file():
        transformer = transformer_from_checkpoint(p, num_heads)
        vae_model = load_vae(vae or DEFAULT_VAE)
    else:
        src = str(source)
        if not p.exists() and not is_dit_source(src):
            raise DscoError(f"model path {source} does not exist")
        transformer = _from_pretrained(DiTTransformer2DModel, src, "transformer", "DiT transformer")
        vae_model = load_vae(vae) if vae else _from_pretrained(AutoencoderKL, src, "vae", "VAE")
        if p.is_dir():
            if (p / "scheduler" / "scheduler_config.json").is_file():
                sched_cfg = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
            index = json.loads((p / "model_index.json").read_text()) if (p / "model_index.json").is_file() else {}
            id2label = {int(k): v for k, v in (index.get("id2label") or {}).items()}
    return transformer.eval().requires_grad_(False), vae_model.eval().requires_grad_(False), alphas_cumprod_from(sched_cfg), id2label


def save_dit(transformer: DiTTransformer2DModel, vae: AutoencoderKL, out: str | Path) -> None:
    """Write a diffusers-format DiT directory (`DiTPipeline.save_pretrained`) atomically."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    with staging_dir(Path(out)) as tmp:
        DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(str(tmp))


# ---- the backend --------------------------------------------------------------------------

def set_embedding_constants(transformer: DiTTransformer2DModel, embedding: str = "dit") -> None:
    """Make diffusers' DiT module compute DiT's function (`embedding="dit"`), or diffusers' own ("diffusers").

    Two constants differ, and the weights are the same either way: DiT's `TimestepEmbedder.timestep_embedding`
    uses frequencies exp(-ln(10^4) * i / half) (diffusers' `Timesteps(downscale_freq_shift=1)` divides by
    half - 1), and DiT's pre-MLP `norm2` is LayerNorm(eps=1e-6) where diffusers' `norm3` takes `norm_eps` (1e-5).
    """
    if embedding not in EMBEDDINGS:
        raise DscoError(f"unknown DiT embedding {embedding!r}: valid names are {', '.join(EMBEDDINGS)}")
    dit = embedding == "dit"
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0 if dit else 1
        block.norm3.eps = DIT_LAYER_NORM_EPS if dit else float(transformer.config.norm_eps)


class LatentBackend:
    """DiT + VAE as a `DiffusionBackend`: model space = VAE latents x 0.18215."""

    kind = "latent"

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        vae: AutoencoderKL,
        alphas_cumprod: torch.Tensor,
        num_steps: int = 50,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_channels: Optional[int] = None,
        bf16: bool = False,
        device: Optional[str | torch.device] = None,
        id2label: Optional[dict[int, str]] = None,
        vae_batch: Optional[int] = None,
        embedding: str = "dit",
        compile: bool = False,
    ):
        """`guidance_channels` None = DiT's 3; `embedding` "dit" sets the module to DiT's constants (in place);
        `bf16`: the transformer and the VAE's decoder under bf16 autocast (encoding stays fp32: cached latents are
        exact); `vae_batch`: images per VAE call (default 16 on a CPU, 64 on a GPU); `compile`: sample through
        torch.compile of the transformer (fine-tuning a copy, `train_output`, uses the plain module)."""
        cfg = transformer.config
        set_embedding_constants(transformer, embedding)
        self.device = torch.device(device) if device else local_device()
        # eval() matters: in training mode DiT drops class labels at random (its CFG training)
        self.transformer = transformer.to(self.device).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.compiled = compile
        self._net = torch.compile(self.transformer) if compile else self.transformer
        self.guidance, self.bf16 = guidance, bf16
        self.vae_batch = vae_batch or (64 if self.device.type == "cuda" else 16)
        self.num_classes = int(cfg.num_embeds_ada_norm)
        self.channels = int(cfg.in_channels)
        self.guidance_channels = min(guidance_channels or DIT_GUIDED_CHANNELS, self.channels)
        self.learned_sigma = int(cfg.out_channels or cfg.in_channels) == 2 * self.channels
        self.sample_shape = (self.channels, int(cfg.sample_size), int(cfg.sample_size))
        self.image_size = int(cfg.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_shape = (int(vae.config.in_channels), self.image_size, self.image_size)
        if int(vae.config.latent_channels) != self.channels:
            raise DscoError(f"the VAE makes {vae.config.latent_channels}-channel latents but the DiT takes {self.channels}")
        self.schedule = RespacedSchedule(alphas_cumprod, dit_timesteps(len(alphas_cumprod), num_steps))
        self.timesteps = list(self.schedule.timesteps)
        self.id2label = id2label or {}
        self.class_names: list[str] = []  # DiT-XL/2's labels are ImageNet's (dsco.data.imagenet)

    @classmethod
    def load(cls, source: str | Path, num_steps: int = 50, guidance: float = DEFAULT_GUIDANCE, vae: Optional[str] = None,
             num_heads: Optional[int] = None, **kw) -> "LatentBackend":
        transformer, vae_model, abar, id2label = load_dit(source, vae, num_heads)
        return cls(transformer, vae_model, abar, num_steps, guidance, id2label=id2label, **kw)

    def _forward(self, x: torch.Tensor, t: int, y: torch.Tensor, grad: bool = False) -> torch.Tensor:
        tt = torch.full((len(x),), t, dtype=torch.long, device=self.device)
        with torch.set_grad_enabled(grad), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._net(x, timestep=tt, class_labels=y).sample.float()

    def model_output(self, x_t: torch.Tensor, t: int, y: torch.Tensor, grad: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Guided eps (the first `guidance_channels` guided, the rest the conditional branch's, as DiT's
        forward_with_cfg) and, with a learned sigma, the conditional branch's variance values v."""
        n, c, gc = len(x_t), self.channels, self.guidance_channels
        y = y.to(self.device)
        if self.guidance == 1.0:
            out = self._forward(x_t, t, y, grad)
            return out[:, :c], (out[:, c:] if self.learned_sigma else None)
        out = self._forward(torch.cat([x_t, x_t]), t, torch.cat([y, torch.full_like(y, self.num_classes)]), grad)
        cond, uncond = out[:n, :c], out[n:, :c]
        eps = torch.cat([guided(cond[:, :gc], uncond[:, :gc], self.guidance), cond[:, gc:]], 1)
        return eps, (out[:n, c:] if self.learned_sigma else None)

    def eps(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        return self.model_output(x_t, t, y)[0]

    def eps_with_grad(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        return self.model_output(x_t.to(self.device), t, y, grad=True)[0]

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.transformer

    def with_denoiser(self, module: torch.nn.Module) -> "LatentBackend":
        """The same sampler around another transformer of the same architecture (a fine-tuned copy)."""
        other = copy.copy(self)
        other.transformer = module.to(self.device).eval().requires_grad_(False)
        other._net = torch.compile(other.transformer) if self.compiled else other.transformer
        return other

    def train_output(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The transformer's unguided output with gradients, per-sample timesteps: (eps, learned-range values v or
        None), for fine-tuning with DiT's loss (the MSE on eps plus the variational bound on v)."""
        out = self.transformer(x_t.to(self.device), timestep=t.to(self.device), class_labels=y.to(self.device)).sample
        return out[:, : self.channels], (out[:, self.channels :] if self.learned_sigma else None)

    def mean_sigma(self, x_t: torch.Tensor, t: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps, v = self.model_output(x_t, t, y)
        mu, sigma = self.schedule.posterior(x_t, eps, t, clip=None)
        if v is None or float(sigma) == 0.0:
            return mu, sigma
        beta, post_var = self.schedule.step_variances(t)
        frac = (v + 1) / 2  # DiT's learned range between the posterior variance and beta, v unclamped as in DiT
        log_var = frac * math.log(beta) + (1 - frac) * math.log(post_var)
        return mu, torch.exp(0.5 * log_var)

    def q_sample(self, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        return self.schedule.q_sample(z0, t, noise)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> latent means x 0.18215 (deterministic, so the on-disk cache is exact)."""
        out = []
        for i in range(0, len(images), self.vae_batch):
            x = images[i : i + self.vae_batch].to(self.device) * 2 - 1
            out.append(self.vae.encode(x).latent_dist.mean.float() * VAE_SCALE)
        return torch.cat(out).cpu()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decode_with_grad(z[i : i + self.vae_batch]).cpu() for i in range(0, len(z), self.vae_batch)])

    def target_cache_key(self) -> str:
        """The VAE's weights (the latents of real images are cached on disk, keyed by it)."""
        from ..cache import module_digest

        return module_digest(self.vae)[:16]

    def decode_with_grad(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1] on the backend's device, differentiable (guidance through the VAE)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            x = self.vae.decode(z.to(self.device) / VAE_SCALE).sample.float()
        return ((x + 1) / 2).clamp(0, 1)
