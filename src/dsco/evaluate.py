"""The evaluation protocols: train a fresh classifier on a set, report top-1 on the real test split.

Each protocol is data (`EvalProtocol`), saved with every result: the CPU protocols (ours: a narrow ConvNet, training
measured in optimiser steps chosen from the set size, a cosine per step, random shifts and CutMix) and the papers'
(`imagenet-subset`, `imagenet1k`: epochs by IPC, per-epoch schedules, the originals' augmentation, best and last
accuracy), set beside their originals in docs/protocols.md. Hard labels (cross-entropy) or teacher labels (KL at T).
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
    labels: str = "hard"  # the labels the protocol trains with: "hard", or "teacher" (KL at `temperature`)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range (crop-flip)
    color: bool = False  # IDC's ColorJitter 0.4 and PCA lighting 0.1 after the crop, one draw per batch
    normalize: str = "half"  # network input: "half" = x * 2 - 1 (ours), "imagenet" = ImageNet's mean and std
    schedule: str = "cosine"  # "cosine" to zero per step (ours); per epoch: "multistep" (x0.2 at 2/3 and 5/6), "half-cosine" (to 0.5x)
    teacher_schedule: Optional[str] = None  # the schedule with teacher labels (None = `schedule`)
    batch_by_ipc: Optional[tuple[tuple[int, int], ...]] = None  # (max IPC, batch) replacing batch_size (RDED's)
    batch_divides_set: bool = False  # the largest batch in [32, batch_size] dividing the set (else 32), lr x batch / batch_size
    decay_weights_only: bool = False  # weight decay on conv and linear weights only, not on biases and norms (RDED's)
    kd_t2: bool = True  # the teacher-label loss times T^2 (ours); the papers' KL leaves it out
    eval_every: int = 0  # epochs between test evaluations over the last part of training (0: the end only)
    eval_from: float = 0.0  # share of the epochs after which those evaluations run
    report: str = "last"  # the accuracy a table takes: "last", or "best" of the evaluations (what the papers print)

    def ipc_value(self, table: tuple[tuple[int, int], ...], ipc: float) -> int:
        return next(v for limit, v in table if ipc <= limit)

    def batch_for(self, n: int, num_classes: int = 1, ipc: Optional[int] = None) -> int:
        """The batch for a set of n images (`ipc`: the images per class its schedule is chosen by)."""
        if self.batch_by_ipc:
            return min(n, self.ipc_value(self.batch_by_ipc, ipc or n / num_classes))
        if self.batch_divides_set:  # the DsCo authors' loader: a batch that divides the set, not below 32
            return next((b for b in range(self.batch_size, 31, -1) if n % b == 0), 32)
        return self.batch_size

    def epochs_for(self, n: int, num_classes: int = 1, ipc: Optional[int] = None) -> int:
        return self.ipc_value(self.epochs_by_ipc, ipc or n / num_classes) if self.epochs_by_ipc else 0

    def steps_for(self, n: int, num_classes: int = 1, ipc: Optional[int] = None) -> int:
        if self.epochs_by_ipc:
            steps = self.epochs_for(n, num_classes, ipc) * math.ceil(n / min(n, self.batch_for(n, num_classes, ipc)))
        else:
            steps = next(s for size, s in self.steps_by_size if n <= size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def lr_factor(self, schedule: str, epoch: int, epochs: int) -> float:
        """The per-epoch learning-rate factor at (0-based) `epoch` of `epochs`, as the originals' schedulers."""
        if schedule == "multistep":  # MultiStepLR(milestones=[2E // 3, 5E // 6], gamma=0.2)
            return 0.2 ** sum(epoch >= m for m in (2 * epochs // 3, 5 * epochs // 6))
        if schedule == "half-cosine":  # LambdaLR(0.5 (1 + cos(pi e / E / 2)))
            return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2)) if epoch <= epochs else 0.0
        raise DscoError(f"unknown per-epoch schedule {schedule!r}: valid names are multistep, half-cosine")


PAPER_AUGMENT = dict(augment="crop-flip", crop_scale=(0.5, 1.0), normalize="imagenet", shift=0, image_size=224,
                     cutmix_prob=1.0, cutmix_beta=1.0, kd_t2=False, eval_every=10)

