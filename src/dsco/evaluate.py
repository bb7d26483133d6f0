"""The evaluation protocol: train a fresh classifier on a set, report top-1 on the real test split.

The same protocol for every set (METHOD.md section 5), shortened for 2 CPU cores: a narrower
ConvNet, training measured in optimiser steps chosen from the set size alone, AdamW + cosine,
random shifts and CutMix; hard labels (cross-entropy) or teacher labels (KL at temperature T).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .data import ImageSet
from .errors import DscoError
from .fsio import atomic_write_json, staging_dir
from .models.classifiers import create_classifier

LABELS = ("hard", "teacher")


@dataclass
class EvalProtocol:
    """One protocol for every row of a table; saved with every result."""

    arch: str = "convnet3"
    width: Optional[int] = 32  # ConvNet channels: the field uses 128, narrowed for 2 CPU cores
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    cutmix_prob: float = 0.5
    cutmix_beta: float = 1.0
    shift: int = 2  # random translation in pixels
    temperature: float = 20.0
    # (max set size, optimiser steps): training length depends on the set size only
    steps_by_size: tuple[tuple[int, int], ...] = ((20, 300), (200, 500), (1000, 800), (5000, 1500), (10**9, 2500))
    max_steps: Optional[int] = None  # cap, for quick checks

    def steps_for(self, n: int) -> int:
        steps = next(s for size, s in self.steps_by_size if n <= size)
        return min(steps, self.max_steps) if self.max_steps else steps


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `pad` pixels (zero padding), independently."""
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def train_classifier(
    train: ImageSet,
    protocol: EvalProtocol,
    seed: int,
    teacher: Optional[torch.nn.Module] = None,
    progress: bool = False,
) -> torch.nn.Module:
    """Train protocol.arch from scratch on `train`; with a teacher, match its softened outputs (KL, T)."""
    if len(train) == 0:
        raise DscoError("cannot train a classifier on an empty set")
    c, s = train.images.shape[1], train.images.shape[-1]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = create_classifier(protocol.arch, c, train.num_classes, s, protocol.width)
        cutmix = v2.CutMix(alpha=protocol.cutmix_beta, num_classes=train.num_classes)
        g = torch.Generator().manual_seed(seed)
        steps = protocol.steps_for(len(train))
        opt = torch.optim.AdamW(net.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        x_all = train.images * 2 - 1
        bs = min(protocol.batch_size, len(train))
        net.train()
        for _ in tqdm(range(steps), desc="train classifier", leave=False, disable=not progress):
            idx = torch.randint(len(train), (bs,), generator=g)
            x, y = random_shift(x_all[idx], protocol.shift, g), train.labels[idx]
            target = F.one_hot(y, train.num_classes).float()
            if torch.rand((), generator=g).item() < protocol.cutmix_prob:
                x, target = cutmix(x, y)
            logits = net(x)
            if teacher is None:
                loss = torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            else:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / protocol.temperature, 1)
                t2 = protocol.temperature**2
                loss = F.kl_div(F.log_softmax(logits / protocol.temperature, 1), soft, reduction="batchmean") * t2
            if not torch.isfinite(loss):
                raise DscoError(f"classifier training diverged (loss {loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def predict_proba(net: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Softmax outputs for images in [0, 1]."""
    net.eval()
    return torch.cat([F.softmax(net(images[i : i + batch] * 2 - 1), 1) for i in range(0, len(images), batch)])


def accuracy(net: torch.nn.Module, test: ImageSet) -> float:
    return (predict_proba(net, test.images).argmax(1) == test.labels).float().mean().item()


def check_compatible(train: ImageSet, test: ImageSet) -> None:
    if train.image_shape != test.image_shape or train.num_classes != test.num_classes:
        raise DscoError(
            f"set has {train.num_classes} classes of {train.image_shape} images but the test split has "
            f"{test.num_classes} of {test.image_shape}"
        )


def evaluate_set(
    train: ImageSet,
    test: ImageSet,
    protocol: EvalProtocol,
    runs: int = 3,
    labels: str = "hard",
    teacher: Optional[torch.nn.Module] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean and std of test accuracy over `runs` seeds (0..runs-1), with the protocol."""
    if labels not in LABELS:
        raise DscoError(f"unknown labels {labels!r}: valid names are {', '.join(LABELS)}")
    if labels == "teacher" and teacher is None:
        raise DscoError("--labels teacher needs a teacher (dsco train-teacher, then --teacher DIR)")
    if runs < 1:
        raise DscoError(f"--runs must be >= 1, got {runs}")
    check_compatible(train, test)
    accs, t0 = [], time.time()
    for seed in tqdm(range(runs), desc="evaluate", disable=not progress):
        net = train_classifier(train, protocol, seed, teacher if labels == "teacher" else None, progress)
        accs.append(accuracy(net, test))
    return {
        "mean": statistics.fmean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "accs": accs,
        "runs": runs,
        "labels": labels,
        "train_size": len(train),
        "steps": protocol.steps_for(len(train)),
        "seconds": round(time.time() - t0, 1),
        "protocol": asdict(protocol),
    }


# ---- the teacher: a classifier trained once on the full train split, cached ----------------

@dataclass
class TeacherConfig:
    dataset: str = "mnist5k"
    seed: int = 0
    protocol: EvalProtocol = field(default_factory=EvalProtocol)


def save_teacher(net: torch.nn.Module, cfg: TeacherConfig, train: ImageSet, out: Path, test_acc: float) -> None:
    with staging_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        meta = {"format": "dsco-teacher/1", "config": asdict(cfg), "class_names": train.class_names,
                "image_shape": list(train.image_shape), "test_accuracy": test_acc}
        atomic_write_json(tmp / "config.json", meta)


def load_teacher(path: str | Path, expect: Optional[ImageSet] = None) -> torch.nn.Module:
    """Load a teacher directory; its class count and image shape must match `expect`."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise DscoError(f"teacher directory {path} must contain config.json and model.safetensors (dsco train-teacher)")
    meta = json.loads((path / "config.json").read_text())
    p = EvalProtocol(**{k: (tuple(tuple(x) for x in v) if k == "steps_by_size" else v) for k, v in meta["config"]["protocol"].items()})
    c, h, _ = meta["image_shape"]
    k = len(meta["class_names"])
    if expect is not None and (k != expect.num_classes or tuple(meta["image_shape"]) != expect.image_shape):
        raise DscoError(f"teacher {path} was trained on {k} classes of {tuple(meta['image_shape'])} images; this dataset has {expect.num_classes} of {expect.image_shape}")
    net = create_classifier(p.arch, c, k, h, p.width)
    try:
        net.load_state_dict(load_file(str(path / "model.safetensors")))
    except RuntimeError as e:
        raise DscoError(f"teacher checkpoint {path / 'model.safetensors'} does not match its config") from e
    return net.eval().requires_grad_(False)


def train_teacher(train: ImageSet, test: ImageSet, cfg: TeacherConfig, out: str | Path, progress: bool = True) -> float:
    """Train the teacher on the full train split and cache it in `out`; returns its test accuracy."""
    net = train_classifier(train, cfg.protocol, cfg.seed, progress=progress)
    acc = accuracy(net, test)
    save_teacher(net, cfg, train, Path(out), acc)
    return acc


def ensure_teacher(
    path: str | Path, train: ImageSet, test: Callable[[], ImageSet], cfg: TeacherConfig, progress: bool = True
) -> torch.nn.Module:
    """Load the cached teacher in `path`, training it there first if it is missing."""
    if not (Path(path) / "config.json").is_file():
        train_teacher(train, test(), cfg, path, progress)
    return load_teacher(path, train)
