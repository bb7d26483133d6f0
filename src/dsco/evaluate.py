"""The evaluation protocol: train a fresh classifier on a set, report top-1 on the real test split.

The same protocol for every set (METHOD.md section 5), shortened for 2 CPU cores: a narrower
ConvNet, training measured in optimiser steps chosen from the set size alone, AdamW + cosine,
random shifts and CutMix; hard labels (cross-entropy) or teacher labels (KL at temperature T).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from safetensors.torch import load_file, save_file
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .data import ImageSet
from .data.imageset import Labelled
from .errors import DscoError
from .fsio import atomic_write_json, staging_dir
from .models.classifiers import create_classifier
from .parallel import local_device, rank_world

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
    # (max images per class, epochs): the paper's schedule; when set it replaces steps_by_size
    epochs_by_ipc: Optional[tuple[tuple[int, int], ...]] = None
    image_size: Optional[int] = None  # train/test resolution (None = the set's own)
    augment: str = "shift"  # "shift" (random translation) or "crop-flip" (random resized crop + flip)
    max_steps: Optional[int] = None  # cap, for quick checks

    def steps_for(self, n: int, num_classes: int = 1) -> int:
        if self.epochs_by_ipc:
            epochs = next(e for ipc, e in self.epochs_by_ipc if n / num_classes <= ipc)
            steps = epochs * math.ceil(n / self.batch_size)
        else:
            steps = next(s for size, s in self.steps_by_size if n <= size)
        return min(steps, self.max_steps) if self.max_steps else steps


PROTOCOLS: dict[str, EvalProtocol] = {
    # ours: the field's ConvNet narrowed and shortened for 2 CPU cores (small images)
    "cpu-small": EvalProtocol(),
    # ours: the cross-architecture check on small images; a ResNet-18 step at batch 64 costs ~2.8 s on one
    # core of the 2-core VM, so the batch is halved (same step table: 500 steps for an IPC 10 set)
    "cpu-resnet18": EvalProtocol(arch="resnet18", width=None, batch_size=32),
    # ours: cpu-small with BatchNorm in place of instance norm, the normalisation most users' networks have
    "cpu-bn-convnet": EvalProtocol(arch="convnet3-bn"),
    # METHOD.md section 5, ImageNette/ImageWoof: ResNetAP-10 at 224 px, AdamW 1e-3, wd 0.01, batch 64,
    # CutMix p 1, epochs 3000/2000/1500/1000/500 for IPC 1/<=10/<=50/<=200/>200
    "imagenet-subset": EvalProtocol(
        arch="resnetap10", width=None, cutmix_prob=1.0, shift=0, image_size=224, augment="crop-flip",
        epochs_by_ipc=((1, 3000), (10, 2000), (50, 1500), (200, 1000), (10**9, 500)),
    ),
    # METHOD.md section 5, ImageNet-1k low IPC (RDED's): ResNet-18 at 224 px, AdamW, 300 epochs
    # (with --labels teacher: KD from a ResNet-18 teacher at T 20)
    "imagenet1k": EvalProtocol(
        arch="resnet18", width=None, cutmix_prob=1.0, shift=0, image_size=224, augment="crop-flip",
        epochs_by_ipc=((10**9, 300),),
    ),
}


def protocol_named(name: str) -> EvalProtocol:
    if name not in PROTOCOLS:
        raise DscoError(f"unknown protocol {name!r}: valid names are {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _fit_size(x: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """Center-crop (larger images) or resize (smaller) to size x size: the standard test-time view."""
    if size is None or x.shape[-1] == size:
        return x
    if x.shape[-1] > size and x.shape[-2] >= size:
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        return x[..., top : top + size, left : left + size]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


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
    """Train protocol.arch from scratch on `train`; with a teacher, match its softened outputs (KL, T).

    Under torchrun every rank draws the same batch and trains on its slice with DDP (gradients averaged).
    """
    if len(train) == 0:
        raise DscoError("cannot train a classifier on an empty set")
    if protocol.augment not in ("shift", "crop-flip"):
        raise DscoError(f"unknown augmentation {protocol.augment!r}: valid names are shift, crop-flip")
    rank, world = rank_world()
    dev = local_device()
    c, s = train.images.shape[1], protocol.image_size or train.images.shape[-1]
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = create_classifier(protocol.arch, c, train.num_classes, s, protocol.width).to(dev)
        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else net
        cutmix = v2.CutMix(alpha=protocol.cutmix_beta, num_classes=train.num_classes)
        crop_flip = v2.Compose([v2.RandomResizedCrop(s, antialias=True), v2.RandomHorizontalFlip()])
        g = torch.Generator().manual_seed(seed)
        steps = protocol.steps_for(len(train), train.num_classes)
        opt = torch.optim.AdamW(net.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        x_all = train.images * 2 - 1
        bs = min(protocol.batch_size, len(train))
        if teacher is not None:
            teacher = teacher.to(dev)
        net.train()
        for _ in tqdm(range(steps), desc="train classifier", leave=False, disable=not progress or rank != 0):
            idx = torch.randint(len(train), (bs,), generator=g)[rank::world]  # every rank: same draw, own slice
            if protocol.augment == "shift":
                x = _fit_size(random_shift(x_all[idx], protocol.shift, g), s)
            else:
                x = torch.stack([crop_flip(im) for im in x_all[idx]])
            x, y = x.to(dev), train.labels[idx].to(dev)
            target = F.one_hot(y, train.num_classes).float()
            if torch.rand((), generator=g).item() < protocol.cutmix_prob:
                x, target = cutmix(x, y)
            logits = model(x)
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
def predict_proba(net: torch.nn.Module, images: torch.Tensor, batch: int = 250, image_size: Optional[int] = None) -> torch.Tensor:
    """Softmax outputs (CPU) for images in [0, 1], center-cropped or resized to `image_size`."""
    net.eval()
    dev = next(net.parameters()).device
    out = [F.softmax(net(_fit_size(images[i : i + batch].to(dev) * 2 - 1, image_size)), 1).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)


def predict_by_class(nets: list[torch.nn.Module], data: Labelled, image_size: Optional[int] = None) -> list[torch.Tensor]:
    """Softmax outputs of each net on every image of `data`, reading one class at a time (a lazy split never loads whole)."""
    out = [torch.empty(len(data), data.num_classes) for _ in nets]
    for label in range(data.num_classes):
        idx = data.indices_of(label)
        if len(idx):
            images = data.class_images(label)
            if len(images) != len(idx):
                raise DscoError(f"class {data.class_names[label]!r}: {len(idx) - len(images)} of {len(idx)} images "
                                "could not be read; scoring every train image needs them all (remove the bad files)")
            for probs, net in zip(out, nets):
                probs[idx] = predict_proba(net, images, image_size=image_size)
    return out


def accuracy(net: torch.nn.Module, test: ImageSet, image_size: Optional[int] = None) -> float:
    return (predict_proba(net, test.images, image_size=image_size).argmax(1) == test.labels).float().mean().item()


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
    first_seed: int = 0,
) -> dict[str, Any]:
    """Mean and std of test accuracy over `runs` seeds (first_seed, first_seed + 1, ...), with the protocol."""
    if labels not in LABELS:
        raise DscoError(f"unknown labels {labels!r}: valid names are {', '.join(LABELS)}")
    if labels == "teacher" and teacher is None:
        raise DscoError("--labels teacher needs a teacher (dsco train-teacher, then --teacher DIR)")
    if runs < 1:
        raise DscoError(f"--runs must be >= 1, got {runs}")
    check_compatible(train, test)
    accs, t0 = [], time.time()
    seeds = list(range(first_seed, first_seed + runs))
    for seed in tqdm(seeds, desc="evaluate", disable=not progress):
        net = train_classifier(train, protocol, seed, teacher if labels == "teacher" else None, progress)
        accs.append(accuracy(net, test, protocol.image_size))
    return {
        "mean": statistics.fmean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "accs": accs,
        "runs": runs,
        "seeds": seeds,
        "labels": labels,
        "train_size": len(train),
        "steps": protocol.steps_for(len(train), train.num_classes),
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


class ImageNetTeacher(torch.nn.Module):
    """An ImageNet-1k classifier sliced to a subset's classes; takes our [-1, 1] input, normalises it itself."""

    def __init__(self, net: torch.nn.Module, labels: list[int]):
        super().__init__()
        self.net = net
        self.register_buffer("labels", torch.tensor(labels, dtype=torch.long))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x + 1) / 2 - self.mean) / self.std)[:, self.labels]


