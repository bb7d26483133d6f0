"""Content-keyed caches of expensive, deterministic intermediate results (a fine-tuned denoiser, a class's
inverted statistics): keyed by the bytes of the weights and data they came from and by the settings, so a
changed model, data split or knob never reuses a stale entry."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save

from .fsio import atomic_write_bytes


def cache_dir(kind: str, override: Optional[str] = None) -> Path:
    """`override`, or ~/.cache/dsco/<kind>."""
    return Path(override) if override else Path.home() / ".cache" / "dsco" / kind


def content_key(module: torch.nn.Module, tensors: list[torch.Tensor], settings: dict[str, Any]) -> str:
    """A short digest of a module's weights, some tensors and JSON-able settings."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def write_entry(path: Path, tensors: dict[str, torch.Tensor], seconds: float) -> None:
    """Store a cache entry and the seconds its computation took (so a later reader can count that work)."""
    # cloned: a module with tied weights (a fine-tuned DiT's shared embedder) holds one tensor under several keys
    atomic_write_bytes(path, save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()},
                                  metadata={"seconds": repr(float(seconds))}))


def read_entry(path: Path) -> tuple[dict[str, torch.Tensor], float]:
    """A cache entry's tensors and the seconds its computation took, in one read."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, float((f.metadata() or {}).get("seconds", 0.0))
