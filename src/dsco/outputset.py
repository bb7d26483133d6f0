"""The output-set format every method writes, and `dsco verify`.

DIR/images/<class>/<00000>.png and DIR/manifest.json (format version, dataset, class names,
method, full config and seed, one entry per image with path, label, source, source index,
sha256). A run builds DIR in a work directory beside it and renames it when complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .data.imageset import ImageSet
from .errors import DscoError
from .fsio import safe_name, sha256_file, staging_dir

FORMAT = "dsco-output-set/1"
SOURCES = ("synthetic", "real")


def write_class_images(
    root: Path, class_name: str, label: int, images: torch.Tensor, sources: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Write one class's PNGs atomically into root/images/<class>/; return their manifest entries.

    `sources[i]` holds at least {"source": "synthetic"|"real"} and, for real ones, "index".
    """
    folder = safe_name(class_name)
    entries = []
    with staging_dir(root / "images" / folder) as tmp:
        for i, (img, src) in enumerate(zip(images, sources)):
            arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            name = f"{i:05d}.png"
            Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(tmp / name)
            entries.append({"path": f"images/{folder}/{name}", "label": label, **src, "sha256": sha256_file(tmp / name)})
    return entries


def _check_manifest(m: Any, where: Path) -> None:
    """Schema check before a manifest is used."""
    def bad(why: str) -> DscoError:
        return DscoError(f"invalid manifest {where}: {why}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise bad(f"format must be {FORMAT!r}")
    for key, typ in (("dataset", str), ("class_names", list), ("method", str), ("config", dict), ("images", list)):
        if not isinstance(m.get(key), typ):
            raise bad(f"field {key!r} missing or not a {typ.__name__}")
    k = len(m["class_names"])
    for e in m["images"]:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not isinstance(e.get("label"), int):
            raise bad(f"image entry {e!r} needs a string path and an integer label")
        p = Path(e["path"])
        if p.is_absolute() or ".." in p.parts or "\x00" in e["path"]:
            raise bad(f"image path {e['path']!r} leaves the output directory")
        if not 0 <= e["label"] < k or e.get("source") not in SOURCES or not isinstance(e.get("sha256"), str):
            raise bad(f"image entry {e['path']!r}: label out of range, or bad source or sha256")


def read_manifest(out: str | Path) -> dict[str, Any]:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise DscoError(f"{out} is not an output set: no manifest.json")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DscoError(f"invalid manifest {path}: not JSON ({e})") from e
    _check_manifest(m, path)
    return m


def verify(out: str | Path) -> list[str]:
    """Problems found when checking an output set against its manifest; empty when it is sound."""
    out = Path(out)
    try:
        m = read_manifest(out)
    except DscoError as e:
        return [str(e)]
    problems, listed = [], set()
    for e in m["images"]:
        f = out / e["path"]
        listed.add(f.resolve())
        if not f.is_file():
            problems.append(f"missing file {e['path']}")
        elif sha256_file(f) != e["sha256"]:
            problems.append(f"sha256 mismatch for {e['path']}")
        elif Path(e["path"]).parent.name != safe_name(m["class_names"][e["label"]]):
            problems.append(f"{e['path']} is labelled {e['label']} but lies in another class folder")
    for f in sorted((out / "images").rglob("*")) if (out / "images").is_dir() else []:
        if f.is_file() and f.resolve() not in listed:
            problems.append(f"file not in manifest: {f.relative_to(out)}")
    counts = m.get("counts")
    if counts is not None:
        actual = [sum(1 for e in m["images"] if e["label"] == c) for c in range(len(m["class_names"]))]
        if actual != counts:
            problems.append(f"per-class counts {actual} differ from the manifest's {counts}")
    return problems


def read_images(root: Path, entries: list[dict[str, Any]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The images of manifest entries under `root`, as floats in [0, 1] (or, with dtype uint8, their bytes),
    read into one preallocated tensor (no second copy of a large set)."""
    out: Optional[torch.Tensor] = None
    for i, e in enumerate(entries):
        f = Path(root) / e["path"]
        if not f.is_file():
            raise DscoError(f"output set {root}: missing file {e['path']} (run dsco verify)")
        a = np.asarray(Image.open(f))
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out is None:
            out = torch.empty((len(entries), *a.shape), dtype=dtype)
        elif tuple(a.shape) != tuple(out.shape[1:]):
            raise DscoError(f"output set {root}: {e['path']} is {tuple(a.shape)}, the set's images are {tuple(out.shape[1:])}")
        out[i] = torch.from_numpy(a.copy()) if dtype == torch.uint8 else torch.from_numpy(a.astype(np.float32) / 255.0)
    assert out is not None
    return out


def load_output_set(out: str | Path, dtype: torch.dtype = torch.float32) -> ImageSet:
    """Read an output set's images back (after validating the manifest) as an ImageSet (uint8 images: see read_images)."""
    m = read_manifest(out)
    if not m["images"]:
        raise DscoError(f"output set {out} has no images")
    labels = torch.tensor([e["label"] for e in m["images"]], dtype=torch.int64)
    return ImageSet(read_images(Path(out), m["images"], dtype), labels, list(m["class_names"]), m["dataset"])


def schedule_ipc(manifest: dict[str, Any]) -> Optional[int]:
    """The images per class a set's training schedule is chosen by: a doped set's synthetic IPC (the DsCo authors
    train 100 synthetic + 500 real per class for IPC 100's epochs), else None (its own size). A set whose synthetic
    images Doping's guard dropped is a real subset: its own size."""
    cfg = manifest.get("config") or {}
    doping = cfg.get("doping") or {}
    if (manifest.get("doping_guard") or {}).get("kept_synthetic") is False:
        return None
    if doping.get("doping_ipc") is not None or doping.get("budget") is not None:
        return int(cfg["ipc"])
    return None
