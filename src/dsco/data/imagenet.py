"""The ImageNet-1k class index (wnid -> label -> name) and the named subsets ImageNette / ImageWoof.

The 1000 wnids and names come from timm's bundled ImageNet metadata (labels are the sorted-wnid
order every ImageNet classifier and DiT uses); the subsets are the fast.ai definitions.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..errors import DscoError

IMAGENETTE = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)
IMAGEWOOF = (
    "n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
    "n02096294", "n02099601", "n02105641", "n02111889", "n02115641",
)
SUBSETS: dict[str, tuple[str, ...] | None] = {"imagenette": IMAGENETTE, "imagewoof": IMAGEWOOF, "imagenet1k": None}
WNID = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def imagenet_index() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, names) of the 1000 ImageNet-1k classes, indexed by label."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = tuple(info.label_names())
    names = tuple(d.split(",")[0].strip() for d in info.label_descriptions())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise DscoError("timm's ImageNet-1k index is not the 1000 sorted wnids; reinstall timm")
    return wnids, names


def wnid_to_label(wnid: str) -> int:
    """The ImageNet-1k label (0..999) of a wnid such as n01440764."""
    wnids, _ = imagenet_index()
    try:
        return wnids.index(wnid)
    except ValueError:
        raise DscoError(f"{wnid!r} is not an ImageNet-1k wnid") from None


def label_name(label: int) -> str:
    return imagenet_index()[1][label]


def subset_wnids(name: str) -> tuple[str, ...]:
    """The class folders (wnids, in label order) of a named ImageNet subset."""
    if name not in SUBSETS:
        raise DscoError(f"unknown ImageNet subset {name!r}: valid names are {', '.join(SUBSETS)}")
    return SUBSETS[name] or imagenet_index()[0]


def is_wnid(name: str) -> bool:
    return bool(WNID.match(name))


def class_labels(class_names: list[str], num_classes: int, class_map: Optional[str] = None) -> list[int]:
    """The label of each dataset class in a model with `num_classes` outputs: --class-map, else ImageNet
    wnids (1000 classes), else the same index."""
    k = num_classes
    if class_map:
        try:
            mapping = json.loads(Path(class_map).read_text())
        except (OSError, ValueError) as e:
            raise DscoError(f"cannot read --class-map {class_map}: {e}") from e
        missing = [c for c in class_names if c not in mapping]
        if missing:
            raise DscoError(f"--class-map {class_map} has no label for class {missing[0]!r} ({len(missing)} missing)")
        labels = [mapping[c] for c in class_names]
        bad = [v for v in labels if not isinstance(v, int) or not 0 <= v < k]
        if bad:
            raise DscoError(f"--class-map {class_map}: label {bad[0]!r} is not an integer in 0..{k - 1}")
        return labels
    if k == 1000 and all(is_wnid(c) for c in class_names):
        return [wnid_to_label(c) for c in class_names]
    if k == len(class_names):
        return list(range(k))
    raise DscoError(
        f"the model has {k} classes but the dataset has {len(class_names)}, whose folder names (e.g. "
        f"{class_names[0]!r}) are not ImageNet wnids: pass --class-map FILE.json (folder name -> model label)"
    )
