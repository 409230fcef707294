"""cifartune: hyperparameter studies of CIFAR-10 classifiers on Ray Tune.

The engine (config, data, model, training loop) imports no Ray; ``cifartune.tuning`` does.
Torch-backed names load on first use, so ``cifartune validate`` answers without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ConfigError, TrialConfig, load_trial_config
from .spec import StudySpec, load_spec

__version__ = "0.1.0"

_LAZY = {
    "CifarArrays": ".data",
    "DataError": ".data",
    "load_arrays": ".data",
    "FitResult": ".engine",
    "fit": ".engine",
    "SeedNet": ".model",
    "build_model": ".model",
    "count_parameters": ".model",
    "layer_table": ".model",
    "StudyData": ".results",
    "read_study": ".results",
}

__all__ = [
    "CifarArrays",
    "ConfigError",
    "DataError",
    "FitResult",
    "SeedNet",
    "StudyData",
    "StudySpec",
    "TrialConfig",
    "build_model",
    "count_parameters",
    "fit",
    "layer_table",
    "load_arrays",
    "load_spec",
    "load_trial_config",
    "read_study",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'cifartune' has no attribute {name!r}")
