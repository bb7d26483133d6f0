"""How good is a generator, measured against real images in a classifier's feature space.

Fréchet distance (Heusel et al. 2017), precision / recall (Kynkäänniemi et al. 2019, k-NN balls around
each set's points) and density / coverage (Naeem et al. 2020, k-NN balls around the real points only),
overall and per class, with the class fidelity (the share of samples the classifier assigns to the
class asked for). No Inception weights exist offline, so the feature net is a classifier trained on the
real train split (the teacher): its penultimate features; results name it.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from .data import ImageSet
from .models.diffusion import DiffusionBackend, plain_sample

PR_K = 3  # Kynkäänniemi et al.'s k
DC_K = 5  # Naeem et al.'s k


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2), in float64 (symmetric square roots)."""
    a, b = real.double(), fake.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], a.shape[1]), torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return max(0.0, float(fd))


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point of the same set."""
    d = torch.cdist(x, x)
    k = min(k, len(x) - 1)
    return d.kthvalue(k + 1, dim=1).values if k > 0 else torch.zeros(len(x))  # +1: the point itself is at 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """Precision: share of fake points inside some real point's k-NN ball; recall: the converse."""
    d = torch.cdist(fake.double(), real.double())  # (fake, real)
    r_real, r_fake = knn_radii(real.double(), k), knn_radii(fake.double(), k)
    precision = (d <= r_real[None, :]).any(1).double().mean()
    recall = (d <= r_fake[:, None]).any(0).double().mean()
    return float(precision), float(recall)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = DC_K) -> tuple[float, float]:
    """Density: mean count of real k-NN balls holding each fake point, over k; coverage: share of real
    balls holding at least one fake point."""
    d = torch.cdist(fake.double(), real.double())
    inside = d <= knn_radii(real.double(), k)[None, :]
    return float(inside.double().sum(1).mean() / k), float(inside.any(0).double().mean())


def pixel_stats(images: torch.Tensor) -> dict[str, Any]:
    """Low-level statistics a BatchNorm network's running statistics see (images in [0, 1])."""
    q = (images * 255).round() / 255  # as the PNGs of an output set hold them
    flat = q.flatten(1)
    dark = flat <= 0.1
    bright = flat >= 0.5
    return {
        "exact_zero": round((flat == 0).float().mean().item(), 4),
        "background_mean": round(flat[dark].mean().item(), 4),
        "stroke_mean": round(flat[bright].mean().item(), 4) if bright.any() else None,
        "stroke_share": round(bright.float().mean().item(), 4),
        "mean": round(flat.mean().item(), 4),
        "std": round(flat.std().item(), 4),
    }


@dataclass
class GeneratorMetrics:
    fd: float
    precision: float
    recall: float
    density: float
    coverage: float
    fidelity: float  # share of samples classified as their class (NaN when no labels are compared)
    n_real: int
    n_fake: int


def compare(real: torch.Tensor, fake: torch.Tensor, fidelity: float = float("nan")) -> GeneratorMetrics:
    """Every metric between two feature sets (N, d)."""
    p, r = precision_recall(real, fake)
    dens, cov = density_coverage(real, fake)
    return GeneratorMetrics(frechet_distance(real, fake), p, r, dens, cov, fidelity, len(real), len(fake))


@torch.no_grad()
def embed(net: torch.nn.Module, images: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, predicted labels) of images in [0, 1] under a classifier with `embed`."""
    net.eval()
    feats, preds = [], []
    for i in range(0, len(images), batch):
        f = net.embed(images[i : i + batch] * 2 - 1)
        feats.append(f)
        preds.append(net.classifier(f).argmax(1))
    return torch.cat(feats), torch.cat(preds)


def set_metrics(real: ImageSet, fake: ImageSet, net: torch.nn.Module, feature_net: str) -> dict[str, Any]:
    """Overall and per-class metrics of `fake` against `real` in `net`'s feature space."""
    fr, _ = embed(net, real.images)
    ff, pred = embed(net, fake.images)
    per_class = {}
    for label, name in enumerate(real.class_names):
        r, f = real.labels == label, fake.labels == label
        if r.sum() > DC_K and f.sum() > PR_K:
            per_class[name] = asdict(compare(fr[r], ff[f], float((pred[f] == label).double().mean())))
    overall = asdict(compare(fr, ff, float((pred == fake.labels).double().mean())))
    mean_of_classes = {k: statistics.fmean(c[k] for c in per_class.values()) for k in ("fd", "precision", "recall", "density", "coverage", "fidelity")} if per_class else {}
    return {"feature_net": feature_net, "overall": overall, "per_class": per_class, "class_mean": mean_of_classes}


def sample_set(backend: DiffusionBackend, per_class: int, seed: int, class_names: list[str],
               model_labels: Optional[list[int]] = None) -> ImageSet:
    """Plain class-conditional samples, `per_class` of each class, quantised as an output set's PNGs are; class c
    is drawn for its label in the model, `model_labels[c]` (default: c, every class of the model)."""
    xs, ys = [], []
    for c, model_label in enumerate(model_labels or range(backend.num_classes)):
        g = torch.Generator().manual_seed(seed * 1000 + c)
        xs.append(backend.decode(plain_sample(backend, model_label, per_class, g)).cpu())
        ys.append(torch.full((per_class,), c))
    return ImageSet((torch.cat(xs) * 255).round() / 255, torch.cat(ys), class_names, "samples")


def generator_metrics(backend: DiffusionBackend, real: ImageSet, net: torch.nn.Module, feature_net: str,
                      per_class: int = 100, seed: int = 0) -> dict[str, Any]:
    """Sample the generator `per_class` times per class and compare with `real` (the test split)."""
    fake = sample_set(backend, per_class, seed, list(real.class_names))
    return {**set_metrics(real, fake, net, feature_net), "per_class_samples": per_class, "seed": seed}