def imagenet_teacher(path: str | Path, class_names: list[str], class_map: Optional[str] = None) -> ImageNetTeacher:
    """torchvision ResNet-18 with ImageNet weights from a file (.pth state dict or .safetensors), sliced to the
    classes: wnid folders map to their ImageNet labels, other names through `class_map` (as for the DiT)."""
    from torchvision.models import resnet18

    from .data.imagenet import class_labels

    path = Path(path)
    labels = class_labels(class_names, 1000, class_map)
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file raises many kinds
        raise DscoError(f"cannot read teacher weights {path}: {str(e).splitlines()[0]}") from e
    net = resnet18()
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise DscoError(f"teacher weights {path} are not a torchvision ResNet-18 state dict") from e
    return ImageNetTeacher(net, labels).eval().requires_grad_(False)


def load_teacher(path: str | Path, expect: Optional[ImageSet] = None, class_map: Optional[str] = None) -> torch.nn.Module:
    """Load a teacher directory (dsco train-teacher), or an ImageNet ResNet-18 weights file sliced to `expect`'s classes."""
    path = Path(path)
    if path.is_file():
        if expect is None:
            raise DscoError("an ImageNet teacher file needs the dataset whose classes it is sliced to")
        return imagenet_teacher(path, list(expect.class_names), class_map)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise DscoError(f"teacher directory {path} must contain config.json and model.safetensors (dsco train-teacher)")
    meta = json.loads((path / "config.json").read_text())
    p = EvalProtocol(**{k: (tuple(tuple(x) for x in v) if k in ("steps_by_size", "epochs_by_ipc") and v else v)
                        for k, v in meta["config"]["protocol"].items()})
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
    acc = accuracy(net, test, cfg.protocol.image_size)
    save_teacher(net, cfg, train, Path(out), acc)
    return acc


def ensure_teacher(
    path: str | Path, train: ImageSet, test: Callable[[], ImageSet], cfg: TeacherConfig, progress: bool = True,
    class_map: Optional[str] = None,
) -> torch.nn.Module:
    """Load the cached teacher in `path` (or an ImageNet weights file), training it there first if it is missing."""
    if Path(path).is_file():
        return load_teacher(path, train, class_map)
    if not (Path(path) / "config.json").is_file():
        train_teacher(train, test(), cfg, path, progress)
    return load_teacher(path, train)
