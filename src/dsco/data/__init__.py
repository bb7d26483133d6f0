"""Datasets as one record type: float images in [0, 1], integer labels, class names."""
from .imageset import ImageSet
from .loading import DATASET_NAMES, IMAGENET_NAMES, load_dataset, stratified_split
from .lazy import LazyImageSet

__all__ = ["ImageSet", "LazyImageSet", "DATASET_NAMES", "IMAGENET_NAMES", "load_dataset", "stratified_split"]