PROTOCOLS: dict[str, EvalProtocol] = {
    # ours: the field's ConvNet narrowed and shortened for 2 CPU cores (small images)
    "cpu-small": EvalProtocol(),
    # ours: the cross-architecture check on small images; a ResNet-18 step at batch 64 costs ~2.8 s on one
    # core of the 2-core VM, so the batch is halved (same step table: 500 steps for an IPC 10 set)
    "cpu-resnet18": EvalProtocol(arch="resnet18", width=None, batch_size=32),
    # ours: cpu-small with BatchNorm in place of instance norm, the normalisation most users' networks have
    "cpu-bn-convnet": EvalProtocol(arch="convnet3-bn"),
    # the DsCo authors' ImageNette / ImageWoof protocol (kkkkqq/Dataset-Concentration train.py, utils.py): IDC's
    # ResNetAP-10 at 224 px, AdamW 1e-3 (x batch / 64), wd 0.01, a batch dividing the set (50 for IPC 10 / 50),
    # RandomResizedCrop (0.5, 1) + flip + ColorJitter 0.4 + lighting 0.1, ImageNet normalisation, CutMix p 1,
    # epochs 3000 / 2000 / 1500 / 1000 / 500 for IPC 1 / <=10 / <=50 / <=200 / more; MultiStepLR for hard
    # labels, the half cosine for teacher labels (KL at T 20, no T^2); best test accuracy of every 10 epochs over
    # the last third
    "imagenet-subset": EvalProtocol(
        arch="resnetap10", width=None, epochs_by_ipc=((1, 3000), (10, 2000), (50, 1500), (200, 1000), (10**9, 500)),
        batch_divides_set=True, color=True, schedule="multistep", teacher_schedule="half-cosine", eval_from=2 / 3,
        report="best", **PAPER_AUGMENT,
    ),
    # RDED's ImageNet-1k protocol (LINs-lab/RDED validation/, which the DsCo authors' eval_rded/ copies):
    # ResNet-18, teacher labels only (a ResNet-18 teacher labels every CutMix-ed batch, KL at T 20, no T^2),
    # AdamW 1e-3 with no weight decay on biases and norms, batch 20 / 100 / 200 at IPC 1 / 10 / 50, 300 epochs,
    # the half cosine per epoch, RandomResizedCrop (0.5, 1) + flip; best test accuracy of every 10 epochs over
    # the last fifth
    "imagenet1k": EvalProtocol(
        arch="resnet18", width=None, labels="teacher", epochs_by_ipc=((10**9, 300),),
        batch_by_ipc=((1, 20), (10, 100), (10**9, 200)), decay_weights_only=True, schedule="half-cosine",
        eval_from=0.8, report="best", **PAPER_AUGMENT,
    ),
}


def protocol_from_dict(d: dict) -> EvalProtocol:
    """A protocol read back from JSON (tables of pairs and pairs as tuples); fields added since read as defaults."""
    tables = ("steps_by_size", "epochs_by_ipc", "batch_by_ipc")
    return EvalProtocol(**{k: (tuple(tuple(x) for x in v) if k in tables and v else tuple(v) if k == "crop_scale" else v)
                           for k, v in d.items()})


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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# IDC's PCA lighting: ImageNet's RGB eigenvalues and eigenvectors
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as float, from float or uint8 storage (a large set is kept as uint8, converted per batch)."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def _imagenet_input(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: our [-1, 1] input -> ImageNet's mean and std normalisation (grey images pass unchanged)."""
    x = args[0]
    if x.shape[1] != 3:
        return args
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1), *args[1:]


