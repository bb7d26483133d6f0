"""The one interface every method plugs into, and the registry of methods by name (timm-style).

A method builds one class at a time from a `ClassTask` (the class, its real data on demand, the
diffusion backend when it uses one, a seeded generator) and returns the class's images in [0, 1]
with their manifest sources. `orchestrate.py` runs the classes, resume, sharding and the
manifest without knowing any method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from ..errors import DscoError
from ..models.diffusion import DiffusionBackend


@dataclass
class ClassTask:
    """What a method gets for one class; the real data is read only if the method asks for it."""

    cfg: Any  # the run's ConcentrateConfig (its method's knobs are the fields the method names)
    label: int  # the class in the dataset
    name: str
    n: int  # images to make (IPC)
    generator: torch.Generator  # the class's seeded generator: every random choice draws from it
    class_seed: int
    backend: Optional[DiffusionBackend] = None
    model_label: Optional[int] = None  # the class's label in the diffusion model
    real_images: Callable[[], torch.Tensor] = lambda: torch.empty(0)  # the class's real images in [0, 1]
    real_indices: Callable[[], torch.Tensor] = lambda: torch.empty(0, dtype=torch.long)  # their train-split indices
    real_targets: Callable[[], torch.Tensor] = lambda: torch.empty(0)  # the real images in model space (cached latents)
    train: Callable[[], Any] = lambda: None  # the whole real train split (an ImageSet), for methods that train on it
    targets_of: Callable[[int], torch.Tensor] = lambda label: torch.empty(0)  # any class's real_targets
    num_classes: int = 0
    model_labels: list[int] = field(default_factory=list)  # every class's label in the diffusion model
    shared: dict[str, Any] = field(default_factory=dict)  # per-run state a method may keep between classes
    progress: bool = False


@dataclass
class ClassOutput:
    images: torch.Tensor  # (n, C, H, W) in [0, 1]
    sources: list[dict]  # per image: {"source": "synthetic"} or {"source": "real", "index": i}
    stats: dict[str, Any] = field(default_factory=dict)  # recorded per class in the manifest


class Method:
    """Base of every method. Subclasses set the class attributes and implement `synthesise`."""

    name: ClassVar[str]
    uses_model: ClassVar[bool] = False  # needs the diffusion backend
    reads_real: ClassVar[bool] = True  # reads the class's real images
    config_fields: ClassVar[tuple[str, ...]] = ()  # the ConcentrateConfig fields holding its knobs
    # its own knobs, a dataclass: the ConcentrateConfig field named after the method holds one, and the command line
    # offers each field as --<name>-<field> (dsco.options), titled `title` in `concentrate --help`
    options: ClassVar[Optional[type]] = None
    title: ClassVar[str] = ""

    def check(self, backend: DiffusionBackend) -> None:
        """Refuse a backend the method cannot run on, before any data is read (default: any)."""

    batches_classes: ClassVar[bool] = False  # `synthesise_classes` shares the model's calls between classes

    def synthesise(self, task: ClassTask) -> ClassOutput:
        raise NotImplementedError

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        """Several classes (`--class-batch`): one at a time unless the method batches them; either way each class's
        images are those it gets alone (up to float rounding), every draw coming from its own generator."""
        return [self.synthesise(task) for task in tasks]


class BatchedMethod(Method):
    """A method that synthesises several classes in one batch: it implements `synthesise_classes`, and one class is
    a batch of one."""

    batches_classes = True

    def synthesise(self, task: ClassTask) -> ClassOutput:
        return self.synthesise_classes([task])[0]

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        raise NotImplementedError


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its name; a name registered twice is an error (a second method
    would silently replace the first)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {REGISTRY[cls.name].__module__}.{REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls


def method_named(name: str) -> Method:
    if name not in REGISTRY:
        raise DscoError(f"unknown method {name!r}: valid names are {', '.join(REGISTRY)}")
    return REGISTRY[name]()


def synthetic_output(backend: DiffusionBackend, z: torch.Tensor, stats: Optional[dict] = None) -> ClassOutput:
    """Decode model-space samples into a class's output, every image marked synthetic."""
    return ClassOutput(backend.decode(z).cpu(), [{"source": "synthetic"} for _ in range(len(z))], stats or {})
