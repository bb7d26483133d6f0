"""DsCo's synthesis behind the method interface: NOpt on real targets, and the data-free mode."""
from __future__ import annotations

from dataclasses import asdict

from ..datafree import datafree_class
from ..features import RandomFeatureNet
from ..models.diffusion import DiffusionBackend, device_of
from ..nopt import nopt_classes
from .base import BatchedMethod, ClassOutput, ClassTask, Method, register, synthetic_output


class _NOpt(Method):
    uses_model = True

    def check(self, backend: DiffusionBackend) -> None:
        RandomFeatureNet.check_input(backend.sample_shape)


@register
class DsCo(BatchedMethod, _NOpt):
    """NOpt: each step's noise optimised so the class's samples match the real class's features."""

    name = "dsco"
    config_fields = ("nopt",)

    def synthesise_classes(self, tasks: list[ClassTask]) -> list[ClassOutput]:
        first = tasks[0]
        made = nopt_classes(first.backend, [t.model_label for t in tasks], [t.real_targets() for t in tasks], first.n,
                            first.cfg.nopt, [t.generator for t in tasks], [t.class_seed + 1 for t in tasks],
                            [t.name for t in tasks], first.progress)
        return [synthetic_output(first.backend, z, {"steps": [asdict(r) for r in records]}) for z, records in made]


@register
class DsCoDataFree(_NOpt):
    """DFDsCo: NOpt against the model's own template statistics; not one real image is read."""

    name = "dsco-datafree"
    reads_real = False
    config_fields = ("nopt", "datafree")

    def synthesise(self, task: ClassTask) -> ClassOutput:
        backend, cfg = task.backend, task.cfg
        if "phi" not in task.shared:  # one feature net for every class, as the reference
            task.shared["phi"] = RandomFeatureNet(backend.sample_shape[0], cfg.nopt.feature_width, seed=cfg.seed).to(device_of(backend))
        z, records = datafree_class(backend, task.model_label, task.n, cfg.nopt, cfg.datafree, task.generator,
                                    task.shared["phi"], task.name, task.progress)
        return synthetic_output(backend, z, {"steps": [asdict(r) for r in records]})
