"""Methods by name: DsCo, its data-free mode, the baselines and the diffusion-based peers."""
from . import dsco, selection, dm, plain, d4m, d3hr, mgd3, igd, minimax  # noqa: F401, I001  (registration, in the order the CLI lists them)
from .d3hr import D3HRConfig
from .d4m import D4MConfig
from .igd import IGDConfig
from .minimax import MinimaxConfig
from .mgd3 import MGD3Config
from .base import REGISTRY, ClassOutput, ClassTask, Method, method_named, register, synthetic_output

METHODS = tuple(REGISTRY)
DIFFUSION_METHODS = tuple(name for name, m in REGISTRY.items() if m.uses_model)
METHOD_FIELDS = tuple(dict.fromkeys(f for m in REGISTRY.values() for f in m.config_fields))

__all__ = ["D3HRConfig", "D4MConfig", "IGDConfig", "MinimaxConfig", "MGD3Config", "METHODS", "DIFFUSION_METHODS", "METHOD_FIELDS", "REGISTRY", "ClassOutput", "ClassTask", "Method",
           "method_named", "register", "synthetic_output"]
