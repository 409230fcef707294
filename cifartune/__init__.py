"""cifartune: hyperparameter studies of CIFAR-10 classifiers on Ray Tune.

The engine (config, data, model, training loop) imports no Ray; ``cifartune.tuning`` does.
"""

from .config import ConfigError, TrialConfig, load_trial_config
from .data import CifarArrays, DataError, load_arrays
from .engine import FitResult, fit
from .model import SeedNet, build_model, count_parameters, layer_table

__all__ = [
    "CifarArrays",
    "ConfigError",
    "DataError",
    "FitResult",
    "SeedNet",
    "TrialConfig",
    "build_model",
    "count_parameters",
    "fit",
    "layer_table",
    "load_arrays",
    "load_trial_config",
]
__version__ = "0.1.0"
