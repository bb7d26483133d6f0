"""Doping: add the real images a model trained on the synthetic set finds least clear (docs/method.md, section 4)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .errors import DscoError

DOPING_SELECTORS = ("clarity", "random")
log = logging.getLogger(__name__)


@dataclass
class DopingConfig:
    """How many real images to add and how to choose them."""

    doping_ipc: Optional[int] = None  # real images per class on average (exactly per class if classwise)
    budget: Optional[float] = None  # or: total set size as a fraction of the train split
    # rank clarity within each class, an equal share each; None = per class on a folder of the user's (data the
    # generator may never have seen, where the globally least clear images pile up in a few classes), over the whole
    # set on the named datasets (the authors' selection, the paper's setting)
    classwise: Optional[bool] = None
    # ours: keep the synthetic images only if a model trained on them does at least as well on the real train split
    # as one trained on as many random real images; else the set is a class-balanced random real subset of the same
    # size (never worse than random real images). None = on a folder of the user's, off on the named datasets
    guard: Optional[bool] = None
    selector: str = "clarity"
    teacher: Optional[str] = None  # teacher directory (dsco train-teacher); trained and cached if missing

    @property
    def enabled(self) -> bool:
        return self.doping_ipc is not None or self.budget is not None


def clarity(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p(y | x) - max_{c != y} p(c | x): 1 for a confident correct model, 0 for a uniform one."""
    p_y = probs.gather(1, labels[:, None]).squeeze(1)
    others = probs.scatter(1, labels[:, None], float("-inf"))
    return p_y - others.max(1).values


def real_count(cfg: DopingConfig, num_train: int, num_classes: int, num_synthetic: int,
               class_counts: Optional[list[int]] = None, quiet: bool = False) -> int:
    """Number of real images to add: M * classes for --doping-ipc, F * |train| - synthetic for --budget. With
    --classwise the count is rounded down to a multiple of the classes (what a per-class selection can honour, and
    the set stays within the budget; said on one line), and every class must hold its share. Cheap: called before
    synthesis, so a run that cannot be doped stops before any work."""
    if cfg.doping_ipc is not None and cfg.budget is not None:
        raise DscoError("give either --doping-ipc or --budget, not both")
    if cfg.selector not in DOPING_SELECTORS:
        raise DscoError(f"unknown doping selector {cfg.selector!r}: valid names are {', '.join(DOPING_SELECTORS)}")
    if cfg.doping_ipc is not None:
        if cfg.doping_ipc <= 0:
            raise DscoError(f"--doping-ipc must be > 0, got {cfg.doping_ipc}")
        count = cfg.doping_ipc * num_classes
    else:
        if not 0 < cfg.budget <= 1:
            raise DscoError(f"--budget must be a fraction in (0, 1], got {cfg.budget}")
        count = round(cfg.budget * num_train) - num_synthetic
        if count < 0:
            raise DscoError(f"--budget {cfg.budget} ({round(cfg.budget * num_train)} images) is smaller than the {num_synthetic} synthetic images")
        if cfg.classwise and count % num_classes:
            rounded = max(num_classes, count // num_classes * num_classes)
            if not quiet:
                log.warning("--budget %s with --classwise: %d real images (%d per class) instead of %d, so every class gets "
                            "the same share", cfg.budget, rounded, rounded // num_classes, count)
            count = rounded
    if count > num_train:
        raise DscoError(f"asked for {count} real images but the train split has {num_train}")
    if cfg.classwise and class_counts is not None:
        short = [c for c, n in enumerate(class_counts) if n < count // num_classes]
        if short:
            raise DscoError(f"--classwise: class {short[0]} has {class_counts[short[0]]} real images, fewer than the "
                            f"{count // num_classes} per class asked for")
    return count


def select(
    scores: torch.Tensor, labels: torch.Tensor, count: int, num_classes: int, classwise: bool
) -> torch.Tensor:
    """Indices of the `count` lowest scores, over the whole set or `count / classes` per class."""
    if not classwise:
        return torch.sort(torch.argsort(scores, stable=True)[:count]).values
    if count % num_classes:
        raise DscoError(f"--classwise needs a real count divisible by {num_classes} classes, got {count}")
    per = count // num_classes
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if per > len(idx):
            raise DscoError(f"class {c} has {len(idx)} real images, fewer than the {per} asked for")
        picked.append(idx[torch.argsort(scores[idx], stable=True)[:per]])
    return torch.sort(torch.cat(picked)).values
