"""The record every data source produces and every method consumes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DscoError


class Labelled:
    """What every data source shares: labels (N,) int64 and class names by label."""

    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices_of(self, label: int) -> torch.Tensor:
        """Indices (into this set) of the images of one class, in order."""
        return torch.nonzero(self.labels == label).flatten()

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


@dataclass
class ImageSet(Labelled):
    """Images (N, C, H, W) float in [0, 1], labels (N,) int64, and the class names by label."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DscoError(f"dataset {self.name!r}: images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DscoError(f"dataset {self.name!r}: {len(self.images)} images but {len(self.labels)} labels")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_images(self, label: int) -> torch.Tensor:
        return self.images[self.indices_of(label)]

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], list(self.class_names), self.name)
