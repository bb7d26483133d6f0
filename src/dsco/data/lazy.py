"""A folder dataset that reads images only when asked, one class at a time (ImageNet scale)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DscoError
from .imageset import ImageSet, Labelled
from .images import IMAGE_EXTENSIONS, fit_image, read_image

log = logging.getLogger(__name__)


class LazyImageSet(Labelled):
    """The `ImageSet` interface over files: labels and counts up front, pixels per class on demand.

    Images are RGB, resized on the short side and center-cropped to `image_size` (the standard
    ImageNet preprocessing at the model's resolution). `images` reads everything (small subsets).
    """

    def __init__(self, files: list[Path], labels: list[int], class_names: list[str], name: str, image_size: int, on_bad_image: str = "fail"):
        self.files, self.class_names, self.name = files, class_names, name
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.image_size, self.on_bad_image = image_size, on_bad_image
        self._all: Optional[torch.Tensor] = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def read(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode the images at `indices` (N, 3, S, S) in [0, 1]; a bad file fails, or is skipped (fewer images)."""
        out = []
        for i in indices.tolist():
            try:
                out.append(fit_image(read_image(self.files[i]), (self.image_size, self.image_size), "RGB"))
            except DscoError:
                if self.on_bad_image == "fail":
                    raise
                log.warning("skipped bad image %s", self.files[i])
        if not out:
            raise DscoError(f"no readable image among {len(indices)} files of {self.name}")
        return torch.from_numpy(np.stack(out))

    def class_images(self, label: int) -> torch.Tensor:
        return self.read(self.indices_of(label))

    @property
    def images(self) -> torch.Tensor:
        if self._all is None:
            self._all = self.read(torch.arange(len(self)))
        return self._all

    def subset(self, indices: torch.Tensor) -> ImageSet:
        return ImageSet(self.read(indices), self.labels[indices], list(self.class_names), self.name)

    def class_fingerprint(self, label: int) -> str:
        """Hash of one class's file names, sizes and times: a cache key that changes when the files do."""
        h = hashlib.sha256(f"{self.image_size}".encode())
        for i in self.indices_of(label).tolist():
            st = self.files[i].stat()
            h.update(f"{self.files[i].name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def scan_folder(root: Path, classes: list[str], name: str, image_size: int, on_bad_image: str = "fail") -> LazyImageSet:
    """List `root/<class>/*` for the given class folders (labels in that order) without decoding."""
    if not root.is_dir():
        raise DscoError(f"dataset path {root} does not exist or is not a directory")
    files: list[Path] = []
    labels: list[int] = []
    for label, c in enumerate(classes):
        d = root / c
        if not d.is_dir():
            raise DscoError(f"class folder {d} is missing")
        entries = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not entries:
            raise DscoError(f"class folder {d} has no image files")
        files += entries
        labels += [label] * len(entries)
    return LazyImageSet(files, labels, list(classes), name, image_size, on_bad_image)