def protocol_network(protocol: "EvalProtocol", channels: int, num_classes: int, size: int) -> torch.nn.Module:
    """The protocol's network; with `normalize` "imagenet" it normalises its [-1, 1] input as the originals
    normalise their data (a hook, so the weights keep the architecture's names)."""
    if protocol.normalize not in ("half", "imagenet"):
        raise DscoError(f"unknown input normalisation {protocol.normalize!r}: valid names are half, imagenet")
    net = create_classifier(protocol.arch, channels, num_classes, size, protocol.width)
    if protocol.normalize == "imagenet":
        net.register_forward_pre_hook(_imagenet_input)
    return net


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor((0.299, 0.587, 0.114), device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color_augment(x: torch.Tensor, generator: torch.Generator, strength: float = 0.4, lighting: float = 0.1) -> torch.Tensor:
    """IDC's colour augmentation on a batch in [0, 1]: brightness, contrast and saturation jitter (each factor
    1 + U(-0.4, 0.4), one per batch, in random order), then AlexNet's PCA lighting (N(0, 0.1) per eigenvector,
    one draw per batch). IDC's saturation and contrast take the grey image from images 0-2 of the batch where
    the channels were meant; dsco uses the channels."""
    if x.shape[1] != 3:
        return x
    for op in torch.randperm(3, generator=generator).tolist():
        alpha = 1 + (torch.rand((), generator=generator).item() * 2 - 1) * strength
        if op == 0:
            x = x * alpha
        elif op == 1:
            x = alpha * x + (1 - alpha) * _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        else:
            x = alpha * x + (1 - alpha) * _grey(x)
    a = torch.randn(3, generator=generator) * lighting
    rgb = torch.tensor(LIGHTING_EIGVEC) @ (a * torch.tensor(LIGHTING_EIGVAL))
    return x + rgb.to(x.device).view(1, 3, 1, 1)


def _optimizer(net: torch.nn.Module, protocol: EvalProtocol, lr: float) -> torch.optim.Optimizer:
    if not protocol.decay_weights_only:
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=protocol.weight_decay)
    decay = [p for n, p in net.named_parameters() if "weight" in n and p.dim() > 1]
    rest = [p for n, p in net.named_parameters() if not ("weight" in n and p.dim() > 1)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": protocol.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr)


def train_classifier(
    train: ImageSet,
    protocol: EvalProtocol,
    seed: int,
    teacher: Optional[torch.nn.Module] = None,
    progress: bool = False,
) -> torch.nn.Module:
    """Train protocol.arch from scratch on `train`; with a teacher, match its softened outputs (KL, T)."""
    return fit(train, protocol, seed, teacher, progress)[0]


def fit(
    train: ImageSet,
    protocol: EvalProtocol,
    seed: int,
    teacher: Optional[torch.nn.Module] = None,
    progress: bool = False,
    evaluate: Optional[Callable[[torch.nn.Module], float]] = None,
    ipc: Optional[int] = None,
) -> tuple[torch.nn.Module, list[tuple[int, float]]]:
    """Train protocol.arch from scratch on `train`; with a teacher, match its softened outputs (KL, T). Returns the
    net and, for an epoch protocol with `evaluate`, (epoch, accuracy) at every `eval_every` epochs past
    `eval_from` (the papers report the best of these). `ipc` chooses the epochs and batch (a doped set trains as
    its synthetic IPC, as the DsCo authors run it).

    A step protocol draws each batch with replacement and follows a cosine per step; an epoch protocol passes
    over the set in a new random order each epoch and steps its schedule per epoch. Under torchrun every rank
    draws the same batch and trains on its slice with DDP (gradients averaged; BatchNorm synchronised on GPUs).
    """
    if len(train) == 0:
        raise DscoError("cannot train a classifier on an empty set")
    if protocol.augment not in ("shift", "crop-flip"):
        raise DscoError(f"unknown augmentation {protocol.augment!r}: valid names are shift, crop-flip")
    rank, world = rank_world()
    dev = local_device()
    n, k = len(train), train.num_classes
    c, s = train.images.shape[1], protocol.image_size or train.images.shape[-1]
    epochs = protocol.epochs_for(n, k, ipc)
    history: list[tuple[int, float]] = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = protocol_network(protocol, c, k, s).to(dev)
        if world > 1 and dev.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else net
        cutmix = v2.CutMix(alpha=protocol.cutmix_beta, num_classes=k)
        crop_flip = v2.Compose([v2.RandomResizedCrop(s, scale=protocol.crop_scale, antialias=True), v2.RandomHorizontalFlip()])
        g = torch.Generator().manual_seed(seed)
        steps = protocol.steps_for(n, k, ipc)
        bs = min(protocol.batch_for(n, k, ipc), n)
        lr = protocol.lr * (bs / protocol.batch_size if protocol.batch_divides_set else 1.0)
        opt = _optimizer(net, protocol, lr)
        schedule = (protocol.teacher_schedule if teacher is not None else None) or protocol.schedule
        if epochs:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: protocol.lr_factor(schedule, e, epochs))
            per_epoch = math.ceil(n / bs)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        if teacher is not None:
            teacher = teacher.to(dev)
        net.train()
        order = torch.empty(0, dtype=torch.long)
        for step in tqdm(range(steps), desc="train classifier", leave=False, disable=not progress or rank != 0):
            if epochs:
                if step % per_epoch == 0:
                    order = torch.randperm(n, generator=g)
                idx = order[(step % per_epoch) * bs : (step % per_epoch + 1) * bs][rank::world]
            else:
                idx = torch.randint(n, (bs,), generator=g)[rank::world]  # every rank: same draw, own slice
            if protocol.augment == "shift":
                x = _fit_size(random_shift(unit(train.images[idx]) * 2 - 1, protocol.shift, g), s)
            else:
                x = torch.stack([crop_flip(im) for im in unit(train.images[idx])])
                x = (color_augment(x, g) if protocol.color else x) * 2 - 1
            x, y = x.to(dev), train.labels[idx].to(dev)
            target = F.one_hot(y, k).float()
            if torch.rand((), generator=g).item() < protocol.cutmix_prob:
                x, target = cutmix(x, y)
            logits = model(x)
            if teacher is None:
                loss = torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            else:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / protocol.temperature, 1)
                t2 = protocol.temperature**2 if protocol.kd_t2 else 1.0
                loss = F.kl_div(F.log_softmax(logits / protocol.temperature, 1), soft, reduction="batchmean") * t2
            if not torch.isfinite(loss):
                raise DscoError(f"classifier training diverged (loss {loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not epochs:
                sched.step()
            elif (step + 1) % per_epoch == 0 or step + 1 == steps:
                sched.step()
                done = (step + 1 + per_epoch - 1) // per_epoch  # epochs completed
                last = step + 1 == steps
                every = protocol.eval_every and done % protocol.eval_every == 0 and done >= protocol.eval_from * epochs
                if evaluate is not None and (every or last):
                    history.append((done, evaluate(net.eval())))
                    net.train()
    return net.eval(), history


@torch.no_grad()
def predict_proba(net: torch.nn.Module, images: torch.Tensor, batch: int = 250, image_size: Optional[int] = None) -> torch.Tensor:
    """Softmax outputs (CPU) for images in [0, 1], center-cropped or resized to `image_size`."""
    net.eval()
    dev = next(net.parameters()).device
    out = [F.softmax(net(_fit_size(unit(images[i : i + batch]).to(dev) * 2 - 1, image_size)), 1).cpu() for i in range(0, len(images), batch)]
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
    labels: Optional[str] = None,
    teacher: Optional[torch.nn.Module] = None,
    progress: bool = True,
    first_seed: int = 0,
    ipc: Optional[int] = None,
) -> dict[str, Any]:
    """Mean and std of test accuracy over `runs` seeds (first_seed, first_seed + 1, ...), with the protocol and its
    label type (`labels` overrides it). Both the last accuracy and the best of the protocol's evaluations are
    recorded; `accs`, `mean` and `std` are the one the protocol reports (`report`). `ipc`: the images per class
    the epochs and batch are chosen by (a doped set's synthetic IPC)."""
    labels = labels or protocol.labels
    if labels not in LABELS:
        raise DscoError(f"unknown labels {labels!r}: valid names are {', '.join(LABELS)}")
    if protocol.report not in ("best", "last"):
        raise DscoError(f"unknown report {protocol.report!r}: valid names are best, last")
    if labels == "teacher" and teacher is None:
        raise DscoError("teacher labels need a teacher (dsco train-teacher, then --teacher DIR)")
    if runs < 1:
        raise DscoError(f"--runs must be >= 1, got {runs}")
    check_compatible(train, test)
    last, best, t0 = [], [], time.time()
    seeds = list(range(first_seed, first_seed + runs))
    for seed in tqdm(seeds, desc="evaluate", disable=not progress):
        net, history = fit(train, protocol, seed, teacher if labels == "teacher" else None, progress,
                           lambda n: accuracy(n, test, protocol.image_size), ipc)
        last.append(history[-1][1] if history else accuracy(net, test, protocol.image_size))
        best.append(max([a for _, a in history] + [last[-1]]))
    accs = best if protocol.report == "best" else last
    return {
        "mean": statistics.fmean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "accs": accs,
        "report": protocol.report,
        "last_accs": last,
        "best_accs": best,
        "runs": runs,
        "seeds": seeds,
        "labels": labels,
        "train_size": len(train),
        "steps": protocol.steps_for(len(train), train.num_classes, ipc),
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
    p = protocol_from_dict(meta["config"]["protocol"])
    c, h, _ = meta["image_shape"]
    k = len(meta["class_names"])
    if expect is not None and (k != expect.num_classes or tuple(meta["image_shape"]) != expect.image_shape):
        raise DscoError(f"teacher {path} was trained on {k} classes of {tuple(meta['image_shape'])} images; this dataset has {expect.num_classes} of {expect.image_shape}")
    net = protocol_network(p, c, k, h)
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
