"""Content-keyed caches of expensive, deterministic intermediate results (real-image latents, a fine-tuned
denoiser, a class's inverted statistics): keyed by the bytes of the weights and data they came from and by the
settings, so a changed model, data split or knob never reuses a stale entry. Nothing on disk is trusted: an entry
carries the key it was made for and a checksum of its tensors, and one that does not match (truncated, changed,
written by an older dsco) is reported on one line and recomputed."""
from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save

from .fsio import atomic_write_bytes

log = logging.getLogger(__name__)
FORMAT = "dsco-cache/1"


def cache_dir(kind: str, override: Optional[str] = None) -> Path:
    """`override`, or ~/.cache/dsco/<kind>."""
    return Path(override) if override else Path.home() / ".cache" / "dsco" / kind


_DIGESTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def module_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights, computed once per module object (a DiT-XL/2 is 2.7 GB: D3HR keys every class
    on it). The backends' denoisers are frozen; a module changed in place after it was hashed keeps its old digest."""
    if module not in _DIGESTS:
        h = hashlib.sha256()
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        _DIGESTS[module] = h.hexdigest()
    return _DIGESTS[module]


def content_key(module: torch.nn.Module, tensors: list[torch.Tensor], settings: dict[str, Any]) -> str:
    """A short digest of a module's weights, some tensors and JSON-able settings."""
    h = hashlib.sha256(module_digest(module).encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def write_entry(path: Path, tensors: dict[str, torch.Tensor], seconds: float) -> None:
    """Store a cache entry with the seconds its computation took (so a later reader can count that work), the key
    it was made for (its file name) and the checksum of its tensors."""
    # cloned: a module with tied weights (a fine-tuned DiT's shared embedder) holds one tensor under several keys
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "seconds": repr(float(seconds)), "key": path.stem, "sha256": checksum(tensors)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def read_entry(path: Path) -> Optional[tuple[dict[str, torch.Tensor], float]]:
    """A cache entry's tensors and the seconds its computation took, or None (with a one-line warning) when the
    entry is missing, unreadable, made for another key, or its tensors do not match their checksum."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own errors, OSError, ValueError...: all mean "cannot be read"
        return _damaged(path, f"unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if meta.get("format") != FORMAT or "sha256" not in meta:
        return _damaged(path, "written without a checksum (an older dsco)")
    if meta.get("key") != path.stem:
        return _damaged(path, f"made for key {meta.get('key')!r}")
    if checksum(tensors) != meta["sha256"]:
        return _damaged(path, "its content does not match its checksum")
    return tensors, float(meta.get("seconds", 0.0))


def _damaged(path: Path, why: str) -> None:
    log.warning("warning: cache entry %s is damaged (%s); recomputing it", path, why)
    return None


def cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], float, bool]:
    """(tensors, the seconds they took, whether they were read from the cache): the entry at `path` if it is sound,
    else computed now, written, and returned."""
    entry = read_entry(path)
    if entry is not None:
        return entry[0], entry[1], True
    t0 = time.perf_counter()
    tensors = compute()
    seconds = time.perf_counter() - t0
    write_entry(path, tensors, seconds)
    return tensors, seconds, False
