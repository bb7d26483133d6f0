"""Baselines the field reports, writing the same output format: real-subset selectors and DM."""
from .dm import DMConfig, distribution_matching
from .selection import SELECTORS, herding, kcenter, random_subset

__all__ = ["DMConfig", "distribution_matching", "SELECTORS", "herding", "kcenter", "random_subset"]
