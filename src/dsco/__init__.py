"""dsco: concentrate image-classification datasets with diffusion-assisted distribution alignment (DsCo).

The names below are imported on first use, so `import dsco` (and `dsco --help`) does not load PyTorch."""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "ConcentrateConfig": "orchestrate", "concentrate": "orchestrate", "nopt_preset": "orchestrate",
    "BenchConfig": "bench", "ImageSet": "data", "load_dataset": "data", "DscoError": "errors",
    "EvalProtocol": "evaluate", "evaluate_set": "evaluate", "NOptConfig": "nopt", "load_output_set": "outputset",
    "verify": "outputset",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dsco' has no attribute {name!r}")
