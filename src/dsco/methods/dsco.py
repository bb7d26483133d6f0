"""DsCo's synthesis behind the method interface: NOpt on real targets, and the data-free mode."""
from __future__ import annotations

from dataclasses import asdict

from ..datafree import datafree_class
from ..features import RandomFeatureNet
from ..models.diffusion import DiffusionBackend, device_of
from ..nopt import nopt_class
from .base import ClassOutput, ClassTask, Method, register, synthetic_output


class _NOpt(Method):
    uses_model = True

    def check(self, backend: DiffusionBackend) -> None:
        RandomFeatureNet.check_input(backend.sample_shape)


@register
class DsCo(_NOpt):
    """NOpt: each step's noise optimised so the class's samples match the real class's features."""

    name = "dsco"
    config_fields = ("nopt",)

    def synthesise(self, task: ClassTask) -> ClassOutput:
        z, records = nopt_class(task.backend, task.model_label, task.real_targets(), task.n, task.cfg.nopt,
                                task.generator, task.class_seed + 1, task.name, task.progress)
        return synthetic_output(task.backend, z, {"steps": [asdict(r) for r in records]})


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
