"""dsco: concentrate image-classification datasets with diffusion-assisted distribution alignment (DsCo)."""
from .bench import BenchConfig, bench
from .concentrate import ConcentrateConfig, concentrate, nopt_preset
from .data import ImageSet, load_dataset
from .errors import DscoError
from .evaluate import EvalProtocol, evaluate_set
from .nopt import NOptConfig
from .outputset import load_output_set, verify

__version__ = "0.1.0"
__all__ = [
    "BenchConfig", "bench", "ConcentrateConfig", "concentrate", "nopt_preset", "ImageSet", "load_dataset",
    "DscoError", "EvalProtocol", "evaluate_set", "NOptConfig", "load_output_set", "verify",
]
