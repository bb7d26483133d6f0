"""Pre-flight check: how far a generator's plain samples are from each real class, before any synthesis.

A diffusion model concentrates data well only where its samples already resemble the data: a model trained on other
images (another acquisition, resolution or style) makes sets that train poorly, and nothing else says so. The check
samples the model plainly for every class and compares the samples with the class's real images in a classifier's
feature space (`dsco.generator_metrics`: class fidelity, coverage, Fréchet distance), the classifier being a teacher
trained on the dataset's own train split. It is cheap next to a synthesis (a few samples per class)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .data import ImageSet
from .generator_metrics import sample_set, set_metrics
from .models.diffusion import DiffusionBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """Where the samples count as far from the data (ours). On the embedded mnist5k the shipped model's samples have
    class fidelity 1.0 and coverage 0.94 (100 per class)."""

    fidelity: float = 0.9  # the share of samples the teacher assigns to the class asked for
    coverage: float = 0.5  # the share of real images with a sample among their nearest neighbours


def real_reference(train: ImageSet, per_class: int, seed: int) -> ImageSet:
    """At most `per_class` random real images of each class (the metrics' k-NN balls need no more)."""
    g = torch.Generator().manual_seed(seed)
    idx = [i[torch.randperm(len(i), generator=g)[:per_class]] for i in (train.indices_of(c) for c in range(train.num_classes))]
    return train.subset(torch.sort(torch.cat(idx)).values)


def check_generator(backend: DiffusionBackend, train: ImageSet, teacher: torch.nn.Module, teacher_name: str,
                    per_class: int = 20, seed: int = 0, model_labels: Optional[list[int]] = None,
                    thresholds: Thresholds = Thresholds()) -> dict[str, Any]:
    """The metrics of the model's plain samples against the train split, per class and overall, and whether they
    are far (overall class fidelity or coverage below the thresholds), with the classes furthest off."""
    fake = sample_set(backend, per_class, seed, list(train.class_names), model_labels or list(range(train.num_classes)))
    m = set_metrics(real_reference(train, max(100, per_class), seed), fake, teacher, teacher_name)
    overall = m["overall"]
    far = overall["fidelity"] < thresholds.fidelity or overall["coverage"] < thresholds.coverage
    worst = sorted(m["per_class"], key=lambda c: (m["per_class"][c]["fidelity"], m["per_class"][c]["coverage"]))[:3]
    return {**m, "per_class_samples": per_class, "seed": seed, "far": far, "worst_classes": worst,
            "thresholds": {"fidelity": thresholds.fidelity, "coverage": thresholds.coverage}}


def advice(report: dict[str, Any]) -> Optional[str]:
    """One line for a user whose generator is far from the data, or None."""
    if not report["far"]:
        return None
    o = report["overall"]
    return (f"the model's plain samples are far from this data (class fidelity {o['fidelity']:.0%}, coverage "
            f"{o['coverage']:.2f}, Fréchet distance {o['fd']:.1f} in the teacher's features; furthest classes: "
            f"{', '.join(report['worst_classes'])}): synthetic sets will train poorly here. Add real images (Doping, "
            "--budget F, per class by default on a folder), use a stronger NOpt schedule, or fine-tune the model on this data")
