"""Datasets as one record type: float images in [0, 1], integer labels, class names."""
from .imageset import ImageSet
from .loading import DATASET_NAMES, load_dataset, stratified_split

__all__ = ["ImageSet", "DATASET_NAMES", "load_dataset", "stratified_split"]
